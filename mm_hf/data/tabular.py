"""`TabularProcessor`: numeric and categorical columns -> model-ready arrays, fitted on the training split only.

Numeric columns are standardised with the training mean and standard deviation (population std, as
`numpy.std`; a constant column divides by 1). Missing values (None, NaN, "") stay NaN, so the model can add
missing-value indicators instead of the data pretending to know them. Categorical values map to ids
1..cardinality in sorted order of their text; id 0 is shared by missing values, values unseen in training
and values rarer than `min_frequency`, so an embedding table needs `cardinality + 1` rows.

    processor = TabularProcessor(min_frequency=2).fit(splits["train"], numeric=["age"], categorical=["city"])
    batch = processor({"age": [31, None], "city": ["Oslo", "Atlantis"]})
    # {"numeric_values": float32 (2, 1) with NaN for the missing age, "categorical_ids": int64 (2, 1): [[k], [0]]}
    processor.save_pretrained(output_dir)  # tabular_processor.json, next to the model
"""

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..models.processing_multimodal_fusion import category_key, encode_tabular
from .loading import DataError

logger = logging.getLogger(__name__)

PROCESSOR_FILE = "tabular_processor.json"


class TabularProcessor:
    """Standardises numeric columns and encodes categorical columns with statistics of the training split."""

    def __init__(self, min_frequency: int = 1):
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1; got {min_frequency}")
        self.min_frequency = min_frequency
        self.numeric: list[str] = []
        self.categorical: list[str] = []
        self.means: list[float] = []
        self.stds: list[float] = []
        self.vocabularies: list[list[str]] = []  # per categorical column: the value with id k at position k - 1
        self._index: list[dict[str, int]] = []
        self._fitted = False

    def fit(self, dataset, numeric: Sequence[str] = (), categorical: Sequence[str] = ()) -> "TabularProcessor":
        """Learn statistics from `dataset` (a `datasets.Dataset` or a mapping of column -> values): train only."""
        numeric, categorical = list(numeric), list(categorical)
        both = sorted(set(numeric) & set(categorical))
        if both:
            raise ValueError(f"column(s) {both} are listed as both numeric and categorical")
        self.numeric, self.categorical = numeric, categorical
        self.means, self.stds = [], []
        for col in numeric:
            values = _numeric_values(_column(dataset, col), col, "training data")
            observed = values[~np.isnan(values)]
            if observed.size == 0:
                logger.warning("numeric column %r has no value in the training data: it will be all missing", col)
            mean = float(observed.mean()) if observed.size else 0.0
            std = float(observed.std()) if observed.size else 0.0
            self.means.append(mean)
            self.stds.append(std if std > 0 else 1.0)
        self.vocabularies = []
        for col in categorical:
            counts = Counter(_category_keys(_column(dataset, col)))
            counts.pop(None, None)
            self.vocabularies.append(sorted(k for k, n in counts.items() if n >= self.min_frequency))
        self._build_index()
        self._fitted = True
        return self

    def __call__(self, batch: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
        """`{"numeric_values": float32 (B, n_numeric) with NaN where missing, "categorical_ids": int64 (B, n_cat)}`."""
        if not self._fitted:
            raise RuntimeError("TabularProcessor is not fitted: call fit(train_dataset, numeric, categorical) first")
        size = _batch_size(batch, [*self.numeric, *self.categorical])
        numeric = [_numeric_values(_column(batch, col), col, "batch") for col in self.numeric]
        keys = [_category_keys(_column(batch, col)) for col in self.categorical]
        # The arithmetic is the checkpoint's own processor's (shipped as remote code), so both encode alike.
        return encode_tabular(numeric, self.means, self.stds, keys, self._index, size)

    @property
    def cardinalities(self) -> list[int]:
        """Known values per categorical column, excluding the shared unknown/missing id 0."""
        return [len(v) for v in self.vocabularies]

    def to_dict(self) -> dict:
        return {
            "processor_class": type(self).__name__,
            "min_frequency": self.min_frequency,
            "numeric": [
                {"name": c, "mean": m, "std": s} for c, m, s in zip(self.numeric, self.means, self.stds, strict=True)
            ],
            "categorical": [
                {"name": c, "vocabulary": v} for c, v in zip(self.categorical, self.vocabularies, strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, values: Mapping) -> "TabularProcessor":
        processor = cls(min_frequency=values.get("min_frequency", 1))
        processor.numeric = [c["name"] for c in values.get("numeric", [])]
        processor.means = [float(c["mean"]) for c in values.get("numeric", [])]
        processor.stds = [float(c["std"]) for c in values.get("numeric", [])]
        processor.categorical = [c["name"] for c in values.get("categorical", [])]
        processor.vocabularies = [[str(v) for v in c["vocabulary"]] for c in values.get("categorical", [])]
        processor._build_index()
        processor._fitted = True
        return processor

    def save_pretrained(self, save_directory: str) -> str:
        """Write `tabular_processor.json` into `save_directory`; returns the file's path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, PROCESSOR_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str) -> "TabularProcessor":
        path = os.path.join(directory, PROCESSOR_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{directory} has no {PROCESSOR_FILE} (written by TabularProcessor.save_pretrained)"
            )
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(numeric={self.numeric}, categorical={self.categorical}, "
            f"cardinalities={self.cardinalities}, min_frequency={self.min_frequency})"
        )

    def _build_index(self) -> None:
        self._index = [{value: i + 1 for i, value in enumerate(vocab)} for vocab in self.vocabularies]


def _column(data, name: str):
    """A column as a pyarrow array (from a `datasets.Dataset`, zero-copy) or as the given sequence."""
    names = getattr(data, "column_names", None)
    names = list(data.keys()) if names is None else names
    if name not in names:
        raise DataError(f"tabular column {name!r} not found; available: {', '.join(map(str, names))}")
    if hasattr(data, "with_format") and hasattr(data, "features"):  # datasets.Dataset: respects selected rows
        return data.with_format("arrow")[name]
    return data[name]


def _batch_size(batch, columns: list[str]) -> int:
    for col in columns:
        return len(_column(batch, col))
    return len(next(iter(batch.values()))) if batch else 0


def _numeric_values(values, col: str, where: str) -> np.ndarray:
    """float64 array with NaN for missing values; a non-numeric or infinite value is an error naming its row."""
    kind = values.type if isinstance(values, (pa.Array, pa.ChunkedArray)) else None
    if kind is not None and (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        array = np.asarray(pc.fill_null(values.cast(pa.float64()), math.nan).to_numpy(), dtype=np.float64)
    else:
        values = values.to_pylist() if kind is not None else values
        try:  # fast path: numbers, None (-> NaN) and numeric strings
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            array = np.array([_parse_number(v, i, col, where) for i, v in enumerate(values)], dtype=np.float64)
    if array.ndim != 1:
        raise DataError(f"numeric column {col!r} holds lists or arrays, not one number per row")
    infinite = np.flatnonzero(np.isinf(array))
    if infinite.size:
        raise DataError(f"numeric column {col!r}: row {infinite[0]} of the {where} is infinite")
    return array


def _parse_number(value, row: int, col: str, where: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DataError(f"numeric column {col!r}: row {row} of the {where} is not a number: {value!r}") from None


def _category_keys(values) -> list[str | None]:
    """Categorical cells as text keys (None when missing); 3.0 and 3 read the same (pandas floats int columns)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_pylist()
    return [category_key(v) for v in values]
