"""Multi-label classification report: thresholded P/R/F1, ranking metrics and per-label scores, as a flat dict."""

import datasets
import evaluate
import numpy as np
from sklearn import metrics

_DESCRIPTION = """
Multi-label classification report from per-label probabilities (sigmoid outputs). A label is predicted
when its probability is `>= threshold`; precision, recall and F1 use sklearn's `zero_division=0`.
Ranking metrics (ROC-AUC, average precision) use the probabilities themselves.

Undefined values are left out, never reported as NaN (which JSON and most loggers cannot take):
ROC-AUC and average precision of a label whose references hold only one class (all 0 or all 1) are
undefined, so that label gets no `<name>_roc_auc` / `<name>_average_precision` key and the macro
averages (`macro_roc_auc`, `mAP`) are means over the labels where they are defined; when no label
qualifies the macro key is left out too. Likewise `micro_roc_auc` / `micro_average_precision` (over all
sample-label pairs) are left out when every reference is 0 or every reference is 1.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): per-sample probabilities in [0, 1], one per label (`num_samples x num_labels`).
    references (`list[list[int]]`): per-sample 0/1 targets (ints, or floats such as BCE targets), same shape.
    threshold (`float`, *optional*, defaults to 0.5): a label is predicted when its probability is `>= threshold`.
    label_names (`list[str]`, *optional*): one unique name per label, used in the per-label keys; defaults to
        "0", "1", ...
Returns (a flat dict of floats):
    micro_precision, micro_recall, micro_f1: over all sample-label pairs.
    macro_precision, macro_recall, macro_f1: unweighted means over labels.
    samples_f1: mean over samples of each sample's F1.
    subset_accuracy: fraction of samples whose whole label set is predicted exactly.
    hamming_loss: fraction of wrong sample-label pairs.
    macro_roc_auc, mAP: means over labels of ROC-AUC and average precision (defined labels only).
    micro_roc_auc, micro_average_precision: over all sample-label pairs.
    <name>_precision, <name>_recall, <name>_f1, <name>_support: per label (support = number of positives).
    <name>_roc_auc, <name>_average_precision: per label, only where defined.
Examples:
    >>> report = evaluate.load("mm_hf/metrics/multilabel_report")
    >>> out = report.compute(predictions=[[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]], references=[[1, 0], [0, 1], [0, 1]])
    >>> out["micro_f1"], out["subset_accuracy"]
    (0.6666666666666666, 0.3333333333333333)
"""

_AGGREGATE_KEYS = (
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "samples_f1",
    "subset_accuracy",
    "hamming_loss",
    "macro_roc_auc",
    "micro_roc_auc",
    "mAP",
    "micro_average_precision",
)
_PER_LABEL_SUFFIXES = ("precision", "recall", "f1", "roc_auc", "average_precision", "support")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultilabelReport(evaluate.Metric):
    def _info(self):
        # No numpy format here: evaluate only allows it for scalar features, not sequences.
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("float64")),
                    # float, so soft targets reach the 0/1 check instead of being truncated to int.
                    "references": datasets.List(datasets.Value("float64")),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#multilabel-ranking-metrics"],
        )

    def _compute(self, predictions, references, threshold=0.5, label_names=None):
        scores, targets = _as_arrays(predictions, references)
        names = _label_names(targets.shape[1], label_names)
        predicted = (scores >= float(threshold)).astype(np.int64)
        return multilabel_scores(scores, predicted, targets, names)


def _as_arrays(predictions, references):
    scores = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(references)
    if scores.ndim != 2 or scores.shape != targets.shape or scores.shape[0] == 0:
        raise ValueError(
            f"predictions and references must both be num_samples x num_labels, got {scores.shape} and {targets.shape}"
        )
    if not np.isfinite(scores).all() or scores.min() < 0 or scores.max() > 1:
        raise ValueError("predictions must be probabilities in [0, 1]; apply a sigmoid to logits first")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("references must be 0/1 per label")
    return scores, targets.astype(np.int64)


def _label_names(num_labels, label_names):
    if label_names is None:
        names = [str(i) for i in range(num_labels)]
    else:
        names = [str(name) for name in label_names]
        if len(names) != num_labels or len(set(names)) != num_labels:
            raise ValueError(f"label_names must hold {num_labels} unique names, got {names}")
    # A label called e.g. "macro" would make "macro_precision" mean two things.
    clashes = {f"{name}_{suffix}" for name in names for suffix in _PER_LABEL_SUFFIXES} & set(_AGGREGATE_KEYS)
    if clashes:
        raise ValueError(f"label_names give per-label keys {sorted(clashes)} that clash with the averaged metrics")
    return names


def _has_both_classes(targets):
    return 0 < targets.sum() < targets.size


def multilabel_scores(scores, predicted, targets, names):
    """The flat report from probabilities, 0/1 predictions and 0/1 targets, all `num_samples x num_labels`."""
    out = {}
    for average in ("micro", "macro"):
        precision, recall, f1, _ = metrics.precision_recall_fscore_support(
            targets, predicted, average=average, zero_division=0
        )
        out.update({f"{average}_precision": precision, f"{average}_recall": recall, f"{average}_f1": f1})
    out["samples_f1"] = metrics.f1_score(targets, predicted, average="samples", zero_division=0)
    out["subset_accuracy"] = metrics.accuracy_score(targets, predicted)
    out["hamming_loss"] = metrics.hamming_loss(targets, predicted)

    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        targets, predicted, average=None, zero_division=0
    )
    per_label, roc_aucs, average_precisions = {}, [], []
    for j, name in enumerate(names):
        per_label.update(
            {
                f"{name}_precision": precision[j],
                f"{name}_recall": recall[j],
                f"{name}_f1": f1[j],
                f"{name}_support": support[j],
            }
        )
        if _has_both_classes(targets[:, j]):
            roc_aucs.append(metrics.roc_auc_score(targets[:, j], scores[:, j]))
            average_precisions.append(metrics.average_precision_score(targets[:, j], scores[:, j]))
            per_label[f"{name}_roc_auc"] = roc_aucs[-1]
            per_label[f"{name}_average_precision"] = average_precisions[-1]
    if roc_aucs:
        out["macro_roc_auc"] = np.mean(roc_aucs)
        out["mAP"] = np.mean(average_precisions)
    if _has_both_classes(targets):
        out["micro_roc_auc"] = metrics.roc_auc_score(targets.ravel(), scores.ravel())
        out["micro_average_precision"] = metrics.average_precision_score(targets.ravel(), scores.ravel())
    return {key: float(value) for key, value in {**out, **per_label}.items()}
