"""Scoring one model on one set: a pass over a DataLoader with streaming metrics, then error bars and paired tests.

Per sample only ints are kept (label, prediction, top-k ids inside `ClassificationMetrics`) and calibration streams
per-bin sums, so memory does not grow with N x C. The exception is the `--calibration_data` set, whose logits the
temperature fit needs whole (`keep_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import gather
from torch.utils.data import DataLoader
from transformers import default_data_collator
from transformers.utils.logging import tqdm  # tqdm is no direct dependency; transformers wraps it

from ..corruptions import CorruptColumn
from ..metrics.calibration import CalibrationMetrics
from ..metrics.significance import bootstrap_ci, bootstrap_metric_ci, mcnemar_test, paired_bootstrap_metric_test
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
