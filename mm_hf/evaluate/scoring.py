"""Scoring one model on one set: a pass over a DataLoader with streaming metrics, then error bars and paired tests.

The error bars and paired tests serve every mode of `python -m mm_hf.evaluate`: classifiers (`confidence_intervals`,
`paired_tests` on class ids), fusion/video heads (`head_confidence_intervals`, `head_paired_tests` on a head's outputs:
rows resampled, or groups for a ranking head) and retrieval (`query_confidence_intervals`, `query_paired_tests` on
per-query hits, the gallery fixed). Every interval is `{estimate, low, high, confidence}` (95 % percentile bootstrap);
the non-classifier ones add `resampled` ("rows" | "groups" | "queries") and `units` (how many were resampled).

Per sample only ints are kept (label, prediction, top-k ids inside `ClassificationMetrics`) and calibration streams
per-bin sums, so memory does not grow with N x C. The exception is the `--calibration_data` set, whose logits the
temperature fit needs whole (`keep_logits`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import gather
from scipy import special
from torch.utils.data import DataLoader
from transformers import default_data_collator
from transformers.utils.logging import tqdm  # tqdm is no direct dependency; transformers wraps it

from ..corruptions.column import CorruptColumn
from ..metrics.calibration import CalibrationMetrics
from ..metrics.ranking_report.ranking_report import RankingAccumulator
from ..metrics.significance import (
    accuracy_scores,
    bootstrap_ci,
    bootstrap_metric_ci,
    bootstrap_statistic_ci,
    macro_f1_scores,
    mcnemar_test,
    paired_bootstrap_metric_test,
    paired_bootstrap_statistic_test,
    paired_bootstrap_test,
)
from ..metrics.streaming import ClassificationMetrics

BOOTSTRAPPED_METRICS = ("accuracy", "macro_f1", "weighted_f1")
# Column carrying each sample's position in its set: the corruption seed and the order of gathered predictions.
INDEX_COLUMN = "sample_index"


@dataclass
class SetScores:
    """What one pass measured: the summary and full report, calibration, and the per-sample class ids."""

    metrics: dict
    report: dict
    calibration: dict
    reliability: dict
    labels: np.ndarray
    predictions: np.ndarray
    top_k_hits: np.ndarray | None
    calibration_scaled: dict | None = None
    logits: np.ndarray | None = None


class _WithIndex:
    """Batch transform keeping each sample's `sample_index` next to the model inputs (a class: workers pickle it)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, batch: dict) -> dict:
        index = list(batch[INDEX_COLUMN])
        out = dict(self.transform(batch))  # a CorruptColumn reads the index too (its own copy of the batch)
        out[INDEX_COLUMN] = index
        return out


def shard_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """Process `rank`'s contiguous share of 0..num_samples-1, padded with index 0 to ceil(num_samples / world_size)
    so every process runs the same batches (the collective gather needs equal shapes); the padding is dropped after
    the gather."""
    per_process = -(-num_samples // world_size)
    own = list(range(rank * per_process, min((rank + 1) * per_process, num_samples)))
    return own + [0] * (per_process - len(own))


@torch.no_grad()
def score(
    model,
    dataset,
    transform,
    permutation: list[int],
    metrics: ClassificationMetrics,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    description: str,
    temperature: float | None = None,
    keep_logits: bool = False,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> SetScores:
    """Run `model` over `dataset` (its input column + `labels` in the evaluation's label order).

    `permutation[j]` is the model's output index of the evaluation's class j, so every model's logits are compared
    in one label order. `temperature` (fitted on --calibration_data) adds calibration metrics after scaling.
    With `world_size` > 1 (accelerate launch) each process scores its shard and every batch's logits are gathered:
    all processes then update the same metrics with each sample exactly once (padding duplicates dropped by
    `sample_index`), and the per-sample arrays come back in the dataset's order.
    """
    num_samples = len(dataset)
    if INDEX_COLUMN not in dataset.column_names:
        dataset = dataset.add_column(INDEX_COLUMN, list(range(num_samples)))
    if world_size > 1:
        dataset = dataset.select(shard_indices(num_samples, rank, world_size))
    loader = DataLoader(
        dataset.with_transform(_WithIndex(transform)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=default_data_collator,
    )
    calibration = CalibrationMetrics()
    scaled = CalibrationMetrics(temperature=temperature) if temperature else None
    index = torch.as_tensor(permutation, device=device)
    k = metrics.top_k
    seen = np.zeros(num_samples, dtype=bool)
    labels = np.zeros(num_samples, dtype=np.int64)
    predictions = np.zeros(num_samples, dtype=np.int64)
    hits = np.zeros(num_samples, dtype=bool) if k else None
    kept = None
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        batch_labels = batch.pop("labels").to(device)
        sample_index = batch.pop(INDEX_COLUMN).to(device)
        inputs = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
        logits = model(**inputs).logits.float().index_select(-1, index)
        if world_size > 1:
            logits, batch_labels, sample_index = gather((logits.contiguous(), batch_labels, sample_index))
        ids = sample_index.cpu().numpy()
        # Each sample once: drop what an earlier batch (or an earlier row of this one) already counted.
        _, first = np.unique(ids, return_index=True)
        new = np.zeros(len(ids), dtype=bool)
        new[first] = True
        new &= ~seen[ids]
        if not new.any():
            continue
        ids, rows = ids[new], torch.as_tensor(np.flatnonzero(new), device=logits.device)
        logits, batch_labels = logits.index_select(0, rows), batch_labels.index_select(0, rows).cpu()
        seen[ids] = True
        metrics.update(logits, batch_labels)
        calibration.update(logits, batch_labels)
        if scaled is not None:
            scaled.update(logits, batch_labels)
        logits = logits.cpu()
        labels[ids] = batch_labels.numpy()
        predictions[ids] = logits.argmax(-1).numpy()
        if k:
            hits[ids] = (logits.topk(k, dim=-1).indices == batch_labels[:, None]).any(-1).numpy()
        if keep_logits:
            if kept is None:
                kept = np.zeros((num_samples, logits.shape[-1]), dtype=np.float32)
            kept[ids] = logits.numpy()
    if not seen.all():  # a sharding bug, never a data problem: refuse to report numbers over part of the set
        raise RuntimeError(f"{description}: {int((~seen).sum())} of {num_samples} samples were not scored")
    summary = metrics.compute()
    calibration_summary = calibration.compute()
    return SetScores(
        metrics=summary,
        report=metrics.last_report,
        calibration=calibration_summary,
        reliability=calibration.last_reliability,
        labels=labels,
        predictions=predictions,
        top_k_hits=hits,
        calibration_scaled=scaled.compute() if scaled is not None else None,
        logits=kept,
    )


def corruption_sweep(model, dataset, transform, permutation, metrics, names, severities, *, modality: str, column: str,
                     seed: int, name: str, **run) -> dict:  # fmt: skip
    """`{corruption: {severity: accuracy}}` of `model` on `dataset` with each corruption at each severity (severity
    keys are strings, as JSON keeps them). Corruptions run inside the DataLoader workers, seeded per sample index, so
    every model (and the recipes' before and after) sees the same corrupted samples. `run`: `score`'s keywords."""
    if INDEX_COLUMN not in dataset.column_names:
        dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    sampling_rate = getattr(transform, "sampling_rate", None)
    out = {}
    for corruption in names:
        out[corruption] = {}
        for severity in severities:
            corrupted = CorruptColumn(
                transform, modality=modality, corruption=corruption, severity=severity, column=column, seed=seed,
                index_column=INDEX_COLUMN, sampling_rate=sampling_rate,
            )  # fmt: skip
            scored = score(model, dataset, corrupted, permutation, metrics,
                           description=f"{name} | {corruption}@{severity}", **run)  # fmt: skip
            out[corruption][str(severity)] = scored.metrics["accuracy"]
    return out


def confidence_intervals(scores: SetScores, num_labels: int, top_k: int | None, num_resamples: int, seed: int):
    """95 % percentile bootstrap CIs of accuracy, macro/weighted F1 (and top-k accuracy)."""
    out = {
        name: bootstrap_metric_ci(
            name, scores.labels, scores.predictions, num_labels=num_labels, num_resamples=num_resamples, seed=seed
        ).as_dict()
        for name in BOOTSTRAPPED_METRICS
    }
    if top_k and scores.top_k_hits is not None:
        out[f"top{top_k}_accuracy"] = bootstrap_ci(scores.top_k_hits, num_resamples=num_resamples, seed=seed).as_dict()
    return out


def paired_tests(a: SetScores, b: SetScores, num_labels: int, num_resamples: int, seed: int) -> dict:
    """B against A on the same samples: exact McNemar on correctness, paired bootstrap of accuracy and macro F1."""
    if not np.array_equal(a.labels, b.labels):  # the same dataset object in the same order: a bug if not
        raise RuntimeError("paired tests need both models scored on the same samples in the same order")
    out = {"mcnemar": mcnemar_test(a.predictions == a.labels, b.predictions == b.labels).as_dict()}
    for name in ("accuracy", "macro_f1"):
        out[f"paired_bootstrap_{name}"] = paired_bootstrap_metric_test(
            name, a.labels, a.predictions, b.predictions, num_labels=num_labels, num_resamples=num_resamples, seed=seed
        ).as_dict()
    return out


# ------------------------------------------------------------------------------ fusion / video heads, retrieval
# Metrics where lower is better: their paired test asks "is B lower than A".
LOWER_IS_BETTER = ("rmse",)
# The threshold compute_task_metrics predicts a binary / multi-label head's positives at (probability >= 0.5).
THRESHOLD = 0.5
# A ranking head's per-group metrics with error bars (besides the headline ndcg@<largest K>).
RANKING_BOOTSTRAPPED = ("mrr",)

Statistic = Callable[[np.ndarray], np.ndarray]  # (R, N) row indices -> (R,) values, one per resample


def head_statistics(problem_type: str, logits, labels) -> dict[str, Statistic]:
    """`{metric: statistic}` of one head's outputs over resampled rows, each equal on all rows (in order) to the
    number `compute_task_metrics` reports under that key: the head's headline metric (accuracy, micro_f1, roc_auc,
    rmse), and for classification heads accuracy and macro F1 (binary: accuracy)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if problem_type == "single_label_classification":
        labels, predictions, num_labels = labels.astype(np.int64), logits.argmax(-1), logits.shape[-1]
        return {
            "accuracy": lambda idx: accuracy_scores(labels[idx], predictions[idx]),
            "macro_f1": lambda idx: macro_f1_scores(labels[idx], predictions[idx], num_labels),
        }
    if problem_type == "binary_classification":
        probabilities, targets = special.expit(logits.reshape(-1)), labels.reshape(-1).astype(np.int64)
        correct = ((probabilities >= THRESHOLD).astype(np.int64) == targets).astype(np.float64)
        return {"roc_auc": _roc_auc(probabilities, targets), "accuracy": lambda idx: correct[idx].mean(axis=1)}
    if problem_type == "multi_label_classification":
        predicted, targets = special.expit(logits) >= THRESHOLD, labels.astype(bool)
        # Per row and label: true positives, false positives, false negatives; a resample sums its rows'.
        counts = np.stack([predicted & targets, predicted & ~targets, ~predicted & targets]).astype(np.int64)
        return {"micro_f1": lambda idx: _f1(counts[:, idx].sum(axis=(2, 3))),
                "macro_f1": lambda idx: _f1(counts[:, idx].sum(axis=2)).mean(axis=-1)}  # fmt: skip
    if problem_type == "regression":
        predictions, targets = logits, labels.astype(np.float64)
        if predictions.ndim == 2 and predictions.shape[1] == 1:  # a one-target head's (N, 1) against (N,)
            predictions = predictions[:, 0]
        squared = (predictions - targets.reshape(predictions.shape)) ** 2
        squared = squared[:, None] if squared.ndim == 1 else squared
        # regression_report's rmse: the mean over outputs of each output's RMSE.
        return {"rmse": lambda idx: np.sqrt(squared[idx].mean(axis=1)).mean(axis=-1)}
    raise ValueError(f"no bootstrap statistics for problem type {problem_type!r}")


def _f1(counts: np.ndarray) -> np.ndarray:
    """F1 from stacked (true positive, false positive, false negative) counts (first axis); zero_division = 0."""
    true_positive, false_positive, false_negative = counts
    denominator = (2 * true_positive + false_positive + false_negative).astype(np.float64)
    return np.divide(2.0 * true_positive, denominator, out=np.zeros(denominator.shape), where=denominator > 0)


def _roc_auc(scores: np.ndarray, targets: np.ndarray) -> Statistic:
    """ROC-AUC per resample as the Mann-Whitney statistic: P(positive scored above negative) + P(tie) / 2, over the
    resample's rows counted with their multiplicity (NaN where a resample holds one class only)."""
    unique, inverse = np.unique(scores, return_inverse=True)
    width, positive = len(unique), targets.astype(bool)

    def statistic(idx: np.ndarray) -> np.ndarray:
        rows = idx.shape[0]
        cell = np.arange(rows)[:, None] * width + inverse[idx]  # (resample, distinct score) of every drawn row
        is_positive = positive[idx]
        pos = np.bincount(cell[is_positive], minlength=rows * width).reshape(rows, width)
        neg = np.bincount(cell[~is_positive], minlength=rows * width).reshape(rows, width)
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
        wins = (pos * (below + 0.5 * neg)).sum(axis=1)
        pairs = pos.sum(axis=1) * neg.sum(axis=1)
        return np.divide(wins, pairs, out=np.full(rows, np.nan), where=pairs > 0)

    return statistic


def _ranking_values(scores, labels, groups, ks) -> dict[str, np.ndarray]:
    """Each group's ranking metrics (compute_ranking_metrics' groups, ties and order): `{metric: (groups,)}`."""
    accumulator = RankingAccumulator(ks, "pessimistic")
    accumulator.update(np.asarray(groups).reshape(-1).astype(str), np.asarray(scores).reshape(-1),
                       np.asarray(labels).reshape(-1).astype(np.int64))  # fmt: skip
    accumulator.result()
    return {key: np.asarray(values) for key, values in accumulator.per_group.items()}


def _mean_of(values: np.ndarray) -> Statistic:
    return lambda idx: values[idx].mean(axis=1)


def _units(interval, resampled: str, units: int) -> dict:
    return {**interval.as_dict(), "resampled": resampled, "units": units}


def _head_units(tasks: list[dict], outputs, ranking_ks) -> list[tuple[str, dict[str, Statistic], int, str]]:
    """Per head: (metric key prefix, its statistics, units resampled, "rows" | "groups")."""
    logits, labels, groups = outputs
    out = []
    for head, head_logits, head_labels in zip(tasks, logits, labels, strict=True):
        prefix = f"{head['name']}_" if len(tasks) > 1 else ""
        if ranking_ks:  # groups (users) are the independent units, their rows are not: resample groups
            values = _ranking_values(head_logits, head_labels, groups, ranking_ks)
            keys = (f"ndcg@{max(ranking_ks)}", *RANKING_BOOTSTRAPPED)
            count = len(values[keys[0]])
            out.append((prefix, {k: _mean_of(values[k]) for k in keys}, count, "groups"))
        else:
            out.append((prefix, head_statistics(head["problem_type"], head_logits, head_labels), len(head_logits),
                        "rows"))  # fmt: skip
    return out


def head_confidence_intervals(tasks: list[dict], outputs, ranking_ks, num_resamples: int, seed: int) -> dict:
    """95 % bootstrap CIs of each head's headline metric (and accuracy / macro F1 of classification heads) from one
    set's `fusion.head_outputs`, keyed as the set's `metrics` (`<task>_`-prefixed for several heads). Rows are
    resampled; a ranking head's groups (users) are, with each group's metric values. A metric undefined on the set
    (ROC-AUC of one class) gets none."""
    out = {}
    for prefix, statistics, units, resampled in _head_units(tasks, outputs, ranking_ks):
        for metric, statistic in statistics.items():
            try:
                interval = bootstrap_statistic_ci(statistic, units, num_resamples=num_resamples, seed=seed)
            except ValueError:  # undefined on every resample
                continue
            if np.isfinite(interval.estimate):
                out[prefix + metric] = _units(interval, resampled, units)
    return out


def head_paired_tests(tasks: list[dict], a, b, ranking_ks, num_resamples: int, seed: int) -> dict:
    """B against A on the same rows (`head_outputs` of both): exact McNemar on correctness of single-label heads
    (`mcnemar`, `mcnemar_<task>` for several heads) and a paired bootstrap of every bootstrapped metric
    (`paired_bootstrap_<metric key>`; a ranking head's over groups)."""
    for labels_a, labels_b in zip(a[1], b[1], strict=True):
        if not np.array_equal(labels_a, labels_b):
            raise RuntimeError("paired tests need both models scored on the same rows in the same order")
    out = {}
    for head, (prefix, stats_a, units, _), (_, stats_b, _, _), logits_a, logits_b, labels in zip(
        tasks, _head_units(tasks, a, ranking_ks), _head_units(tasks, b, ranking_ks), a[0], b[0], a[1], strict=True
    ):
        if head["problem_type"] == "single_label_classification" and not ranking_ks:
            key = "mcnemar" if not prefix else f"mcnemar_{head['name']}"
            out[key] = mcnemar_test(logits_a.argmax(-1) == labels, logits_b.argmax(-1) == labels).as_dict()
        for metric in stats_a:
            estimate_a, estimate_b = (float(s(np.arange(units)[None])[0]) for s in (stats_a[metric], stats_b[metric]))
            if not (np.isfinite(estimate_a) and np.isfinite(estimate_b)):
                continue
            out[f"paired_bootstrap_{prefix}{metric}"] = paired_bootstrap_statistic_test(
                stats_a[metric], stats_b[metric], units, lower_is_better=metric in LOWER_IS_BETTER,
                num_resamples=num_resamples, seed=seed,
            ).as_dict()  # fmt: skip
    return out


def query_confidence_intervals(hits: dict[str, np.ndarray], num_resamples: int, seed: int) -> dict:
    """95 % bootstrap CIs of retrieval recalls from per-query hits `{metric: (queries,) bool}`: the queries are
    resampled, the gallery they rank against stays whole."""
    return {metric: _units(bootstrap_ci(values, num_resamples=num_resamples, seed=seed), "queries", len(values))
            for metric, values in hits.items()}  # fmt: skip


def query_paired_tests(a: dict[str, np.ndarray], b: dict[str, np.ndarray], num_resamples: int, seed: int) -> dict:
    """Paired bootstrap of each retrieval recall, B against A on the same queries: `paired_bootstrap_<metric>`."""
    return {f"paired_bootstrap_{metric}": paired_bootstrap_test(a[metric], b[metric], num_resamples=num_resamples,
                                                                seed=seed).as_dict()
            for metric in a}  # fmt: skip
