"""Error bars and paired tests for evaluation numbers: percentile bootstrap CIs, paired bootstrap, exact McNemar.

Every resample draws sample indices with replacement from a seeded `numpy.random.Generator`, so a result is
reproducible from `seed`. Resamples are vectorised: a chunk of resamples is one `(resamples, N)` index array and a
metric is computed for all of them at once (a bincount for the F1 scores), with chunks sized to keep that array
around 32 MiB whatever N is.

- `bootstrap_ci(values)`: CI of the mean of any per-sample score (correctness, top-5 hit, per-sample NLL, ...).
- `bootstrap_metric_ci(metric, labels, predictions)`: CI of accuracy / macro-F1 / weighted-F1, which are not all
  means of per-sample scores (F1 needs the confusion counts of the resample).
- `paired_bootstrap_test` / `paired_bootstrap_metric_test`: "B beats A" on the same samples, resampled jointly so
  the correlation between the two models' errors is kept.
- `bootstrap_statistic_ci` / `paired_bootstrap_statistic_test`: the same for any statistic of resampled rows (a
  fusion head's ROC-AUC, micro-F1 or RMSE, `mm_hf.evaluate.scoring.head_statistics`); lower-is-better ones (RMSE)
  are tested for "B lower than A".
- `mcnemar_test`: exact (binomial) McNemar test on paired correctness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

NUM_RESAMPLES = 1000
CONFIDENCE = 0.95
# Index-array elements per chunk of resamples: 4M int64 = 32 MiB.
_CHUNK_ELEMENTS = 1 << 22

# A vectorised metric: labels and predictions `(R, N)` (one row per resample) and num_labels -> `(R,)` scores.
BatchMetric = Callable[[np.ndarray, np.ndarray, "int | None"], np.ndarray]


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate on all samples and its percentile bootstrap interval [low, high]."""

    estimate: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """B's score minus A's on the same samples, its bootstrap CI, and the one-sided p-value for "B beats A"."""

    estimate_a: float
    estimate_b: float
    difference: ConfidenceInterval
    p_value: float

    def as_dict(self) -> dict:
        return {
            "estimate_a": self.estimate_a,
            "estimate_b": self.estimate_b,
            "difference": self.difference.as_dict(),
            "p_value": self.p_value,
        }


@dataclass(frozen=True)
class McNemarTest:
    """Discordant pairs (`a_only`: only A right, `b_only`: only B right) and exact binomial p-values."""

    a_only: int
    b_only: int
    p_value: float  # two-sided: do A and B differ at all?
    p_value_b_better: float  # one-sided: is B right more often than A?

    def as_dict(self) -> dict:
        return asdict(self)


def accuracy_scores(labels: np.ndarray, predictions: np.ndarray, num_labels: int | None = None) -> np.ndarray:
    """Accuracy of each row of `(R, N)` labels / predictions."""
    return (labels == predictions).mean(axis=-1)


def _f1_per_class(labels: np.ndarray, predictions: np.ndarray, num_labels: int | None) -> tuple[np.ndarray, ...]:
    if num_labels is None:
        raise ValueError("F1 scores need num_labels, so that classes absent from a resample still count (as 0)")
    rows, n = labels.shape
    # One bincount over (row, true, predicted) gives every resample's confusion matrix at once.
    flat = (np.arange(rows)[:, None] * num_labels + labels) * num_labels + predictions
    matrix = np.bincount(flat.ravel(), minlength=rows * num_labels * num_labels).reshape(rows, num_labels, num_labels)
    true_positives = np.diagonal(matrix, axis1=1, axis2=2)
    support, predicted = matrix.sum(axis=2), matrix.sum(axis=1)
    denominator = (support + predicted).astype(np.float64)
    # Same formula and zero_division=0 convention as the classification_report module.
    f1 = np.divide(2.0 * true_positives, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    return f1, support / n


def macro_f1_scores(labels: np.ndarray, predictions: np.ndarray, num_labels: int | None) -> np.ndarray:
    """Macro F1 over all `num_labels` classes (classification_report's `macro_avg.f1`) of each row."""
    return _f1_per_class(labels, predictions, num_labels)[0].mean(axis=1)


def weighted_f1_scores(labels: np.ndarray, predictions: np.ndarray, num_labels: int | None) -> np.ndarray:
    """Support-weighted F1 (classification_report's `weighted_avg.f1`) of each row."""
    f1, weights = _f1_per_class(labels, predictions, num_labels)
    return (f1 * weights).sum(axis=1)


BOOTSTRAP_METRICS: dict[str, BatchMetric] = {
    "accuracy": accuracy_scores,
    "macro_f1": macro_f1_scores,
    "weighted_f1": weighted_f1_scores,
}


def _resample(statistic: Callable[[np.ndarray], np.ndarray], n: int, num_resamples: int, seed: int) -> np.ndarray:
    """`statistic(indices)` for `num_resamples` index rows of length n drawn with replacement: `(num_resamples,)`."""
    if n == 0:
        raise ValueError("cannot bootstrap zero samples")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // n)
    chunks = []
    for start in range(0, num_resamples, rows):
        chunks.append(statistic(rng.integers(0, n, size=(min(rows, num_resamples - start), n))))
    return np.concatenate(chunks)


def _interval(estimate: float, distribution: np.ndarray, confidence: float) -> ConfidenceInterval:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    # A statistic can be undefined on a resample (ROC-AUC of a one-class draw: NaN): those draws are left out.
    distribution = distribution[np.isfinite(distribution)]
    if distribution.size == 0:
        raise ValueError("the statistic is undefined (NaN) on every resample")
    tail = (1 - confidence) / 2
    low, high = np.quantile(distribution, [tail, 1 - tail])
    return ConfidenceInterval(float(estimate), float(low), float(high), confidence)


def _metric(metric: str | BatchMetric) -> BatchMetric:
    if callable(metric):
        return metric
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(
            f"Unknown bootstrap metric {metric!r}; expected one of {sorted(BOOTSTRAP_METRICS)} or a callable"
        )
    return BOOTSTRAP_METRICS[metric]


def _class_ids(values, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of integer class ids, got {values.dtype} {values.shape}")
    return values.astype(np.int64)


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"paired inputs must cover the same samples, got lengths {lengths}")
    return next(iter(lengths.values()))


def bootstrap_ci(
    values, *, confidence: float = CONFIDENCE, num_resamples: int = NUM_RESAMPLES, seed: int = 0
) -> ConfidenceInterval:
    """Percentile bootstrap CI of the mean of per-sample `values` `(N,)` (e.g. 0/1 correctness for accuracy)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    distribution = _resample(lambda idx: values[idx].mean(axis=1), len(values), num_resamples, seed)
    return _interval(values.mean(), distribution, confidence)


def bootstrap_metric_ci(
    metric: str | BatchMetric,
    labels,
    predictions,
    *,
    num_labels: int | None = None,
    confidence: float = CONFIDENCE,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap CI of `metric` ("accuracy", "macro_f1", "weighted_f1" or a `BatchMetric`) on class ids.

    `num_labels` is needed by the F1 metrics: classes absent from the data (or a resample) count with F1 = 0, as in
    the classification_report module, so the estimate equals the report's number.
    """
    labels, predictions = _class_ids(labels, "labels"), _class_ids(predictions, "predictions")
    n = _same_length(labels=labels, predictions=predictions)
    score = _metric(metric)
    estimate = score(labels[None], predictions[None], num_labels)[0]
    distribution = _resample(lambda idx: score(labels[idx], predictions[idx], num_labels), n, num_resamples, seed)
    return _interval(estimate, distribution, confidence)


def _paired(statistic, n: int, estimates: tuple[float, float], confidence, num_resamples, seed,
            lower_is_better: bool = False) -> PairedTest:  # fmt: skip
    # statistic(idx) -> (scores of A, scores of B) on the same resampled rows: resampling pairs keeps the
    # correlation between the models' errors, which is what makes a paired test sharper than two separate CIs.
    def difference(idx: np.ndarray) -> np.ndarray:
        scores_a, scores_b = statistic(idx)
        return scores_b - scores_a

    differences = _resample(difference, n, num_resamples, seed)
    differences = differences[np.isfinite(differences)]  # resamples where a statistic is undefined
    observed = estimates[1] - estimates[0]
    # One-sided test of H0 "B is no better than A": the bootstrap differences, shifted to mean zero, approximate
    # the null distribution (Efron & Tibshirani 1993, sec. 16.4); p = P(null difference >= observed), with +1 so
    # a finite number of resamples never claims p = 0. Lower is better (RMSE): "B beats A" is a negative difference.
    shifted = differences - observed
    exceed = int(np.count_nonzero(shifted <= observed if lower_is_better else shifted >= observed))
    p_value = (exceed + 1) / (differences.size + 1)
    return PairedTest(
        estimate_a=float(estimates[0]),
        estimate_b=float(estimates[1]),
        difference=_interval(observed, differences, confidence),
        p_value=float(min(p_value, 1.0)),
    )


def paired_bootstrap_test(
    values_a, values_b, *, confidence: float = CONFIDENCE, num_resamples: int = NUM_RESAMPLES, seed: int = 0
) -> PairedTest:
    """Paired bootstrap on per-sample scores `(N,)` of models A and B on the same samples (higher is better)."""
    values_a = np.asarray(values_a, dtype=np.float64).reshape(-1)
    values_b = np.asarray(values_b, dtype=np.float64).reshape(-1)
    n = _same_length(values_a=values_a, values_b=values_b)
    estimates = (values_a.mean(), values_b.mean())
    return _paired(
        lambda idx: (values_a[idx].mean(axis=1), values_b[idx].mean(axis=1)),
        n,
        estimates,
        confidence,
        num_resamples,
        seed,
    )


def paired_bootstrap_metric_test(
    metric: str | BatchMetric,
    labels,
    predictions_a,
    predictions_b,
    *,
    num_labels: int | None = None,
    confidence: float = CONFIDENCE,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
) -> PairedTest:
    """Paired bootstrap of `metric` (as in `bootstrap_metric_ci`) for two models' class predictions on `labels`."""
    labels = _class_ids(labels, "labels")
    predictions_a = _class_ids(predictions_a, "predictions_a")
    predictions_b = _class_ids(predictions_b, "predictions_b")
    n = _same_length(labels=labels, predictions_a=predictions_a, predictions_b=predictions_b)
    score = _metric(metric)
    estimates = tuple(score(labels[None], p[None], num_labels)[0] for p in (predictions_a, predictions_b))
    return _paired(
        lambda idx: (
            score(labels[idx], predictions_a[idx], num_labels),
            score(labels[idx], predictions_b[idx], num_labels),
        ),
        n,
        estimates,
        confidence,
        num_resamples,
        seed,
    )


def bootstrap_statistic_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    confidence: float = CONFIDENCE,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap CI of any statistic of `n` rows: `statistic(idx)` maps `(R, n)` row indices (drawn with
    replacement) to `(R,)` values; the estimate is its value on all rows in order. Resamples where it is undefined
    (NaN) are left out of the interval."""
    estimate = float(statistic(np.arange(n)[None])[0])
    return _interval(estimate, _resample(statistic, n, num_resamples, seed), confidence)


def paired_bootstrap_statistic_test(
    statistic_a: Callable[[np.ndarray], np.ndarray],
    statistic_b: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    lower_is_better: bool = False,
    confidence: float = CONFIDENCE,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
) -> PairedTest:
    """Paired bootstrap of two models' statistics (as `bootstrap_statistic_ci`) on the same resampled rows; the
    one-sided p-value is for "B beats A" (B higher, or lower with `lower_is_better`)."""
    everything = np.arange(n)[None]
    estimates = (float(statistic_a(everything)[0]), float(statistic_b(everything)[0]))
    return _paired(lambda idx: (statistic_a(idx), statistic_b(idx)), n, estimates, confidence, num_resamples, seed,
                   lower_is_better)  # fmt: skip


def mcnemar_test(correct_a, correct_b) -> McNemarTest:
    """Exact McNemar test on paired per-sample correctness (booleans) of models A and B.

    Only discordant samples carry information: under H0 (same error rate) each is A's win or B's with probability
    1/2, so B's wins among the `a_only + b_only` discordant ones are Binomial(a_only + b_only, 1/2). The exact
    binomial form is valid at any count, where the chi-square approximation needs about 25 discordant pairs.
    """
    correct_a = np.asarray(correct_a, dtype=bool).reshape(-1)
    correct_b = np.asarray(correct_b, dtype=bool).reshape(-1)
    _same_length(correct_a=correct_a, correct_b=correct_b)
    a_only = int(np.count_nonzero(correct_a & ~correct_b))
    b_only = int(np.count_nonzero(correct_b & ~correct_a))
    if a_only + b_only == 0:  # identical correctness: no evidence either way
        return McNemarTest(0, 0, 1.0, 1.0)
    return McNemarTest(
        a_only=a_only,
        b_only=b_only,
        p_value=float(stats.binomtest(b_only, a_only + b_only, 0.5).pvalue),
        p_value_b_better=float(stats.binomtest(b_only, a_only + b_only, 0.5, alternative="greater").pvalue),
    )
