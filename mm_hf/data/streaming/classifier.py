"""A classifier's streamed training split (`load_stream_splits`): its classes resolved up front (`--class_names`,
the class folders or the stream's ClassLabel), each row's label encoded as it is read (`LabelEncoder`, a label
outside the classes is a bad sample), and the validation/test splits read whole with their labels encoded into the
stream's classes (one outside them is refused, naming the split)."""

import logging
import tempfile
from collections.abc import Callable

import datasets
from datasets import ClassLabel, Dataset

from ...errors import DataError
from ..loading import hub_split_name, read_class_folder, read_table, require_columns
from ..validation import BadSampleError
from .skips import SkipBadRows, SkipLog, StreamedSplit, describe_row
from .sources import (
    ColumnNames,
    ResolvePaths,
    first_row,
    open_training_stream,
    read_files,
    read_whole,
    resolve_data_files,
    shuffled,
    undecoded,
)

logger = logging.getLogger(__name__)

# A class folder becomes this many shards (fewer with fewer files): enough for 8 processes x 8 data workers to
# each read their own, which is how datasets splits a stream among them (a process with no shard of its own would
# read every sample and keep 1 in N).
STREAM_SHARDS = 64


class LabelEncoder:
    """A stream's label value -> its index in `names`: a ClassLabel index (by its name), an integer (an index
    already, e.g. a WebDataset `.cls`) or a class name. Raises `BadSampleError` for a value outside `names`."""

    def __init__(self, names: list[str], feature=None):
        self.names, self.index = list(names), {name: i for i, name in enumerate(names)}
        self.feature_names = list(feature.names) if isinstance(feature, ClassLabel) else None

    def __call__(self, value, source: str) -> int:
        if self.feature_names is not None and isinstance(value, int) and 0 <= value < len(self.feature_names):
            value = self.feature_names[value]
        elif isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < len(self.names):
                return value
            raise BadSampleError(
                source, f"label {value} is outside the {len(self.names)} classes (0..{len(self.names) - 1})"
            )
        if value is None:
            raise BadSampleError(source, "no label")
        if str(value) not in self.index:
            raise BadSampleError(source, f"label {str(value)!r} is not one of the classes {self.names[:10]}")
        return self.index[str(value)]


class ClassRows:
    """`SkipBadRows`' `prepare` for a classifier's stream: the input `column` and its label encoded as `labels`."""

    def __init__(self, column: str, label_column: str, encode: LabelEncoder):
        self.column, self.label_column, self.encode = column, label_column, encode

    def __call__(self, rows: list[dict]) -> list[tuple]:
        prepared = []
        for index, row in enumerate(rows):
            source = describe_row(row, self.column, index)
            try:
                prepared.append(
                    (source, {self.column: row[self.column], "labels": self.encode(row[self.label_column], source)})
                )
            except BadSampleError as error:
                prepared.append((source, error))
        return prepared


class SkipUnusable(SkipBadRows):
    """`SkipBadRows` for a classifier's stream (`ClassRows`)."""

    def __init__(self, transform: Callable, column: str, label_column: str, encode: LabelEncoder, log: SkipLog):
        super().__init__(transform, ClassRows(column, label_column, encode), log, {"labels": []})


def classifier_stream(stream, column, label_column, encode: LabelEncoder, log: SkipLog) -> StreamedSplit:
    """A classifier's training stream: inputs in `column`, labels encoded by `encode`."""
    features = datasets.Features({"labels": ClassLabel(names=encode.names)})
    return StreamedSplit(stream, ClassRows(column, label_column, encode), log, {"labels": []}, features)


def load_stream_splits(data_args, column: str, label_column: str, cache_dir=None, seed: int = 42, input_flag=None):
    """The training split as a `StreamedSplit` (shuffled with a buffer; `--max_train_samples` N: N samples, taken
    by datasets from each process's shards in proportion), the validation/test splits map-style with `labels` (a ClassLabel of the stream's classes); a split
    with a label outside the classes is refused, naming it. Classes come from `--class_names`, else the class
    folders or the stream's ClassLabel feature."""
    flags = {column: input_flag, label_column: "--label_column"}
    if data_args.train_dir and data_args.train_file:
        raise DataError("give either --train_dir or --train_file, not both")
    if not (data_args.train_dir or data_args.train_file or data_args.dataset_name):
        raise DataError("no training data: pass --train_dir, --train_file or --dataset_name")
    if data_args.train_dir:
        rows = read_class_folder(data_args.train_dir, column, label_column)
        folder_names = sorted(set(rows[label_column]))
        stream = rows.to_iterable_dataset(num_shards=min(STREAM_SHARDS, len(rows)))
        source, hub = data_args.train_dir, None
    else:
        stream, source, base, hub = open_training_stream(data_args, cache_dir)
        folder_names = None
        if base is not None:  # paths in a table are relative to it
            stream = stream.map(ResolvePaths(column, base))

    first = first_row(stream, source)
    require_columns(ColumnNames(list(first)), (column, label_column), source, flags)
    feature = (stream.features or {}).get(label_column)
    names = data_args.class_names or folder_names or (list(feature.names) if isinstance(feature, ClassLabel) else None)
    if not names:
        raise DataError(
            f"{source}: the labels in column {label_column!r} are {type(first[label_column]).__name__}s, and a "
            "stream cannot be read through first to list its classes: name them, in label order, with "
            "--class_names (e.g. --class_names cat dog)"
        )
    keep = [column, label_column] + [c for c in ("__key__", "__url__") if c in first]
    # decoded by the recipe's transform, with its checks
    stream = shuffled(undecoded(stream.select_columns(keep), [column]), data_args, seed, source)

    encode = LabelEncoder(names, feature)
    log = SkipLog(tempfile.mkdtemp(prefix="mm_hf_stream_skips_"), data_args.max_bad_fraction)
    splits = {"train": classifier_stream(stream, column, label_column, encode, log)}
    limits = {"validation": data_args.max_eval_samples, "test": data_args.max_predict_samples}
    for split in ("validation", "test"):
        loaded = _evaluation_split(data_args, split, column, label_column, cache_dir, flags, hub)
        if loaded is not None:
            ds, where = loaded
            ds = _encode_labels(ds, label_column, names, where)
            if limits[split] is not None:
                ds = ds.select(range(min(limits[split], len(ds))))
            splits[split] = ds
    if "validation" not in splits and "test" not in splits:
        raise DataError(
            "nothing to evaluate on: with --streaming pass a validation or test split (--validation_dir / "
            "--validation_file / --test_dir / --test_file, or a Hub dataset with one)"
        )
    logger.info("streaming %s (%d shards, %d classes)", source, stream.num_shards, len(names))
    return splits


def _evaluation_split(data_args, split, column, label_column, cache_dir, flags, hub):
    """A validation/test split read whole: (dataset with `column` and `label_column`, its source), or None."""
    folder, path = getattr(data_args, f"{split}_dir"), getattr(data_args, f"{split}_file")
    if folder and path:
        raise DataError(f"give either --{split}_dir or --{split}_file, not both")
    if folder:
        return read_class_folder(folder, column, label_column), folder
    if path:
        files, builder = resolve_data_files(path, f"--{split}_file")
        if builder in ("csv", "json") and len(files) == 1:
            return read_table(files[0], column, label_column, cache_dir, flags), path
        ds, base = read_files(path, f"--{split}_file", cache_dir)
        if base is not None:
            ds = ds.map(ResolvePaths(column, base))
        return _media_undecoded(ds, column, label_column, path, flags), path
    if hub is not None:
        name = hub_split_name(hub, split)
        if name is None:
            return None
        stream = hub[name].select_columns([column, label_column])
        media = (stream.features or {}).get(column)
        if isinstance(media, datasets.Image | datasets.Audio):
            stream = stream.cast_column(column, type(media)(decode=False))
        # Read whole once (on the main process first: the others reuse datasets' cache of it).
        return read_whole(stream, cache_dir), f"{data_args.dataset_name}[{name}]"
    return None


def _media_undecoded(ds: Dataset, column, label_column, source, flags) -> Dataset:
    require_columns(ds, (column, label_column), source, flags)
    ds = ds.select_columns([column, label_column])
    feature = ds.features[column]
    if isinstance(feature, datasets.Image | datasets.Audio):
        ds = ds.cast_column(column, type(feature)(decode=False))
    return ds


def _encode_labels(ds: Dataset, label_column: str, names: list[str], source: str) -> Dataset:
    encode = LabelEncoder(names, ds.features[label_column])
    labels = []
    for index, value in enumerate(ds[label_column]):
        try:
            labels.append(encode(value, f"row {index}"))
        except BadSampleError as error:
            raise DataError(f"{source}: {error.source}: {error.reason} (the training stream's classes)") from None
    ds = ds.remove_columns(label_column).add_column("labels", labels)
    return ds.cast_column("labels", ClassLabel(names=names))
