"""Where a stream comes from: local CSV/TSV/JSON(L)/parquet files or WebDataset `.tar` shards (`read_files`), a Hub
dataset's train split (`open_training_stream`); then cut and shuffled with a buffer and its shard order (`shuffled`),
media columns left undecoded for the recipe's transform. Small evaluation splits of a streamed Hub dataset are read
whole (`read_whole`)."""

import glob
import logging
import os

import datasets
from datasets import Dataset, IterableDataset

from ...errors import DataError
from ..loading import resolve_path

logger = logging.getLogger(__name__)

BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".tar": "webdataset",
}


def resolve_data_files(pattern: str, flag: str) -> tuple[list[str], str]:
    """The local files a --{split}_file pattern names (a path or a glob), and their builder."""
    files = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise DataError(f"{flag} {pattern}: no such file{'s' if glob.has_magic(pattern) else ''}")
    extensions = {os.path.splitext(f)[1].lower() for f in files}
    builders = {BUILDERS.get(ext) for ext in extensions}
    if None in builders or len(builders) > 1:
        raise DataError(
            f"{flag} {pattern}: one kind of file expected (.csv, .tsv, .json/.jsonl, .parquet or WebDataset .tar); "
            f"got {', '.join(sorted(extensions))}"
        )
    return files, builders.pop()


def read_files(pattern: str, flag: str, cache_dir=None, streaming: bool = False):
    """`(dataset, base)`: the local CSV/TSV/JSON(L)/parquet files or WebDataset `.tar` shards `pattern` names (a
    path or a glob), in file order, as one split (an `IterableDataset` with `streaming`, read as it is iterated);
    `base` is the folder relative media paths in a table are against (None for WebDataset: the media are inside
    the shards). The one reader of such files for the recipes' --streaming and `python -m mm_hf.predict`."""
    files, builder = resolve_data_files(pattern, flag)
    kwargs = {"delimiter": "\t"} if files[0].lower().endswith(".tsv") else {}
    ds = datasets.load_dataset(
        builder, data_files=files, split="train", streaming=streaming, cache_dir=cache_dir, **kwargs
    )
    return ds, None if builder == "webdataset" else os.path.dirname(os.path.abspath(files[0]))


def undecoded(ds, columns):
    """`ds` (map-style or stream) with its Image/Audio/Video feature columns among `columns` left undecoded
    ({"bytes", "path"}): the recipes' transforms decode them, with their checks and errors naming the sample."""
    for column in columns:
        feature = (ds.features or {}).get(column)
        if isinstance(feature, datasets.Image | datasets.Audio | datasets.Video):
            ds = ds.cast_column(column, type(feature)(decode=False))
    return ds


def first_row(stream: IterableDataset, source: str) -> dict:
    try:
        return next(iter(stream))
    except StopIteration:
        raise DataError(f"the training split is empty: {source}") from None


class ResolvePaths:
    """A `map` function: relative paths in `column` made absolute against the table's folder `base` (a class, so
    the stream pickles into DataLoader workers)."""

    def __init__(self, column: str, base: str):
        self.column, self.base = column, base

    def __call__(self, row: dict) -> dict:
        return {self.column: resolve_path(row[self.column], self.base)}


def open_training_stream(data_args, cache_dir=None):
    """`(stream, source, base, hub)`: `--train_file`'s files or WebDataset shards (`read_files`; `base`: the folder
    relative media paths in a table are against) or `--dataset_name`'s train split (`hub`: the dataset's splits,
    all streamed) as an `IterableDataset`, with its name in messages."""
    if data_args.train_file:
        stream, base = read_files(data_args.train_file, "--train_file", cache_dir, streaming=True)
        return stream, data_args.train_file, base, None
    if data_args.dataset_name:
        hub = datasets.load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, streaming=True, cache_dir=cache_dir
        )
        if "train" not in hub:
            raise DataError(f"{data_args.dataset_name} has no 'train' split; its splits are {sorted(hub)}")
        return hub["train"], f"{data_args.dataset_name}[train]", None, hub
    raise DataError("no training data: pass --train_file or --dataset_name")


def shuffled(stream: IterableDataset, data_args, seed: int, source: str) -> IterableDataset:
    """The training stream cut to `--max_train_samples` and shuffled with a buffer (and its shard order)."""
    if data_args.max_train_samples is not None:
        stream = stream.take(data_args.max_train_samples)
    stream = stream.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
    if stream.num_shards == 1:
        logger.warning(
            "%s is one shard: each process of a multi-process run reads all of it and keeps its share of the batches "
            "(split it into several files, e.g. WebDataset shards, to let each process read its own)",
            source,
        )
    return stream


def read_whole(stream: IterableDataset, cache_dir=None) -> Dataset:
    """A (small) streamed split read whole, map-style: an evaluation split of a streamed Hub dataset. Read once (on
    the main process first: the others reuse datasets' cache of it)."""
    return Dataset.from_generator(_rows, gen_kwargs={"stream": stream}, features=stream.features, cache_dir=cache_dir)


class ColumnNames:
    """What `require_columns` reads of a dataset: its column names (a stream's, from its first row)."""

    def __init__(self, names):
        self.column_names = names


def _rows(stream):
    yield from stream
