"""`--streaming`: the training split read as a stream (datasets' `IterableDataset`), decoded as it is read.

Sources: a Hub dataset (`load_dataset(..., streaming=True)`), CSV/JSONL/parquet files, WebDataset `.tar` shards
(datasets' own `webdataset` builder; `--train_file 'shards/train-*.tar'`) or a class folder (its file list made an
`IterableDataset` of `STREAM_SHARDS` shards). The stream is shuffled with a buffer (`--shuffle_buffer_size`) and
its shard order per epoch; the processes of a run each read their own shards (see `stream_training_arguments`).

Samples are judged by the recipe's `prepare` (`ClassRows` here for the classifiers; `MultimodalRows` in
multimodal_stream.py for the fusion recipes, `CaptionRows` in pairs.py for clip_retrieval) and decoded in the data
workers by the recipe's own transform (`StreamedSplit.with_transform`); one that cannot be used (`BadSampleError`:
corrupt, truncated, missing, or a label outside the class list) is skipped and recorded (`SkipLog`), and at the end of training the records of every worker and process are gathered
(`StreamSkips`): the run reports them, and stops with an error when more than `--max_bad_fraction` were bad.

The validation and test splits are read whole (map-style, undecoded), so every process evaluates a split of
known length and accelerate can drop the padding it adds to the last batch: each sample is counted once. They
are checked up front like any map-style split (`--validate_samples`).
"""

import dataclasses
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable

import datasets
from datasets import ClassLabel, Dataset, IterableDataset
from transformers import TrainerCallback

from ..errors import DataError, UserError
from .loading import hub_split_name, read_class_folder, read_table, require_columns, resolve_path
from .validation import BadSampleError

logger = logging.getLogger(__name__)

# A class folder becomes this many shards (fewer with fewer files): enough for 8 processes x 8 data workers to
# each read their own, which is how datasets splits a stream among them (a process with no shard of its own would
# read every sample and keep 1 in N).
STREAM_SHARDS = 64
# Samples decoded together by the recipe's transform; its batch is cut again by the DataLoader.
DECODE_BATCH = 32
# A worker stops the run early only once the fraction of bad samples it saw rests on enough samples for
# --max_bad_fraction to mean something (10 / fraction: 1000 at the default 1 %); the end of training checks the
# whole stream's count in any case.
MIN_BAD_COUNT = 10
# Flags that only --streaming reads, and why they are refused without it.
STREAM_ONLY_FLAGS = {
    "shuffle_buffer_size": "map-style data is shuffled whole by the Trainer's sampler",
    "class_names": "map-style data lists its classes from the training split",
    "max_bad_fraction": "map-style data is checked before training: bad samples stop the run, or are all dropped "
    "with --skip_bad_samples",
}
BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".tar": "webdataset",
}


def check_streaming_flags(data_args, training_args, explicit: set[str]) -> None:
    """Refuse flags that cannot apply: stream-only flags without --streaming; with it, what a stream has no
    answer to (its length: --max_steps is needed, epochs, a held-out validation fraction)."""
    if not data_args.streaming:
        for name, why in STREAM_ONLY_FLAGS.items():
            if name in explicit:
                raise UserError(f"--{name} only applies with --streaming: {why}")
        return
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise UserError(
            "--streaming needs --max_steps: a stream has no length to count epochs from (pass e.g. --max_steps 10000)"
        )
    for flag in ("eval_strategy", "save_strategy", "logging_strategy"):
        if getattr(getattr(training_args, flag), "value", getattr(training_args, flag)) == "epoch":
            raise UserError(
                f"--{flag} epoch cannot apply with --streaming: the processes read streams of different lengths, so "
                f"they do not agree on where an epoch ends; use --{flag} steps"
            )
    if "train_val_split" in explicit:
        raise UserError(
            "--train_val_split cannot apply with --streaming: a stream cannot be split by class before it is read; "
            "pass a validation split (--validation_dir / --validation_file)"
        )


def refuse_streaming(data_args, explicit: set[str], recipe: str) -> None:
    """For the recipes that read their data map-style and check it fully: refuse --streaming, the flags only it
    reads, and a --validate_samples other than full, naming the recipe."""
    flags = [f"--{name}" for name in ("streaming", *STREAM_ONLY_FLAGS) if name in explicit]
    if data_args.streaming or flags:
        raise UserError(
            f"{' '.join(flags) or '--streaming'}: {recipe} does not stream its data (the recipes do); drop the "
            "flag, the data is read map-style"
        )
    require_full_validation(data_args, explicit, recipe)


def require_full_validation(data_args, explicit: set[str], recipe: str) -> None:
    """Refuse a --validate_samples other than full for `recipe`, which decodes every map-style sample up front."""
    if "validate_samples" in explicit and data_args.validate_samples != "full":
        raise UserError(
            f"--validate_samples {data_args.validate_samples}: {recipe} decodes every sample up front (full); "
            "header and none apply to clip_imagecls and audio_cls"
        )


def stream_training_arguments(training_args):
    """TrainingArguments for a streamed training split: each process reads its own shards.

    accelerate's default for an IterableDataset is to read it on the main process and send each process its
    slice of every batch (`dispatch_batches`), which leaves the decoding to one process's workers. Off, accelerate
    splits a datasets stream with datasets' own `IterableDataset.shard` (one shard list per process, as
    `datasets.distributed.split_dataset_by_node` does with whole shards). The stream is not split here
    beforehand: accelerate would split it again (each process would read half of its half). A choice of the
    user's in --accelerator_config is kept.
    """
    config = training_args.accelerator_config
    if config.dispatch_batches is not None:
        return training_args
    return dataclasses.replace(training_args, accelerator_config=dataclasses.replace(config, dispatch_batches=False))


def _data_files(pattern: str, flag: str) -> tuple[list[str], str]:
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
    files, builder = _data_files(pattern, flag)
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


def describe_row(row: dict, column: str, index: int) -> str:
    """A row's name in messages: its file (inside its WebDataset shard), its shard and key, or its position."""
    value = row.get(column)
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    url = row.get("__url__")
    if path and url:
        return f"{os.path.basename(url)}:{path}"
    return str(path or (f"{os.path.basename(url)} sample {row.get('__key__')}" if url else f"training row {index}"))


class SkipLog:
    """Where the data workers of one process record what they read and skipped: one JSON-lines file per worker
    process under `folder` (workers are processes: nothing in their memory reaches the trainer). Picklable, so
    it travels into DataLoader workers inside the dataset. Each copy also stops its worker early when more than
    `max_bad_fraction` of what it read was bad, once that rests on `MIN_BAD_COUNT / max_bad_fraction` samples."""

    def __init__(self, folder: str, max_bad_fraction: float):
        self.folder, self.max_bad_fraction = folder, max_bad_fraction
        self.seen = self.bad = 0

    def record(self, seen: int, bad: list[tuple[str, str]]) -> None:
        with open(os.path.join(self.folder, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"seen": seen, "bad": bad}) + "\n")
        self.seen, self.bad = self.seen + seen, self.bad + len(bad)
        enough = self.seen >= (MIN_BAD_COUNT / self.max_bad_fraction if self.max_bad_fraction else 0)
        if bad and enough and self.bad > self.max_bad_fraction * self.seen:
            raise DataError(_too_many(self.bad, self.seen, self.max_bad_fraction, bad[:1], "so far in one data worker"))

    def read(self) -> tuple[int, list]:
        """(samples read, [(source, reason)] skipped) by every worker of this process so far."""
        seen, bad = 0, []
        for name in sorted(os.listdir(self.folder)):
            with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    seen += record["seen"]
                    bad += [tuple(pair) for pair in record["bad"]]
        return seen, bad


def _too_many(bad: int, seen: int, fraction: float, examples: list, where: str) -> str:
    listed = "; ".join(f"{source}: {reason}" for source, reason in examples[:5])
    return (
        f"{bad} of {seen} training samples read {where} were unusable ({bad / seen:.1%}), more than --max_bad_fraction "
        f"{fraction} allows; e.g. {listed}. Fix or remove them, or raise --max_bad_fraction"
    )


class SkipBadRows:
    """A batched `IterableDataset.map` function: raw rows -> `transform`'s model inputs, without the rows that
    `prepare` or `transform` find unusable (`BadSampleError`), which `log` records.

    `prepare(rows)` gives, per raw row, `(source, row for the transform)` or `(source, BadSampleError)`: what can
    be judged without decoding (labels, missing files, empty captions). The usable rows are transformed at once
    (so the transform pads the batch as one); only a batch holding a bad sample is retried row by row to find it.
    `empty`: the output of a batch without any usable row (its keys, each with no value)."""

    def __init__(self, transform: Callable, prepare: Callable, log: SkipLog, empty: dict):
        self.transform, self.prepare, self.log, self.empty = transform, prepare, log, empty

    def __call__(self, batch: dict) -> dict:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        bad, good = [], []
        for source, row in self.prepare(rows):
            if isinstance(row, BadSampleError):
                bad.append((source, row.reason))
            else:
                good.append((source, row))
        try:
            out = self._transform([row for _, row in good])
        except BadSampleError:
            usable = []
            for source, row in good:
                try:
                    self._transform([row])
                    usable.append((source, row))
                except BadSampleError as error:
                    bad.append((source, error.reason))
            out = self._transform([row for _, row in usable])
        self.log.record(len(rows), bad)
        return out

    def _transform(self, rows: list[dict]) -> dict:
        if not rows:
            return dict(self.empty)
        return self.transform({key: [r[key] for r in rows] for key in rows[0]})


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


class StreamedSplit:
    """The training split as a stream of undecoded rows (`stream`), its `features` (a classifier's: `labels` as
    a map-style split's ClassLabel) and the `SkipLog` its decoding records to.

    `with_transform(transform)` is what `Dataset.with_transform` is to a map-style split: the `IterableDataset`
    the Trainer reads, decoded on the fly by `transform`, with unusable samples skipped (`SkipBadRows`, rows
    judged first by `prepare`). `head(n)`: the first `n` usable rows of the (shuffled) stream, prepared but not
    decoded, as a map-style `Dataset`: what statistics are fitted on (tabular columns, encoder features)."""

    def __init__(self, stream: IterableDataset, prepare: Callable, log: SkipLog, empty: dict, features=None):
        self.stream, self.prepare, self.log, self.empty = stream, prepare, log, empty
        self.features = features
        self.head_check: Callable | None = None
        self._head = None

    def with_transform(self, transform: Callable) -> IterableDataset:
        skip = SkipBadRows(transform, self.prepare, self.log, self.empty)
        return self.stream.map(skip, batched=True, batch_size=DECODE_BATCH, remove_columns=self.stream.column_names)

    def head(self, n: int) -> Dataset:
        """Read on the first call; `head_check(head) -> head`, when set (e.g. dropping samples that do not
        decode), runs once on it."""
        if self._head is None:
            rows = []
            for batch in self.stream.iter(batch_size=DECODE_BATCH):
                raw = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
                rows += [row for _, row in self.prepare(raw) if not isinstance(row, BadSampleError)]
                if len(rows) >= n:
                    break
            if not rows:
                raise DataError("no usable training row in the stream: every row read was unusable")
            self._head = Dataset.from_list(rows[:n])
            self._head = self.head_check(self._head) if self.head_check is not None else self._head
        return self._head


def classifier_stream(stream, column, label_column, encode: LabelEncoder, log: SkipLog) -> StreamedSplit:
    """A classifier's training stream: inputs in `column`, labels encoded by `encode`."""
    features = datasets.Features({"labels": ClassLabel(names=encode.names)})
    return StreamedSplit(stream, ClassRows(column, label_column, encode), log, {"labels": []}, features)


class StreamSkips(dict, TrainerCallback):
    """split -> [(source, reason)] of the samples left out, as `check_splits` returns it: the validation and
    test splits' from their up-front check, the training stream's gathered from every worker and process at the
    end of training (`on_train_end`, on every process), which then stops the run if more than
    `max_bad_fraction` of the samples read were bad. `summary()`: what the processes read and skipped (a sample
    skipped in two passes through the stream is listed once)."""

    def __init__(self, log: SkipLog, checked: dict):
        super().__init__(checked)
        self.log, self.read_per_process, self.skipped_per_process = log, [], []

    def on_train_end(self, args, state, control, **kwargs):
        import torch.distributed as dist

        local = self.log.read()
        parts = [local]
        if dist.is_available() and dist.is_initialized():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
        shutil.rmtree(self.log.folder, ignore_errors=True)
        self.read_per_process = [seen for seen, _ in parts]
        self.skipped_per_process = [len(set(bad)) for _, bad in parts]
        seen, bad = sum(self.read_per_process), [pair for _, pairs in parts for pair in pairs]
        self["train"] = list(dict.fromkeys(bad))
        if bad and state.is_world_process_zero:
            logger.warning(
                "skipped %d unusable training samples (%d skips) of %d read, e.g. %s: %s",
                len(self["train"]), len(bad), seen, *bad[0],
            )  # fmt: skip
        if seen and len(bad) > self.log.max_bad_fraction * seen:
            raise DataError(_too_many(len(bad), seen, self.log.max_bad_fraction, self["train"], "from the stream"))

    def summary(self) -> dict:
        """For all_results.json: the training samples each process read (every pass) and the distinct ones it
        skipped; each process reads its own shards, so the skipped ones add up to `len(self["train"])`."""
        return {
            "train_samples_read": sum(self.read_per_process),
            "train_samples_read_per_process": self.read_per_process,
            "train_samples_skipped_per_process": self.skipped_per_process,
        }


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


class ColumnNames:
    """What `require_columns` reads of a dataset: its column names (a stream's, from its first row)."""

    def __init__(self, names):
        self.column_names = names


def _evaluation_split(data_args, split, column, label_column, cache_dir, flags, hub):
    """A validation/test split read whole: (dataset with `column` and `label_column`, its source), or None."""
    folder, path = getattr(data_args, f"{split}_dir"), getattr(data_args, f"{split}_file")
    if folder and path:
        raise DataError(f"give either --{split}_dir or --{split}_file, not both")
    if folder:
        return read_class_folder(folder, column, label_column), folder
    if path:
        files, builder = _data_files(path, f"--{split}_file")
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


def _rows(stream):
    yield from stream


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
