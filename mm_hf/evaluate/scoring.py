"""Scoring one model on one set: a pass over a DataLoader with streaming metrics, then error bars and paired tests.

Per sample only ints are kept (label, prediction, top-k ids inside `ClassificationMetrics`) and calibration streams
per-bin sums, so memory does not grow with N x C. The exception is the `--calibration_data` set, whose logits the
temperature fit needs whole (`keep_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import default_data_collator
from transformers.utils.logging import tqdm  # tqdm is no direct dependency; transformers wraps it

from ..metrics.calibration import CalibrationMetrics
from ..metrics.significance import bootstrap_ci, bootstrap_metric_ci, mcnemar_test, paired_bootstrap_metric_test
from ..metrics.streaming import ClassificationMetrics

HEADLINE_METRICS = ("accuracy", "macro_f1", "weighted_f1")


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
) -> SetScores:
    """Run `model` over `dataset` (its input column + `labels` in the evaluation's label order) in order.

    `permutation[j]` is the model's output index of the evaluation's class j, so every model's logits are compared
    in one label order. `temperature` (fitted on --calibration_data) adds calibration metrics after scaling.
    """
    loader = DataLoader(
        dataset.with_transform(transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=default_data_collator,
    )
    calibration = CalibrationMetrics()
    scaled = CalibrationMetrics(temperature=temperature) if temperature else None
    index = torch.as_tensor(permutation, device=device)
    labels, predictions, hits, kept = [], [], [], []
    k = metrics.top_k
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        batch_labels = batch.pop("labels")
        inputs = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
        logits = model(**inputs).logits.float().index_select(-1, index)
        metrics.update(logits, batch_labels)
        calibration.update(logits, batch_labels)
        if scaled is not None:
            scaled.update(logits, batch_labels)
        logits = logits.cpu()
        labels.append(batch_labels.numpy())
        predictions.append(logits.argmax(-1).numpy())
        if k:
            hits.append((logits.topk(k, dim=-1).indices == batch_labels[:, None]).any(-1).numpy())
        if keep_logits:
            kept.append(logits.numpy())
    summary = metrics.compute()
    calibration_summary = calibration.compute()
    return SetScores(
        metrics=summary,
        report=metrics.last_report,
        calibration=calibration_summary,
        reliability=calibration.last_reliability,
        labels=np.concatenate(labels).astype(np.int64),
        predictions=np.concatenate(predictions).astype(np.int64),
        top_k_hits=np.concatenate(hits) if k else None,
        calibration_scaled=scaled.compute() if scaled is not None else None,
        logits=np.concatenate(kept) if keep_logits else None,
    )


def confidence_intervals(scores: SetScores, num_labels: int, top_k: int | None, num_resamples: int, seed: int):
    """95 % percentile bootstrap CIs of accuracy, macro/weighted F1 (and top-k accuracy)."""
    out = {
        name: bootstrap_metric_ci(
            name, scores.labels, scores.predictions, num_labels=num_labels, num_resamples=num_resamples, seed=seed
        ).as_dict()
        for name in HEADLINE_METRICS
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
