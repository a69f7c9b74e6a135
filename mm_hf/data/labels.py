"""Labels of multimodal rows per problem type: the `LabelSpace` of a task and `encode_labels`.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
from datasets import ClassLabel, Dataset

from ..errors import DataError, UserError
from ..models.configuration_multimodal_fusion import PROBLEM_TYPES

logger = logging.getLogger(__name__)

LIST_DELIMITERS = ("|", ";", ",")  # tried in this order on the training split's label strings


def check_problem_type(problem_type: str) -> None:
    if problem_type not in PROBLEM_TYPES:
        raise UserError(f"--problem_type must be one of {', '.join(PROBLEM_TYPES)}; got {problem_type!r}")


def is_missing(value) -> bool:
    """None, NaN or a blank string: a missing cell."""
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


@dataclass
class LabelSpace:
    """What `labels` means: class names, label names (multi-label), [negative, positive] (binary) or targets.

    `num_labels` is the number of model outputs: 1 for binary (one logit), `len(names)` otherwise.
    """

    problem_type: str
    names: list[str]

    def __post_init__(self):
        check_problem_type(self.problem_type)
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
    check_problem_type(problem_type)
    if "train" not in splits:
        raise ValueError("encode_labels needs a 'train' split: the label space comes from it")
    label_columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
    if not label_columns:
        raise UserError("no label column given (--label_column)")
    if problem_type in ("single_label_classification", "binary_classification") and len(label_columns) != 1:
        raise UserError(f"--problem_type {problem_type} takes exactly one --label_column; got {label_columns}")
    ctx = _Context(sources or {}, rows or {})
    encoder = {
        "single_label_classification": _encode_single_label,
        "multi_label_classification": _encode_multi_label,
        "binary_classification": _encode_binary,
        "regression": _encode_regression,
    }[problem_type]
    return encoder(splits, label_columns, ctx)


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
    seen = {str(v) for v in values["train"]}
    if len(seen) < 2:
        raise DataError(
            f"{ctx.source('train')}: every training label in column {col!r} is {next(iter(seen))!r}; a classifier "
            "needs at least two classes: check --label_column (and --problem_type)"
        )
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
        if is_missing(value):
            return []
        if isinstance(value, (list, tuple)):
            if class_names is not None:
                return [class_names[v] for v in value if v is not None and v >= 0]
            return [str(_scalar(v)).strip() for v in value if not is_missing(v)]
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
