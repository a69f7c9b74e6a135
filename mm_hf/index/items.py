"""The items to index, from `--data`: a folder of images or audio clips (with an optional metadata.jsonl/csv of
`file_name` + caption + other columns, as the recipes read), or a CSV/JSONL table with a media path column."""

import hashlib
import os

import datasets

from ..data.loading import read_data_file
from ..data.streaming.sources import undecoded
from ..errors import DataError

MEDIA_EXTENSIONS = {
    "image": (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"),
}
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
MEDIA_FEATURES = (datasets.Image, datasets.Audio, datasets.Video)


def read_items(
    data: str | None,
    modality: str,
    media_column: str,
    caption_column: str | None,
    keep_columns: list[str] | None,
    *,
    hub: dict | None = None,
    media_dir: str | None = None,
) -> tuple[list[str], list[str] | None, list[dict]]:
    """(absolute media paths, captions or None, metadata rows). A row keeps the path (under `media_column`), the
    caption (`caption_column`; None: a `caption` column if there is one) and `keep_columns` (default: every
    column of the table but other media).

    `hub` ({"dataset_name", "dataset_config_name", "dataset_split", "cache_dir"}) reads a Hub dataset's split
    instead of `data`; media stored in it as bytes (as on the Hub) are written once to `media_dir` (named by
    their content hash), so the items have files to embed and the search page to show."""
    if hub is not None:
        table, source, path_column = _hub_table(**hub), f"{hub['dataset_name']}[{hub['dataset_split']}]", media_column
    elif os.path.isdir(data):
        metadata = next((os.path.join(data, n) for n in METADATA_FILES if os.path.isfile(os.path.join(data, n))), None)
        if metadata is None:
            return _scan_folder(data, modality, media_column)
        table, source, path_column = read_data_file(metadata), metadata, "file_name"
    elif os.path.isfile(data):
        table, source, path_column = read_data_file(data), data, media_column
    else:
        raise DataError(f"--data {data}: no such file or folder")
    flag = f"--{modality}_column"
    if caption_column is None and "caption" in table.column_names:
        caption_column = "caption"  # the recipes' default caption column, used when present
    if path_column not in table.column_names:
        raise DataError(f"{source} has no column {path_column!r} (columns: {table.column_names}); set {flag}")
    if caption_column and caption_column not in table.column_names:
        raise DataError(
            f"{source} has no column {caption_column!r} (columns: {table.column_names}); set --caption_column"
        )
    media_features = [c for c, f in table.features.items() if isinstance(f, MEDIA_FEATURES)]
    keep = [c for c in table.column_names if c not in media_features] if keep_columns is None else keep_columns
    missing = [c for c in keep if c not in table.column_names]
    if missing:
        raise DataError(f"--keep_columns {' '.join(missing)}: not in {source} (columns: {table.column_names})")
    if hub is not None:
        paths = _media_files(table, path_column, media_dir)
    else:
        base = os.path.dirname(os.path.abspath(source))
        paths = [
            os.path.join(base, p) if isinstance(p, str) and not os.path.isabs(p) else p for p in table[path_column]
        ]
    bad = next((i for i, p in enumerate(paths) if not isinstance(p, str) or not p), None)
    if bad is not None:
        raise DataError(f"{source}, row {bad + 1}: {path_column!r} is {paths[bad]!r}, not a file path")
    captions = [_caption(c) for c in table[caption_column]] if caption_column else None
    kept = {c: [_plain(v) for v in table[c]] for c in keep if c not in (path_column, caption_column)}
    rows = []
    for i, path in enumerate(paths):
        row = {c: values[i] for c, values in kept.items()}
        row[media_column] = path
        if captions is not None:
            row[caption_column] = captions[i]
        rows.append(row)
    return paths, captions, rows


def _hub_table(dataset_name, dataset_config_name, dataset_split, cache_dir=None):
    """The split of a Hub dataset (or a local `datasets` folder / parquet files), media left undecoded."""
    hub = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    if dataset_split not in hub:
        raise DataError(
            f"{dataset_name} has no {dataset_split!r} split (--dataset_split); its splits are {sorted(hub)}"
        )
    table = hub[dataset_split]
    return undecoded(table, [c for c, f in table.features.items() if isinstance(f, MEDIA_FEATURES)])


def _media_files(table, column: str, media_dir: str | None) -> list:
    """A Hub media column as file paths: a record's bytes written to `media_dir/<content hash><ext>` (once: the
    same bytes are the same file), a record without bytes or a plain string by its path."""
    paths = []
    for batch in table.select_columns([column]).iter(batch_size=256):  # not the whole column's bytes at once
        for value in batch[column]:
            if isinstance(value, dict) and value.get("bytes") is not None:
                data, name = value["bytes"], value.get("path") or ""
                os.makedirs(media_dir, exist_ok=True)
                path = os.path.join(media_dir, hashlib.blake2b(data, digest_size=16).hexdigest())
                path += os.path.splitext(name)[1].lower()
                if not os.path.exists(path):
                    with open(path + ".tmp", "wb") as f:
                        f.write(data)
                    os.replace(path + ".tmp", path)
                paths.append(path)
            else:
                paths.append(value.get("path") if isinstance(value, dict) else value)
    return paths


def _plain(value):
    """A kept cell as JSON holds it: a media record ({"bytes", "path"}) as its path."""
    return value.get("path") if isinstance(value, dict) and "bytes" in value else value


def _caption(value) -> str:
    """A caption cell as one string: the first of a list of captions (COCO style), '' when missing."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""


def _scan_folder(folder: str, modality: str, media_column: str):
    extensions = MEDIA_EXTENSIONS[modality]
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths += [os.path.abspath(os.path.join(root, f)) for f in sorted(files) if f.lower().endswith(extensions)]
    if not paths:
        raise DataError(f"--data {folder}: no {modality} files ({', '.join(extensions)}) and no metadata.jsonl/csv")
    return paths, None, [{media_column: p} for p in paths]
