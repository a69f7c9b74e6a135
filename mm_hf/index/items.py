"""The items to index, from `--data`: a folder of images or audio clips (with an optional metadata.jsonl/csv of
`file_name` + caption + other columns, as the recipes read), or a CSV/JSONL table with a media path column."""

import os

from ..data.loading import read_data_file
from ..errors import DataError

MEDIA_EXTENSIONS = {
    "image": (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"),
}
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def read_items(
    data: str, modality: str, media_column: str, caption_column: str | None, keep_columns: list[str] | None
) -> tuple[list[str], list[str] | None, list[dict]]:
    """(absolute media paths, captions or None, metadata rows). A row keeps the path (under `media_column`), the
    caption (`caption_column`; None: a `caption` column if there is one) and `keep_columns` (default: every
    column of the table)."""
    if os.path.isdir(data):
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
    keep = table.column_names if keep_columns is None else keep_columns
    missing = [c for c in keep if c not in table.column_names]
    if missing:
        raise DataError(f"--keep_columns {' '.join(missing)}: not in {source} (columns: {table.column_names})")
    base = os.path.dirname(os.path.abspath(source))
    paths = [os.path.join(base, p) if isinstance(p, str) and not os.path.isabs(p) else p for p in table[path_column]]
    bad = next((i for i, p in enumerate(paths) if not isinstance(p, str) or not p), None)
    if bad is not None:
        raise DataError(f"{source}, row {bad + 1}: {path_column!r} is {paths[bad]!r}, not a file path")
    captions = [_caption(c) for c in table[caption_column]] if caption_column else None
    kept = {c: table[c] for c in keep if c not in (path_column, caption_column)}
    rows = []
    for i, path in enumerate(paths):
        row = {c: values[i] for c, values in kept.items()}
        row[media_column] = path
        if captions is not None:
            row[caption_column] = captions[i]
        rows.append(row)
    return paths, captions, rows


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
