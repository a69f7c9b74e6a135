"""Binary classification report (e.g. click prediction): ranking, calibration and thresholded scores."""

import datasets
import evaluate
import numpy as np
from sklearn import metrics

_DESCRIPTION = """
Binary classification report from the probability of the positive class, for tasks such as click
prediction where ranking (ROC-AUC, average precision) and calibration (log loss, Brier score) matter as
much as thresholded accuracy. A sample is predicted positive when its probability is `>= threshold`;
precision, recall and F1 use sklearn's `zero_division=0`.

`log_loss` clips probabilities to [1e-7, 1 - 1e-7], so one confident mistake costs at most
-log(1e-7) ~= 16.1 instead of infinity. `brier` uses the unclipped probabilities.

Undefined values are left out, never reported as NaN: when the references hold only one class (all 0
or all 1), `roc_auc` and `average_precision` are undefined and their keys are omitted.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): probability of the positive class, in [0, 1] (apply a sigmoid to logits first).
    references (`list[int]`): 0/1 targets (ints, or floats such as BCE targets).
    threshold (`float`, *optional*, defaults to 0.5): a sample is predicted positive when its probability is
        `>= threshold`.
Returns (a flat dict of floats):
    roc_auc, average_precision: ranking quality (omitted when only one class is present in references).
    log_loss: mean binary cross-entropy of the clipped probabilities.
    brier: mean squared difference between probability and target.
    accuracy, precision, recall, f1: of the thresholded predictions.
    positive_rate: fraction of positive references.
Examples:
    >>> report = evaluate.load("mm_hf/metrics/binary_report")
    >>> out = report.compute(predictions=[0.9, 0.4, 0.2, 0.6], references=[1, 1, 0, 0])
    >>> out["roc_auc"], out["accuracy"], out["positive_rate"]
    (0.75, 0.5, 0.5)
"""

EPSILON = 1e-7


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BinaryReport(evaluate.Metric):
    def _info(self):
        # No numpy format: datasets' numpy formatter turns float64 columns into float32, which would move
        # log_loss and brier in the 8th digit.
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("float64"),
                    # float, so soft targets reach the 0/1 check instead of being truncated to int.
                    "references": datasets.Value("float64"),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#classification-metrics"],
        )

    def _compute(self, predictions, references, threshold=0.5):
        probabilities = np.asarray(predictions, dtype=np.float64)
        targets = np.asarray(references)
        if probabilities.shape != targets.shape or probabilities.ndim != 1 or probabilities.size == 0:
            raise ValueError(f"predictions and references must be 1-D, got {probabilities.shape} and {targets.shape}")
        if not np.isfinite(probabilities).all() or probabilities.min() < 0 or probabilities.max() > 1:
            raise ValueError("predictions must be probabilities in [0, 1]; apply a sigmoid to logits first")
        if not np.isin(targets, (0, 1)).all():
            raise ValueError("references must be 0/1")
        return binary_scores(probabilities, targets.astype(np.int64), float(threshold))


def binary_scores(probabilities, targets, threshold=0.5):
    """The flat report from 1-D positive-class probabilities and 0/1 targets."""
    predicted = (probabilities >= threshold).astype(np.int64)
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        targets, predicted, average="binary", zero_division=0
    )
    clipped = np.clip(probabilities, EPSILON, 1 - EPSILON)
    out = {
        "log_loss": -np.mean(targets * np.log(clipped) + (1 - targets) * np.log1p(-clipped)),
        "brier": np.mean((probabilities - targets) ** 2),
        "accuracy": np.mean(predicted == targets),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "positive_rate": np.mean(targets),
    }
    if 0 < targets.sum() < targets.size:
        out["roc_auc"] = metrics.roc_auc_score(targets, probabilities)
        out["average_precision"] = metrics.average_precision_score(targets, probabilities)
    return {key: float(value) for key, value in out.items()}
