"""Loading multimodal rows (image / video / text / audio / tabular features -> labels), with errors naming the row.

`load_multimodal_splits` returns a `DatasetDict` whose columns are the used modalities under canonical names
("image", "video", "text", "audio": media as absolute file paths, or undecoded `{"bytes", "path"}` dicts for
Hub media), the numeric and categorical columns under their own names (raw values: `TabularProcessor`
standardises them, fitted on train) and `labels`, plus the `LabelSpace` of the training split.

A missing value (None, "", NaN) in a modality column means that sample lacks the modality: it stays None
and the model has to cope. A row lacking every modality, or naming a media file that does not exist, is an
error (or is dropped and counted with `skip_bad`). Row numbers in messages count data rows from 0 (the first
row after a CSV header, the first line of a JSONL file), before any row is dropped.

`labels` per problem type (label columns come from `MultimodalColumns.labels`):
- single_label_classification: one column of names or ids -> ClassLabel ids (names ordered as in loading.py)
- multi_label_classification: one column of lists of names, or of delimited strings ("a|b", "a;b", "a,b"),
  or one or more 0/1 columns -> a list of L floats 0/1. An empty cell in a names column means "no label".
- binary_classification: one column of 0/1, booleans or two distinct strings -> float 0/1. Names are
  [negative, positive]: True, 1, or the second of the two strings in sorted order is positive.
- regression: one or more float columns -> a float (one target) or a list of floats.

Multi-task training (one head per label column, each with its own problem type) calls `encode_labels` once
per task on the splits, getting one `LabelSpace` per task.
"""

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import datasets
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict

from .loading import DataError, _hub_split_name, _resolve_path, _stratify_column, read_data_file

logger = logging.getLogger(__name__)

MODALITIES = ("image", "video", "text", "audio", "tabular")
MEDIA_MODALITIES = ("image", "video", "audio")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "binary_classification", "regression")
LIST_DELIMITERS = ("|", ";", ",")  # tried in this order on the training split's label strings
_MAX_LISTED = 5


@dataclass
class MultimodalColumns:
    """Which source columns hold each modality, the tabular features and the label(s)."""

    image: str | None = None
    text: str | None = None
    audio: str | None = None
    video: str | None = None
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # one for single-task; several for 0/1 or regression targets

    def __post_init__(self):
        self.labels = [self.labels] if isinstance(self.labels, str) else list(self.labels)
        self.numeric, self.categorical = list(self.numeric), list(self.categorical)

    @property
    def modalities(self) -> list[str]:
        """Used modalities in the fixed order image, video, text, audio, tabular."""
        return [m for m in MODALITIES if (self.numeric or self.categorical if m == "tabular" else getattr(self, m))]

    @property
    def renames(self) -> dict[str, str]:
        """Source column -> output column for the media and text modalities."""
        return {getattr(self, m): m for m in ("image", "video", "text", "audio") if getattr(self, m)}

    @property
    def inputs(self) -> list[str]:
        """Source columns holding model inputs, in output order."""
        return [*self.renames, *self.numeric, *self.categorical]


@dataclass
class LabelSpace:
    """What `labels` means: class names, label names (multi-label), [negative, positive] (binary) or targets.

    `num_labels` is the number of model outputs: 1 for binary (one logit), `len(names)` otherwise.
    """

    problem_type: str
    names: list[str]

    def __post_init__(self):
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)}; got {self.problem_type!r}")
        self.names = [str(n) for n in self.names]

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == "binary_classification" else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def to_dict(self) -> dict:
        return {"problem_type": self.problem_type, "names": list(self.names)}

    @classmethod
    def from_dict(cls, values: Mapping) -> "LabelSpace":
        return cls(problem_type=values["problem_type"], names=list(values["names"]))


def load_multimodal_splits(
    data_args,
    columns: MultimodalColumns,
    problem_type: str | Sequence[str],
    cache_dir=None,
    seed: int = 42,
    skip_bad: bool = False,
) -> tuple[DatasetDict, LabelSpace | dict[str, LabelSpace]]:
    """train/validation/test splits from `data_args` (an `mm_hf.args.DataArguments`) and their label space.

    Sources per split: `--{split}_file` (CSV/TSV/JSON/JSONL; media paths relative to the file's folder or
    absolute) or `--dataset_name`. Without a validation split, `--train_val_split` of train is held out
    (stratified by class for single-label classification). `--max_*_samples` truncate, train after shuffling.

    Multi-task: `problem_type` a list with one problem type per label column; each column becomes a task with
    its own `labels_<column>` output column, and a dict column -> LabelSpace is returned.
    """
    multi_task = not isinstance(problem_type, str)
    if multi_task and len(problem_type) != len(columns.labels):
        raise ValueError(f"multi-task: one problem type per label column, got {problem_type} for {columns.labels}")
    for task_type in problem_type if multi_task else [problem_type]:
        _check_columns(columns, task_type)
    raw = {}
    hub = None
    if data_args.dataset_name:
        hub = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    for split in ("train", "validation", "test"):
        if getattr(data_args, f"{split}_dir", None):
            raise DataError(f"--{split}_dir (class folders) does not apply to multimodal data; use --{split}_file")
        path = getattr(data_args, f"{split}_file")
        if path:
            raw[split] = (_read_file(path, split, columns, cache_dir), path)
        elif hub is not None and (name := _hub_split_name(hub, split)):
            source = f"{data_args.dataset_name}[{name}]"
            raw[split] = (_select_hub_columns(hub[name], columns, source), source)
    if "train" not in raw:
        raise DataError("no training data: pass --train_file or --dataset_name")

    kept, rows, sources = {}, {}, {}
    for split, (ds, source) in raw.items():
        if len(ds) == 0:
            raise DataError(f"the {split} split is empty: {source}")
        kept[split], rows[split] = _clean_inputs(ds, columns, source, skip_bad)
        sources[split] = source
        if len(kept[split]) == 0:
            raise DataError(f"the {split} split is empty after dropping bad rows: {source}")
    # (output column, label columns, problem type) per task
    tasks = (
        [(f"labels_{col}", [col], task_type) for col, task_type in zip(columns.labels, problem_type, strict=True)]
        if multi_task
        else [("labels", columns.labels, problem_type)]
    )
    encoded = {out: encode_labels(kept, cols, pt, sources=sources, rows=rows) for out, cols, pt in tasks}

    splits = DatasetDict()
    for split, ds in kept.items():
        ds = ds.remove_columns(columns.labels)
        for out, _, task_type in tasks:
            ds = ds.add_column(out, encoded[out][0][split])
            if task_type == "single_label_classification":
                ds = ds.cast_column(out, ClassLabel(names=encoded[out][1].names))
        ds = ds.rename_columns({s: t for s, t in columns.renames.items() if s != t})
        outputs = [out for out, _, _ in tasks]
        splits[split] = ds.select_columns([*columns.renames.values(), *columns.numeric, *columns.categorical, *outputs])
    space = {cols[0]: encoded[out][1] for out, cols, _ in tasks} if multi_task else encoded["labels"][1]
    if "validation" not in splits and data_args.train_val_split and data_args.train_val_split > 0:
        stratify = _stratify_column(splits["train"]) if problem_type == "single_label_classification" else None
        parts = splits["train"].train_test_split(
            test_size=data_args.train_val_split, seed=seed, stratify_by_column=stratify
        )
        splits["train"], splits["validation"] = parts["train"], parts["test"]
    limits = {"train": "max_train_samples", "validation": "max_eval_samples", "test": "max_predict_samples"}
    for split, flag in limits.items():
        n = getattr(data_args, flag)
        if split in splits and n is not None:
            ds = splits[split].shuffle(seed=seed) if split == "train" else splits[split]
            splits[split] = ds.select(range(min(n, len(ds))))
    return splits, space


def check_media(
    splits: DatasetDict,
    modalities: Sequence[str],
    *,
    skip_bad: bool,
    num_proc: int | None = None,
    audio_sampling_rate: int | None = None,
) -> tuple[DatasetDict, dict[str, list]]:
    """Decode every image / audio clip / video of every split once, before training (missing ones are fine).

    Returns the splits (bad rows dropped with `skip_bad`) and split -> [(source, reason)] of what was dropped;
    without `skip_bad` the first bad file raises `BadSampleError` naming it. Audio is decoded at
    `audio_sampling_rate` (the feature extractor's), and so are videos' sound tracks when it is given.
    """
    from .audio import check_audio
    from .images import check_images
    from .video import check_videos

    checks = {"image": check_images, "audio": check_audio, "video": check_videos}
    skipped = {name: [] for name in splits}
    for modality in (m for m in modalities if m in checks):
        kwargs = {"sampling_rate": audio_sampling_rate} if modality != "image" else {}
        for name in list(splits):
            splits[name], bad = checks[modality](
                splits[name],
                modality,
                skip_bad=skip_bad,
                num_proc=num_proc,
                split_name=name,
                allow_missing=True,
                **kwargs,
            )
            skipped[name] += bad
    return splits, skipped


def encode_labels(
    splits: Mapping[str, Dataset],
    label_columns: Sequence[str],
    problem_type: str,
    sources: Mapping[str, str] | None = None,
    rows: Mapping[str, Sequence[int]] | None = None,
) -> tuple[dict[str, list], LabelSpace]:
    """`labels` values for every split (see the module docstring) and the label space of `splits["train"]`.

    `sources` names each split in messages (default: the split name); `rows` maps each split's rows to the
    row numbers messages should show (default: 0, 1, ...). Labels in other splits must occur in train.
    """
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)}; got {problem_type!r}")
    if "train" not in splits:
        raise ValueError("encode_labels needs a 'train' split: the label space comes from it")
    label_columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
    if not label_columns:
        raise ValueError("no label column given")
    if problem_type in ("single_label_classification", "binary_classification") and len(label_columns) != 1:
        raise ValueError(f"{problem_type} takes exactly one label column; got {label_columns}")
    ctx = _Context(sources or {}, rows or {})
    encoder = {
        "single_label_classification": _encode_single_label,
        "multi_label_classification": _encode_multi_label,
        "binary_classification": _encode_binary,
        "regression": _encode_regression,
    }[problem_type]
    return encoder(splits, label_columns, ctx)


# ----------------------------------------------------------------------------------------------- reading


def _check_columns(columns: MultimodalColumns, problem_type: str) -> None:
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)}; got {problem_type!r}")
    if not columns.modalities:
        raise ValueError("no input column given: set at least one of image, video, text, audio, numeric, categorical")
    if not columns.labels:
        raise ValueError("no label column given")
    used = [*columns.inputs, *columns.labels]
    repeated = sorted({c for c in used if used.count(c) > 1})
    if repeated:
        raise ValueError(f"column(s) {repeated} used for more than one role (inputs and labels must differ)")
    outputs = [*columns.renames.values(), *columns.numeric, *columns.categorical, "labels"]
    clashes = sorted({c for c in outputs if outputs.count(c) > 1})
    if clashes:
        raise ValueError(f"output column name(s) {clashes} would clash: rename the tabular column(s) in the data")


def _read_file(path: str, split: str, columns: MultimodalColumns, cache_dir) -> Dataset:
    ds = read_data_file(path, cache_dir, split)
    _require_columns(ds, columns, path)
    ds = ds.select_columns([*columns.inputs, *columns.labels])
    base = os.path.dirname(os.path.abspath(path))
    for modality in MEDIA_MODALITIES:  # relative to the file's folder, as in loading.py
        if col := getattr(columns, modality):
            values = [None if _is_missing(v) else _resolve_path(str(v).strip(), base) for v in ds[col]]
            ds = ds.remove_columns(col).add_column(col, values, feature=datasets.Value("string"))
    return ds.select_columns([*columns.inputs, *columns.labels])


def _select_hub_columns(ds: Dataset, columns: MultimodalColumns, source: str) -> Dataset:
    _require_columns(ds, columns, source)
    ds = ds.select_columns([*columns.inputs, *columns.labels])
    # Decode media ourselves (robust modes, errors naming the sample) instead of in the datasets library.
    for modality in MEDIA_MODALITIES:
        col = getattr(columns, modality)
        feature = ds.features[col] if col else None
        if isinstance(feature, (datasets.Image, datasets.Audio, datasets.Video)):
            ds = ds.cast_column(col, type(feature)(decode=False))
    return ds


def _require_columns(ds: Dataset, columns: MultimodalColumns, source: str) -> None:
    roles = dict(columns.renames)
    roles.update({c: "numeric" for c in columns.numeric} | {c: "categorical" for c in columns.categorical})
    roles.update({c: "label" for c in columns.labels})
    missing = [f"{c!r} ({role})" for c, role in roles.items() if c not in ds.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; available: {', '.join(ds.column_names)}")


# ------------------------------------------------------------------------------------- missing modalities


def _is_missing(value) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _media_cells(ds: Dataset, col: str) -> list[tuple]:
    """(path, has bytes) per row; undecoded Hub media are read as Arrow structs, keeping their bytes out of Python."""
    if not isinstance(ds.features[col], (datasets.Image, datasets.Audio, datasets.Video)):
        return [(v.get("path"), v.get("bytes") is not None) if isinstance(v, dict) else (v, False) for v in ds[col]]
    cells = ds.with_format("arrow")[col]
    valid = cells.is_valid().to_pylist()
    paths = pc.struct_field(cells, "path").to_pylist()
    has_bytes = pc.is_valid(pc.struct_field(cells, "bytes")).to_pylist()
    return [(p, b) if ok else (None, False) for ok, p, b in zip(valid, paths, has_bytes, strict=True)]


def _media_present(ds: Dataset, col: str) -> tuple[list[bool], list[tuple[int, str]]]:
    """(whether each row has this medium, [(row, path)] of local files that do not exist)."""
    present, absent = [], []
    for i, (path, has_bytes) in enumerate(_media_cells(ds, col)):
        if has_bytes:
            present.append(True)
        elif _is_missing(path):
            present.append(False)
        else:
            present.append(True)
            if "://" not in path and not os.path.exists(path):
                absent.append((i, path))
    return present, absent


def _clean_inputs(ds: Dataset, columns: MultimodalColumns, source: str, skip_bad: bool) -> tuple[Dataset, list[int]]:
    """`ds` with missing text as None and bad rows dropped (or an error), and the original row of each kept row."""
    any_present = [False] * len(ds)
    problems = {}  # row -> why it is unusable
    for modality in MEDIA_MODALITIES:
        if col := getattr(columns, modality):
            present, absent = _media_present(ds, col)
            any_present = [a or p for a, p in zip(any_present, present, strict=True)]
            for i, path in absent:
                problems.setdefault(i, f"{modality} file not found: {path} (column {col!r})")
    if columns.text:
        texts = [None if _is_missing(v) else str(v) for v in ds[columns.text]]
        any_present = [a or t is not None for a, t in zip(any_present, texts, strict=True)]
        ds = ds.remove_columns(columns.text).add_column(columns.text, texts, feature=datasets.Value("string"))
    for col in [*columns.numeric, *columns.categorical]:
        any_present = [a or not _is_missing(v) for a, v in zip(any_present, ds[col], strict=True)]
    for i, present in enumerate(any_present):
        if not present:
            problems.setdefault(i, f"every input is missing ({', '.join(columns.inputs)})")
    ds = ds.select_columns([*columns.inputs, *columns.labels])
    if not problems:
        return ds, list(range(len(ds)))
    bad = sorted(problems)
    listed = "; ".join(f"row {i}: {problems[i]}" for i in bad[:_MAX_LISTED])
    more = f"; ... ({len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else ""
    if not skip_bad:
        raise DataError(f"{source}: {len(bad)} unusable row(s): {listed}{more}; fix them or pass --skip_bad_samples")
    logger.warning("%s: dropped %d of %d row(s): %s%s", source, len(bad), len(ds), listed, more)
    keep = [i for i in range(len(ds)) if i not in problems]
    return ds.select(keep), keep


# ------------------------------------------------------------------------------------------------ labels


class _Context:
    def __init__(self, sources: Mapping[str, str], rows: Mapping[str, Sequence[int]]):
        self.sources, self.rows = sources, rows

    def where(self, split: str, i: int) -> str:
        rows = self.rows.get(split)
        return f"{self.sources.get(split, f'{split} split')}: row {rows[i] if rows is not None else i}"

    def source(self, split: str) -> str:
        return self.sources.get(split, f"{split} split")


def _scalar(value):
    """A label cell with NaN as None and integral floats (pandas turns int columns with gaps into floats) as int."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else value
    return value


def _label_cells(ds: Dataset, col: str, split: str, ctx) -> list:
    """One label per row (ClassLabel ids as names, cleaned by `_scalar`); a missing label is an error."""
    feature = ds.features[col]
    if isinstance(feature, ClassLabel):
        values = [None if v is None or v < 0 else feature.names[v] for v in ds[col]]
    else:
        values = [_scalar(v) for v in ds[col]]
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if missing:
        raise DataError(
            f"{ctx.where(split, missing[0])} has no label in column {col!r} "
            f"({len(missing)} row(s) without a label in the {split} split)"
        )
    return values


def _check_seen(split, values, known, what, ctx) -> None:
    for i, v in enumerate(values):
        if v not in known:
            raise DataError(
                f"{ctx.where(split, i)}: {what} {v!r} in the {split} split never occurs in the training data"
            )


def _encode_single_label(splits, label_columns, ctx):
    (col,) = label_columns
    values = {split: _label_cells(ds, col, split, ctx) for split, ds in splits.items()}
    feature = splits["train"].features[col]
    # As loading._label_names: ClassLabel order, integer ids sorted as numbers, anything else sorted as text.
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    elif all(isinstance(v, int) for v in values["train"]):
        names = [str(v) for v in sorted(set(values["train"]))]
    else:
        names = sorted({str(v) for v in values["train"]})
    index = {name: i for i, name in enumerate(names)}
    encoded = {}
    for split, vals in values.items():
        vals = [str(v) for v in vals]
        _check_seen(split, vals, index, "label", ctx)
        encoded[split] = [index[v] for v in vals]
    absent = sorted(set(names) - {names[i] for i in encoded["train"]})
    if absent:  # ClassLabel names can list classes the training data lacks: they get no training signal
        logger.warning("classes with no training examples: %s", absent[:10])
    return encoded, LabelSpace("single_label_classification", names)


def _indicator(value, split, i, col, ctx) -> float:
    value = _scalar(value)
    if isinstance(value, str):
        value = {"0": 0, "1": 1, "false": 0, "true": 1}.get(value.strip().lower(), value)
    if isinstance(value, bool) or value in (0, 1):
        return float(value)
    raise DataError(f"{ctx.where(split, i)}: label column {col!r} must hold 0/1 (or true/false); got {value!r}")


def _is_indicator_column(ds: Dataset, col: str) -> bool:
    feature = ds.features[col]
    if not isinstance(feature, datasets.Value) or feature.dtype not in ("bool", "int32", "int64", "float32", "float64"):
        return False
    return all(v is None or _scalar(v) in (0, 1) for v in ds[col])


def _encode_multi_label(splits, label_columns, ctx):
    train = splits["train"]
    if len(label_columns) > 1 or _is_indicator_column(train, label_columns[0]):
        encoded = {}
        for split, ds in splits.items():
            table = [list(ds[col]) for col in label_columns]
            encoded[split] = [
                [_indicator(table[j][i], split, i, col, ctx) for j, col in enumerate(label_columns)]
                for i in range(len(ds))
            ]
        return encoded, LabelSpace("multi_label_classification", label_columns)

    (col,) = label_columns
    inner = getattr(train.features[col], "feature", None)
    class_names = list(inner.names) if isinstance(inner, ClassLabel) else None  # Hub List(ClassLabel)
    strings = [v for v in train[col] if isinstance(v, str)]
    delimiter = next((d for d in LIST_DELIMITERS if any(d in s for s in strings)), None)

    def names_in(value, split, i) -> list[str]:
        if _is_missing(value):
            return []
        if isinstance(value, (list, tuple)):
            if class_names is not None:
                return [class_names[v] for v in value if v is not None and v >= 0]
            return [str(_scalar(v)).strip() for v in value if not _is_missing(v)]
        if isinstance(value, str):
            parts = value.split(delimiter) if delimiter else [value]
            return [p.strip() for p in parts if p.strip()]
        if isinstance(value, (int, float)):
            return [str(_scalar(value))]
        raise DataError(f"{ctx.where(split, i)}: cannot read labels from {value!r} in column {col!r}")

    parsed = {split: [names_in(v, split, i) for i, v in enumerate(ds[col])] for split, ds in splits.items()}
    names = class_names or sorted({n for row in parsed["train"] for n in row})
    if not names:
        raise DataError(f"{ctx.source('train')}: no labels at all in column {col!r}")
    index = {name: i for i, name in enumerate(names)}
    encoded = {}
    for split, rows in parsed.items():
        empty = sum(1 for row in rows if not row)
        if empty:
            logger.warning("%s: %d row(s) without any label in column %r", ctx.source(split), empty, col)
        for i, row in enumerate(rows):
            unseen = [n for n in row if n not in index]
            if unseen:
                raise DataError(
                    f"{ctx.where(split, i)}: label(s) {unseen} in the {split} split never occur in the training data"
                )
        encoded[split] = [[0.0] * len(names) for _ in rows]
        for multi_hot, row in zip(encoded[split], rows, strict=True):
            for name in row:
                multi_hot[index[name]] = 1.0
    return encoded, LabelSpace("multi_label_classification", names)


def _encode_binary(splits, label_columns, ctx):
    (col,) = label_columns
    raw = {split: _label_cells(ds, col, split, ctx) for split, ds in splits.items()}
    feature = splits["train"].features[col]
    values = set(raw["train"])
    as_text = False
    if isinstance(feature, ClassLabel):
        if len(feature.names) != 2:
            raise DataError(f"{ctx.source('train')}: binary labels need 2 classes; {col!r} has {feature.names}")
        names = list(feature.names)
        as_text = True
    elif all(isinstance(v, bool) for v in values):
        names = ["False", "True"]
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if not values <= {0, 1}:
            raise DataError(
                f"{ctx.source('train')}: numeric binary labels in {col!r} must be 0/1; got {sorted(values)[:10]}"
            )
        names = ["0", "1"]
    else:  # two strings: the second in sorted order is positive (false/true, neg/pos, no/yes)
        names = sorted({str(v).strip() for v in values})
        if len(names) != 2:
            raise DataError(
                f"{ctx.source('train')}: binary labels need exactly 2 distinct values in {col!r}; got {names[:10]}"
            )
        as_text = True
    if len(values) < 2:
        logger.warning("%s: every training label in %r is %r", ctx.source("train"), col, next(iter(values)))
    # Booleans and 0/1 compare equal (True == 1), so either form is accepted in every split.
    index = {name: float(i) for i, name in enumerate(names)} if as_text else {0: 0.0, 1: 1.0}
    encoded = {}
    for split, vals in raw.items():
        vals = [str(v).strip() for v in vals] if as_text else vals
        for i, v in enumerate(vals):
            if not isinstance(v, (str, int, float)) or (isinstance(v, str) and not as_text) or v not in index:
                raise DataError(
                    f"{ctx.where(split, i)}: label {v!r} in column {col!r} is not one of the training values {names}"
                )
        encoded[split] = [index[v] for v in vals]
    return encoded, LabelSpace("binary_classification", names)


def _encode_regression(splits, label_columns, ctx):
    encoded = {}
    for split, ds in splits.items():
        table = []
        for col in label_columns:
            values = []
            for i, v in enumerate(ds[col]):
                try:
                    x = float(v.strip() if isinstance(v, str) else v)
                except (TypeError, ValueError):
                    x = None
                if x is None or not math.isfinite(x):
                    raise DataError(f"{ctx.where(split, i)}: regression target {col!r} is {v!r}, not a finite number")
                values.append(x)
            table.append(values)
        encoded[split] = table[0] if len(table) == 1 else [list(r) for r in zip(*table, strict=True)]
    return encoded, LabelSpace("regression", label_columns)
