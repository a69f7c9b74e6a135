"""`--streaming`: the training split read as a stream (datasets' `IterableDataset`), decoded as it is read.

Sources: a Hub dataset (`load_dataset(..., streaming=True)`), CSV/JSONL/parquet files, WebDataset `.tar` shards
(datasets' own `webdataset` builder; `--train_file 'shards/train-*.tar'`) or a class folder (its file list made an
`IterableDataset` of `STREAM_SHARDS` shards). The stream is shuffled with a buffer (`--shuffle_buffer_size`) and
its shard order per epoch; the processes of a run each read their own shards (see `stream_training_arguments`).

Samples are judged by the recipe's `prepare` (`ClassRows` here for the classifiers; `MultimodalRows` in
multimodal_stream.py for the fusion recipes, `CaptionRows` in pairs.py for clip_retrieval) and decoded in the data
workers by the recipe's own transform (`StreamedSplit.with_transform`); one that cannot be used (`BadSampleError`:
corrupt, truncated, missing, or a label outside the class list) is skipped and recorded (`SkipLog`), and at the end
of training the records of every worker and process are gathered (`StreamSkips`): the run reports them, and stops
with an error when more than `--max_bad_fraction` were bad.

The validation and test splits are read whole (map-style, undecoded), so every process evaluates a split of
known length and accelerate can drop the padding it adds to the last batch: each sample is counted once. They
are checked up front like any map-style split (`--validate_samples`).

By concern: `flags` (what --streaming needs and refuses; accelerate's split of a stream), `sources` (files,
WebDataset shards, the Hub; shuffling), `skips` (bad samples skipped, counted and gathered; `StreamedSplit`),
`classifier` (a classifier's classes and labels, `load_stream_splits`).
"""

from .classifier import STREAM_SHARDS, ClassRows, LabelEncoder, SkipUnusable, classifier_stream, load_stream_splits
from .flags import (
    STREAM_ONLY_FLAGS,
    check_streaming_flags,
    refuse_streaming,
    require_full_validation,
    stream_training_arguments,
)
from .skips import DECODE_BATCH, MIN_BAD_COUNT, SkipBadRows, SkipLog, StreamedSplit, StreamSkips, describe_row
from .sources import (
    BUILDERS,
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

__all__ = [
    "BUILDERS",
    "DECODE_BATCH",
    "MIN_BAD_COUNT",
    "STREAM_ONLY_FLAGS",
    "STREAM_SHARDS",
    "ClassRows",
    "ColumnNames",
    "LabelEncoder",
    "ResolvePaths",
    "SkipBadRows",
    "SkipLog",
    "SkipUnusable",
    "StreamSkips",
    "StreamedSplit",
    "check_streaming_flags",
    "classifier_stream",
    "describe_row",
    "first_row",
    "load_stream_splits",
    "open_training_stream",
    "read_files",
    "read_whole",
    "refuse_streaming",
    "require_full_validation",
    "resolve_data_files",
    "shuffled",
    "stream_training_arguments",
    "undecoded",
]
