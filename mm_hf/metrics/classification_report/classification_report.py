"""Classification report: accuracy, confusion matrix, per-class and averaged precision / recall / F1."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Single-label classification report with the same numbers as
`sklearn.metrics.classification_report(..., labels=range(num_labels), zero_division=0)`.
Everything is derived from a `num_labels x num_labels` confusion matrix (rows = true class,
columns = predicted class), so memory is O(num_labels^2) whatever the number of samples, and
classes absent from a batch still get a row with zero support.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class ids in `[0, num_labels)`.
    references (`list[int]`): true class ids in `[0, num_labels)`.
    num_labels (`int`): number of classes. Required, so classes never seen still appear.
    target_names (`list[str]`, *optional*): one unique name per class id; defaults to "0", "1", ...
Returns:
    accuracy (`float`): fraction of correct predictions.
    confusion_matrix (`list[list[int]]`): counts, rows = true class, columns = predicted class.
    per_class (`dict[str, dict]`): `{name: {precision, recall, f1, support}}` in class-id order.
    micro_avg, macro_avg, weighted_avg (`dict`): `{precision, recall, f1, support}`.
Examples:
    >>> report = evaluate.load("mm_hf/metrics/classification_report")
    >>> results = report.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=3)
    >>> results["confusion_matrix"]
    [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                }
            ),
            # numpy format hands `_compute` int64 arrays instead of Python lists.
            format="numpy",
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.classification_report.html"
            ],
        )

    def _compute(self, predictions, references, num_labels=None, target_names=None):
        if num_labels is None:
            raise ValueError("classification_report needs `num_labels` so that unseen classes are reported.")
        names = _class_names(num_labels, target_names)
        matrix = confusion_matrix(np.asarray(references), np.asarray(predictions), num_labels)
        return report_from_confusion_matrix(matrix, names)


def _class_names(num_labels, target_names):
    if target_names is None:
        return [str(i) for i in range(num_labels)]
    names = [str(name) for name in target_names]
    if len(names) != num_labels or len(set(names)) != num_labels:
        raise ValueError(f"target_names must hold {num_labels} unique names, got {names}")
    return names


def confusion_matrix(references, predictions, num_labels):
    """Counts of (true, predicted) pairs as a `num_labels x num_labels` int64 array."""
    for what, ids in (("references", references), ("predictions", predictions)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
            raise ValueError(f"{what} must be class ids in [0, {num_labels}), got {ids.min()}..{ids.max()}")
    # One flat bincount over `true * C + pred` is O(C^2) memory and a single pass over the samples.
    flat = references.astype(np.int64) * num_labels + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def _divide(numerator, denominator):
    # sklearn's zero_division=0: an undefined ratio (empty class) counts as 0.
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def _scores(precision, recall, f1, support):
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "support": int(support),
    }


def report_from_confusion_matrix(matrix, names):
    """The full report dict from a confusion matrix (rows = true, columns = predicted)."""
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    total = int(support.sum())
    precision = _divide(true_positives, predicted)
    recall = _divide(true_positives, support)
    # F1 from counts, as sklearn does, rather than from the rounded-off precision and recall.
    f1 = _divide(2 * true_positives, support + predicted)
    accuracy = float(_divide(true_positives.sum(), total))
    weights = _divide(support, total)
    per_class = zip(precision, recall, f1, support, strict=True)
    return {
        "accuracy": accuracy,
        "confusion_matrix": matrix.tolist(),
        "per_class": {name: _scores(*row) for name, row in zip(names, per_class, strict=True)},
        # Single-label with every class listed: micro precision = recall = F1 = accuracy.
        "micro_avg": _scores(accuracy, accuracy, accuracy, total),
        "macro_avg": _scores(precision.mean(), recall.mean(), f1.mean(), total),
        "weighted_avg": _scores(precision @ weights, recall @ weights, f1 @ weights, total),
    }
