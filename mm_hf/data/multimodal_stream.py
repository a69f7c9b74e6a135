"""`--streaming` for the fusion recipes (`fusion_imagetext_cls.py`, `video_cls.py`): multimodal rows read as a stream.

The training split is a `StreamedSplit` of the rows of --train_file's CSV/JSONL/parquet files or WebDataset shards,
or of --dataset_name's train split. Each row is judged as it is read (`MultimodalRows`): one lacking every input,
naming a local file that does not exist, or with a label outside the label space is skipped and counted, as is one
whose media do not decode (in the recipe's transform); then it is decoded in the data workers. The validation and
test splits are read whole and checked up front as without --streaming (a Hub split once, into datasets' cache), so
every process evaluates a split of known length and each sample is counted once.

What a map-style run learns from its whole training split comes from somewhere explicit instead:
- each task's label space: `--class_names` (one single-label task), else the stream's ClassLabel feature (one
  single-label task), else the validation split's labels, encoded by the same `encode_labels` as a training split
  (a training row whose label the validation split lacks is then skipped as bad, and counted);
- the tabular statistics and the frozen encoders' feature standardisation: the first `STATISTICS_ROWS` usable rows
  of the shuffled stream (`StreamedSplit.head`; map-style: tabular on the whole training split, features on 1024
  rows).
"""

import json
import logging
import os
import tempfile

import datasets
from datasets import ClassLabel, Dataset

from ..errors import DataError, UserError
from .labels import encode_labels, is_missing
from .loading import hub_split_name, resolve_path
from .multimodal import (
    MEDIA_MODALITIES,
    RANKING_GROUP_KEY,
    MultimodalColumns,
    clean_and_encode,
    read_raw_splits,
    require_multimodal_columns,
    task_outputs,
)
from .streaming import (
    ColumnNames,
    SkipLog,
    StreamedSplit,
    describe_row,
    first_row,
    open_training_stream,
    read_whole,
    shuffled,
    undecoded,
)
from .validation import BadSampleError

logger = logging.getLogger(__name__)

# Rows the tabular statistics and the feature standardisation are fitted on: as many as fit_feature_statistics
# reads of a map-style training split.
STATISTICS_ROWS = 1024


def load_multimodal_stream(data_args, columns: MultimodalColumns, problem_type, cache_dir=None, seed: int = 42):
    """`(splits, spaces)` as `load_multimodal_splits` returns them, with `splits["train"]` a `StreamedSplit` of
    canonical rows (shuffled with a buffer, cut to --max_train_samples) and the validation/test splits map-style."""
    tasks = task_outputs(columns, problem_type)
    if data_args.train_dir:
        raise DataError("--train_dir (class folders) does not apply to multimodal data; use --train_file")
    stream, source, base, hub = open_training_stream(data_args, cache_dir)
    first = first_row(stream, source)
    require_multimodal_columns(ColumnNames(list(first)), columns, source)
    label_features = stream.features
    media = [getattr(columns, m) for m in MEDIA_MODALITIES if getattr(columns, m)]
    keep = columns.read + [c for c in ("__key__", "__url__") if c in first]
    stream = shuffled(undecoded(stream.select_columns(keep), media), data_args, seed, source)

    if hub is not None:  # the evaluation splits of a streamed Hub dataset, read whole
        names = {hub_split_name(hub, split) for split in ("validation", "test")} - {None}
        hub = {name: read_whole(undecoded(hub[name].select_columns(columns.read), media), cache_dir) for name in names}
    raw = read_raw_splits(data_args, columns, cache_dir, ("validation", "test"), hub)
    if not raw:
        raise DataError(
            "nothing to evaluate on: with --streaming pass a validation or test split (--validation_file / "
            "--test_file, or a Hub dataset with one)"
        )
    reference = label_reference(data_args, columns, tasks, label_features, raw)
    raw = {split: (_as_ids(ds, reference[0], source), source) for split, (ds, source) in raw.items()}
    splits, spaces = clean_and_encode(raw, columns, tasks, data_args.skip_bad_samples, reference)
    limits = {"validation": data_args.max_eval_samples, "test": data_args.max_predict_samples}
    for split, n in limits.items():
        if split in splits and n is not None:
            splits[split] = splits[split].select(range(min(n, len(splits[split]))))

    rows = MultimodalRows(columns, tasks, reference, base, _label_features(reference[0], label_features, columns))
    log = SkipLog(tempfile.mkdtemp(prefix="mm_hf_stream_skips_"), data_args.max_bad_fraction)
    splits["train"] = StreamedSplit(stream, rows, log, {})
    logger.info("streaming %s (%d shards); label space from %s", source, stream.num_shards, reference[1])
    return splits, spaces


def _label_features(reference: Dataset, stream_features, columns: MultimodalColumns):
    """How a batch of streamed labels is typed before encoding: ids of the --class_names / ClassLabel names (a
    WebDataset `.cls` index, or a name), a Hub stream's own ClassLabel columns, else as read."""
    if any(isinstance(f, ClassLabel) for f in reference.features.values()):
        return reference.features
    own = {c: (stream_features or {}).get(c) for c in columns.labels}
    if any(isinstance(f, ClassLabel) for f in own.values()) and all(own.values()):
        return datasets.Features(own)
    return None


def _as_ids(ds: Dataset, reference: Dataset, source: str) -> Dataset:
    """An evaluation split's labels read as the --class_names / ClassLabel reference reads the stream's: an integer
    is the index of a class, a string its name."""
    for column, feature in reference.features.items():
        if isinstance(feature, ClassLabel) and not isinstance(ds.features[column], ClassLabel):
            try:
                ds = ds.cast_column(column, feature)
            except (ValueError, TypeError) as error:
                raise DataError(f"{source}: column {column!r} holds a label outside {feature.names}: {error}") from None
    return ds


def label_reference(data_args, columns: MultimodalColumns, tasks: list, features, raw: dict) -> tuple[Dataset, str]:
    """`(rows, source)`: the label rows the tasks' label spaces are read from (`clean_and_encode`'s `reference`):
    the --class_names, the stream's ClassLabel names, or the validation split's distinct label rows."""
    single = len(tasks) == 1 and tasks[0][2] == "single_label_classification"
    column = columns.labels[0]
    feature = (features or {}).get(column)
    if data_args.class_names and not single:
        raise UserError(
            "--class_names names the classes of one single-label task; with --streaming the label spaces of other "
            "tasks come from the validation split: drop --class_names and pass --validation_file"
        )
    names, where = None, None
    if data_args.class_names:
        names, where = list(data_args.class_names), "--class_names"
    elif single and isinstance(feature, ClassLabel):
        names, where = list(feature.names), f"the ClassLabel feature of {column!r}"
    if names is not None:
        features = datasets.Features({column: ClassLabel(names=names)})
        return Dataset.from_dict({column: list(range(len(names)))}, features=features), where
    if "validation" not in raw:
        raise UserError(
            "--streaming: a stream cannot be read through first to find its labels, so the label space of "
            f"{', '.join(columns.labels)} comes from --class_names (one single-label task), the stream's ClassLabel "
            "feature, or the validation split: pass --validation_file (or a Hub dataset with a validation split)"
        )
    ds, where = raw["validation"]
    ds = ds.select_columns(columns.labels)
    distinct = {}  # the first row of each label value: the same label space, read at every batch
    for index, row in enumerate(ds):
        distinct.setdefault(json.dumps([row[c] for c in columns.labels], default=str, sort_keys=True), index)
    return ds.select(sorted(distinct.values())), f"the validation split {where}"


class MultimodalRows:
    """`SkipBadRows`' `prepare` for the fusion recipes' stream: raw rows -> canonical rows (media paths resolved
    against the table's folder `base`, missing inputs None, labels encoded per task against `reference`), or a
    `BadSampleError` for a row that cannot be used. Picklable: it travels into the DataLoader workers."""

    def __init__(self, columns: MultimodalColumns, tasks: list, reference: tuple, base: str | None, label_features):
        self.columns, self.tasks, self.reference, self.base = columns, tasks, reference, base
        self.label_features = label_features
        self.named_by = next((getattr(columns, m) for m in (*MEDIA_MODALITIES, "text") if getattr(columns, m)), None)

    def __call__(self, rows: list[dict]) -> list[tuple]:
        prepared = []
        for index, row in enumerate(rows):
            named = row.get(self.named_by)
            if isinstance(named, str) and self.base and self.named_by != self.columns.text:  # a file: its full path
                named = resolve_path(named.strip(), self.base)
            source = describe_row({**row, self.named_by: named}, self.named_by, index)
            try:
                prepared.append((source, self._inputs(row, source)))
            except BadSampleError as error:
                prepared.append((source, error))
        good = [i for i, (_, row) in enumerate(prepared) if not isinstance(row, BadSampleError)]
        try:
            labels = self._labels([rows[i] for i in good])
        except (DataError, ValueError):  # one bad label: find it
            labels = []
            for i in good:
                try:
                    labels += self._labels([rows[i]])
                except (DataError, ValueError) as error:
                    labels.append(
                        BadSampleError(prepared[i][0], f"{_reason(error)} (label space: {self.reference[1]})")
                    )
        for i, encoded in zip(good, labels, strict=True):
            source, inputs = prepared[i]
            prepared[i] = (source, encoded if isinstance(encoded, BadSampleError) else {**inputs, **encoded})
        return prepared

    def _inputs(self, row: dict, source: str) -> dict:
        columns, out, present = self.columns, {}, False
        for modality in MEDIA_MODALITIES:
            if column := getattr(columns, modality):
                out[modality] = self._medium(row[column], modality, column, source)
                present = present or out[modality] is not None
        if columns.text:
            value = row[columns.text]
            out["text"] = None if is_missing(value) else str(value)
            present = present or out["text"] is not None
        for column in [*columns.numeric, *columns.categorical]:
            out[column] = row[column]
            present = present or not is_missing(row[column])
        if not present:
            raise BadSampleError(source, f"every input is missing ({', '.join(columns.inputs)})")
        if columns.group:  # training rows are not ranked: their group is carried, never read
            out[RANKING_GROUP_KEY] = 0
        return out

    def _medium(self, value, modality: str, column: str, source: str):
        if isinstance(value, dict):  # undecoded Hub/WebDataset media: {"bytes", "path"}
            return value if value.get("bytes") is not None or not is_missing(value.get("path")) else None
        if is_missing(value):
            return None
        path = str(value).strip()
        path = resolve_path(path, self.base) if self.base else path
        if "://" not in path and not os.path.exists(path):
            raise BadSampleError(source, f"{modality} file not found: {path} (column {column!r})")
        return path

    def _labels(self, rows: list[dict]) -> list[dict]:
        if not rows:
            return []
        reference, where = self.reference
        values = {c: [row[c] for row in rows] for c in self.columns.labels}
        table = Dataset.from_dict(values, features=self.label_features)
        encoded = {}
        for out, cols, problem_type in self.tasks:
            labels, _ = encode_labels(
                {"train": reference, "stream": table}, cols, problem_type, sources={"train": where, "stream": ""}
            )
            encoded[out] = labels["stream"]
        return [{out: values[i] for out, values in encoded.items()} for i in range(len(rows))]


def _reason(error: Exception) -> str:
    """An `encode_labels` error about one streamed row, without the row number it gives it (always 0)."""
    return str(error).removeprefix(": row 0: ").replace(" in the stream split", "")
