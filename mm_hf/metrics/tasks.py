"""One flat metrics dict from raw logits and labels, chosen by the model's `problem_type`."""

from __future__ import annotations

import functools

import numpy as np
from scipy import special

from ..models.configuration_multimodal_fusion import PROBLEM_TYPES
from .loading import load_metric


@functools.cache
def _metric(name: str):
    # One instance per module and process: evaluate modules are reusable (compute() resets them) and
    # loading copies the script into the modules cache, too slow to repeat every evaluation. In memory:
    # the arrays are already whole here, and a compute() that raised would otherwise leave a locked cache
    # file behind, costing the next call a 1 s lock timeout.
    return load_metric(name, keep_in_memory=True)


def compute_task_metrics(
    problem_type: str,
    logits: np.ndarray,
    labels: np.ndarray,
    label_names: list[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Metrics for `problem_type` as a flat dict of plain floats, keys without the Trainer's eval_/test_ prefix.

    - "single_label_classification": logits `(N, C)`, class ids `(N,)`. Accuracy, macro precision / recall /
      F1 and `<name>_precision/_recall/_f1` per class (classification_report); with C == 2 also `roc_auc`
      and `log_loss` of the softmax probability of class 1 (binary_report).
    - "multi_label_classification": logits `(N, L)`, 0/1 labels `(N, L)`; sigmoid, then multilabel_report
      with `threshold` and `label_names`.
    - "binary_classification": one logit per sample, `(N,)` or `(N, 1)`, 0/1 labels; sigmoid, then
      binary_report with `threshold`. `label_names` is not used.
    - "regression": predictions `(N,)` / `(N, 1)` for one target or `(N, K)` for K outputs, labels the same;
      regression_report, with `label_names` naming the K outputs.

    `label_names` are class / label / output names in id order; they default to "0", "1", ... `threshold` is
    the probability at which a label (multi-label) or the positive class (binary) is predicted.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if problem_type == "single_label_classification":
        return _single_label(logits, labels, label_names)
    if problem_type == "multi_label_classification":
        return _metric("multilabel_report").compute(
            predictions=special.expit(logits), references=labels, threshold=threshold, label_names=label_names
        )
    if problem_type == "binary_classification":
        return _metric("binary_report").compute(
            predictions=special.expit(_one_column(logits, "logits")),
            references=_one_column(labels, "labels"),
            threshold=threshold,
        )
    if problem_type == "regression":
        if logits.ndim == 2 and logits.shape[1] == 1:  # num_labels=1 heads give (N, 1) against (N,) labels
            logits, labels = logits[:, 0], _one_column(labels, "labels")
        output_names = label_names if logits.ndim == 2 else None
        return _metric("regression_report").compute(predictions=logits, references=labels, output_names=output_names)
    raise ValueError(f"Unknown problem_type {problem_type!r}; expected one of {PROBLEM_TYPES}")


def compute_ranking_metrics(scores, relevant, groups, ks=(1, 5, 10), ties: str = "pessimistic") -> dict[str, float]:
    """ranking_report of one score (logit or probability: the order is the same) per row: recall/ndcg/hit_rate@K
    and mrr of each group's candidates, averaged over groups (users) with a relevant candidate."""
    scores = _one_column(np.asarray(scores, dtype=np.float64), "scores")
    relevant = _one_column(np.asarray(relevant), "relevance labels")
    groups = _one_column(np.asarray(groups), "group ids")
    return _metric("ranking_report").compute(
        predictions=scores, references=relevant.astype(np.int64), groups=groups.astype(str), ks=tuple(ks), ties=ties
    )


def _one_column(values: np.ndarray, what: str) -> np.ndarray:
    if values.ndim == 2 and values.shape[1] == 1:
        return values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"{what} must have shape (N,) or (N, 1), got {values.shape}")
    return values


def _single_label(logits: np.ndarray, labels: np.ndarray, label_names: list[str] | None) -> dict[str, float]:
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, num_classes) and labels (N,), got {logits.shape} and {labels.shape}")
    num_labels = logits.shape[1]
    probabilities = special.softmax(logits, axis=1)
    report = _metric("classification_report").compute(
        predictions=probabilities.argmax(axis=1),
        references=labels,
        num_labels=num_labels,
        target_names=label_names,
    )
    out = {"accuracy": report["accuracy"]}
    out.update({f"macro_{key}": report["macro_avg"][key] for key in ("precision", "recall", "f1")})
    per_class = {
        f"{name}_{key}": scores[key]
        for name, scores in report["per_class"].items()
        for key in ("precision", "recall", "f1")
    }
    if num_labels == 2:
        binary = _metric("binary_report").compute(predictions=probabilities[:, 1], references=labels)
        out.update({key: binary[key] for key in ("roc_auc", "log_loss") if key in binary})
    # A class called e.g. "macro" would make "macro_f1" mean two things.
    clashes = set(per_class) & set(out)
    if clashes:
        raise ValueError(f"label_names give per-class keys {sorted(clashes)} that clash with the averaged metrics")
    return {key: float(value) for key, value in {**out, **per_class}.items()}
