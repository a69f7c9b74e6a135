"""The samples `python -m mm_hf.predict` reads (a folder, a CSV/JSONL file or a Hub split), without labels, and the
DataLoader batches it makes of them, where a sample that cannot be decoded becomes an error instead of a crash."""

from __future__ import annotations

import glob
import logging
import os
from collections import Counter
from dataclasses import dataclass

import datasets
import torch
from datasets import Dataset, IterableDataset
from PIL import Image

from ..data.labels import is_missing
from ..data.loading import read_data_file, resolve_path
from ..data.streaming.sources import read_files, undecoded
from ..errors import DataError, UserError

logger = logging.getLogger(__name__)

# Files of a --data folder that are predicted; others (metadata.jsonl, README, ...) are skipped with a log line.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".webm")
# --streaming: rows read from the stream at once (undecoded: paths or encoded bytes, so a few MB at most).
STREAM_READ_BATCH = 256
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class Inputs:
    """The model inputs (`dataset`: one column per input, in the transform's names), a stable id per row (`ids`,
    strings: what resume matches on), the columns the user keeps (`kept`, values as read) and where they came from."""

    dataset: Dataset
    ids: list[str]
    kept: Dataset | None
    source: str


def read_inputs(
    data: str | None,
    *,
    dataset_name: str | None,
    dataset_config_name: str | None,
    dataset_split: str,
    columns: dict[str, str],
    media: set[str],
    modality: str = "image",
    optional: set[str] = frozenset(),
    id_column: str | None,
    keep_columns: list[str],
    cache_dir=None,
) -> Inputs:
    """Read the samples; `columns` maps each source column to the name the transform reads it under (e.g.
    {"img": "image"}), `media` lists the source columns holding media (paths made absolute), `optional` those whose
    blank cells are a missing input (None).

    A folder gives one sample per `modality` file (by extension; recursively, sorted) under the single media column,
    with its path relative to the folder as id. A file or Hub split keeps its row order; the id is `id_column`'s
    value, else the row number.
    """
    if data and dataset_name:
        raise UserError(f"give either --data ({data}) or --dataset_name ({dataset_name}), not both")
    if data and os.path.isdir(data):
        if len(columns) != 1 or not media:
            raise DataError(f"{data}: this checkpoint reads several columns ({', '.join(columns)}): give a CSV/JSONL "
                            "file (or Hub dataset) with one column per input, not a folder")  # fmt: skip
        (column,) = columns
        found = _walk(data)
        extensions = {"audio": AUDIO_EXTENSIONS, "video": VIDEO_EXTENSIONS}.get(modality)
        extensions = extensions or tuple(Image.registered_extensions())
        relative = [p for p in found if p.lower().endswith(extensions)]
        if not relative:
            raise DataError(f"{data} holds no {modality} files (looked for {', '.join(extensions[:8])}, ...)")
        others = [p for p in found if not p.lower().endswith(extensions)]
        if others:
            logger.info("%s: %d file(s) that are no %s file skipped, e.g. %s", data, len(others), modality, others[0])
        table = Dataset.from_dict(
            {column: [os.path.join(os.path.abspath(data), p) for p in relative], "path": relative}
        )
        ids, source = list(relative), data
        if id_column is not None:
            raise UserError(f"--id_column: the samples of a folder are named by their path in it ({data})")
        _require(table, keep_columns, source)
        kept = table.select_columns(keep_columns) if keep_columns else None
    else:
        table, source, base = _open(data, dataset_name, dataset_config_name, dataset_split, cache_dir, False)
        # Media decoded by us: robust modes, and an error naming the sample instead of a crash
        table = undecoded(table, media)
        _require(table, [*columns, *([id_column] if id_column else []), *keep_columns], source)
        if len(table) == 0:
            raise DataError(f"{source} holds no rows")
        ids = [str(v) for v in table[id_column]] if id_column else [str(i) for i in range(len(table))]
        if id_column and len(set(ids)) != len(ids):
            repeated = [value for value, n in Counter(ids).items() if n > 1]
            raise DataError(f"{source}: --id_column {id_column!r} repeats {repeated[:5]}: each row needs its own id, "
                            "or drop --id_column to use the row number")  # fmt: skip
        kept = table.select_columns(keep_columns) if keep_columns else None  # as read, before paths are resolved
        if media or optional:
            table = table.map(_Resolve(media if base else set(), optional, base), batched=True, desc="reading paths")
    dataset = table.select_columns(list(columns)).rename_columns({s: t for s, t in columns.items() if s != t})
    return Inputs(dataset, ids, kept, source)


def _open(data, dataset_name, dataset_config_name, dataset_split, cache_dir, streaming: bool):
    """(the rows of --data's file(s) or of the Hub split, as read; map-style or a stream), its name in messages, and
    the folder its relative media paths are against (None: a Hub split or WebDataset shards hold their media)."""
    if data:
        simple = os.path.splitext(data)[1].lower() in (".csv", ".tsv", ".json", ".jsonl") and not glob.has_magic(data)
        if simple and not streaming:  # its own errors: not UTF-8, empty, unparsable (naming the file)
            return read_data_file(data, cache_dir, split="input"), data, os.path.dirname(os.path.abspath(data))
        table, base = read_files(data, "--data", cache_dir, streaming=streaming)  # also parquet, WebDataset shards
        return table, data, base
    if dataset_name:
        hub = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, streaming=streaming)
        if dataset_split not in hub:
            raise DataError(f"{dataset_name} has no {dataset_split!r} split (--dataset_split); its splits are "
                            f"{sorted(hub)}")  # fmt: skip
        return hub[dataset_split], f"{dataset_name}[{dataset_split}]", None
    raise UserError("no data: pass --data (a folder, a CSV/JSONL/parquet file or WebDataset shards) or --dataset_name "
                    "(a Hub dataset)")  # fmt: skip


@dataclass
class StreamInputs:
    """`--streaming`: the samples of a file/shards/Hub split read as they are iterated (`rows()`), never whole.

    What `Inputs` holds per row, `rows()` yields: (id, kept columns as read, the model inputs in the transform's
    names, media paths resolved). Ids are `id_column`'s value, else the row number, as in `read_inputs`."""

    stream: IterableDataset
    columns: dict[str, str]
    resolve: _Resolve
    id_column: str | None
    keep_columns: list[str]
    source: str

    def rows(self):
        # `iter(batch_size)`, not `iter(stream)`: inside a DataLoader worker the latter reads only that worker's
        # share of the stream's shards (datasets splits them), and every worker here reads all of it (`StreamRows`).
        number = 0
        for batch in self.stream.iter(batch_size=STREAM_READ_BATCH):
            size = len(next(iter(batch.values())))
            kept = [{column: batch[column][i] for column in self.keep_columns} for i in range(size)]
            cells = self.resolve({column: list(batch[column]) for column in self.columns})
            for i in range(size):
                sample_id = str(batch[self.id_column][i]) if self.id_column else str(number)
                yield sample_id, kept[i], {target: cells[column][i] for column, target in self.columns.items()}
                number += 1


def stream_inputs(
    data: str | None,
    *,
    dataset_name: str | None,
    dataset_config_name: str | None,
    dataset_split: str,
    columns: dict[str, str],
    media: set[str],
    optional: set[str] = frozenset(),
    id_column: str | None,
    keep_columns: list[str],
    cache_dir=None,
) -> StreamInputs:
    """`read_inputs` for --streaming (same arguments but `modality`): files or shards through the recipes' stream
    reader (`mm_hf.data.streaming.read_files`), a Hub split with `load_dataset(streaming=True)`; the columns are
    checked on the first row."""
    if data and dataset_name:
        raise UserError(f"give either --data ({data}) or --dataset_name ({dataset_name}), not both")
    if data and os.path.isdir(data):
        raise UserError(f"--streaming: {data} is a folder, whose files are listed (not loaded) and decoded a batch at "
                        "a time already; drop --streaming, or stream a CSV/JSONL/parquet file or WebDataset shards")  # fmt: skip
    stream, source, base = _open(data, dataset_name, dataset_config_name, dataset_split, cache_dir, True)
    try:
        first = next(iter(stream))
    except StopIteration:
        raise DataError(f"{source} holds no rows") from None
    _require(_Names(list(first)), [*columns, *([id_column] if id_column else []), *keep_columns], source)
    stream = undecoded(stream, media)
    resolve = _Resolve(media if base else set(), optional, base)
    return StreamInputs(stream, dict(columns), resolve, id_column, list(keep_columns), source)


class _Names:
    """What `_require` reads of a stream's first row: its column names."""

    def __init__(self, names: list[str]):
        self.column_names = names


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.relpath(os.path.join(root, f), folder) for f in sorted(files) if not f.startswith(".")]
    return found


def _require(table: Dataset, names: list[str], source: str) -> None:
    missing = [name for name in dict.fromkeys(names) if name not in table.column_names]
    if missing:
        raise DataError(f"{source}: no column(s) {', '.join(map(repr, missing))}; available: "
                        f"{', '.join(table.column_names)}")  # fmt: skip


class _Resolve:
    """Media paths relative to the file's folder made absolute, blank optional cells None (a class: pickles for map)."""

    def __init__(self, media: set[str], optional: set[str], base: str | None):
        self.media, self.optional, self.base = media, optional, base

    def __call__(self, batch):
        for column in self.optional:
            batch[column] = [None if is_missing(v) else v for v in batch[column]]
        for column in self.media:
            batch[column] = [resolve_path(v, self.base) for v in batch[column]]
        return batch


class Rows(torch.utils.data.Dataset):
    """Row `positions[i]` of `inputs` as (position, model inputs, {"id", kept columns}): what the DataLoader hands
    the collator."""

    def __init__(self, inputs: Inputs, positions: list[int]):
        self.inputs, self.positions = inputs, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        position = self.positions[i]
        kept = self.inputs.kept[position] if self.inputs.kept is not None else {}
        return position, self.inputs.dataset[position], {"id": self.inputs.ids[position], **kept}


class StreamRows(torch.utils.data.IterableDataset):
    """The rows of a `StreamInputs` whose id is not in `done`, as `Rows` gives them (positions count those rows).

    With DataLoader workers, each reads the stream (undecoded rows: cheap) and keeps every `num_workers`-th batch
    of `batch_size` rows; the DataLoader takes one batch from each worker in turn, so the batches arrive in stream
    order and the decoding (in the collator) is shared. A repeated id is refused as `read_inputs` refuses it, when
    the stream reaches it."""

    def __init__(self, inputs: StreamInputs, done: set[str], batch_size: int):
        self.inputs, self.done, self.batch_size = inputs, done, batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        seen, position = set(), 0
        for sample_id, kept, row in self.inputs.rows():
            if sample_id in seen:
                raise DataError(f"{self.inputs.source}: --id_column {self.inputs.id_column!r} repeats {sample_id!r}: "
                                "each row needs its own id, or drop --id_column to use the row number")  # fmt: skip
            seen.add(sample_id)
            if sample_id in self.done:
                continue
            if (position // self.batch_size) % workers == worker:
                yield position, row, {"id": sample_id, **kept}
            position += 1
