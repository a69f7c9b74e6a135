"""Classification metrics computed batch by batch inside `Trainer`'s evaluation loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .loading import load_metric

if TYPE_CHECKING:
    from transformers import EvalPrediction


class ClassificationMetrics:
    """`compute_metrics` for a `Trainer` run with `TrainingArguments(batch_eval_metrics=True)`.

    Each call gets one batch of logits `(batch, num_labels)` and labels `(batch,)`, already gathered
    across processes. The last call (`compute_result=True`) returns a flat dict of scalars for the
    Trainer log, keeps the full report (per class, confusion matrix) in `.last_report` and resets,
    so one instance serves every evaluation of a run.

    Memory choice: per sample we keep the label, the argmax and the top-k ids as int64, i.e.
    O(num_samples * (k + 2)) ints, never the O(num_samples * num_labels) float logits, and call each
    evaluate module once at the end, so every reported number comes from the modules. A streamed
    O(C^2) confusion matrix would need the report maths outside the modules, and `add_batch` per
    batch would only move the same ints into arrow cache files, which `compute` reads back whole.
    """

    def __init__(self, id2label: dict[int, str], top_k: int = 5):
        labels = {int(i): str(name) for i, name in id2label.items()}
        if sorted(labels) != list(range(len(labels))):
            raise ValueError(f"id2label keys must be 0..num_labels-1, got {sorted(labels)}")
        self.label_names = [labels[i] for i in range(len(labels))]
        # Top-k of k >= num_labels is trivially 1.0, so it is only reported when it says something.
        self.top_k = top_k if len(labels) > top_k else None
        self.last_report: dict | None = None
        self._report_metric = load_metric("classification_report")
        self._top_k_metric = load_metric("top_k_accuracy") if self.top_k else None
        self.reset()

    def __getstate__(self) -> dict:
        # evaluate modules hold thread locks, which do not pickle; Ray Tune (--hp_search ray) pickles the Trainer,
        # this object included, into each trial's process, which loads its own modules (__setstate__).
        return {**self.__dict__, "_report_metric": None, "_top_k_metric": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._report_metric = load_metric("classification_report")
        self._top_k_metric = load_metric("top_k_accuracy") if self.top_k else None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def reset(self) -> None:
        """Forget the batches seen so far (done automatically after each final compute)."""
        self._batches: list[tuple[np.ndarray, ...]] = []

    def __call__(self, eval_pred: EvalPrediction, compute_result: bool = False) -> dict:
        """Trainer hook: accumulate one batch; on the last one return the summary metrics."""
        logits = _first_output(eval_pred.predictions)
        if isinstance(logits, np.ndarray):
            # Without batch_eval_metrics the Trainer accumulates every logit and calls us once
            # with numpy arrays and no compute_result, so we would silently log nothing.
            raise TypeError(
                "ClassificationMetrics needs TrainingArguments(batch_eval_metrics=True); got the whole "
                "eval set as numpy arrays. Use update()/compute() to feed arrays by hand."
            )
        if isinstance(eval_pred.label_ids, (tuple, list)):
            raise TypeError("ClassificationMetrics expects a single `labels` column, got several label tensors.")
        self.update(logits, eval_pred.label_ids)
        # The Trainer keeps only the value returned for the last batch, so earlier ones return {}.
        return self.compute() if compute_result else {}

    def update(self, logits, labels) -> None:
        """Add one batch: `logits` `(batch, num_labels)` tensor or array, `labels` `(batch,)` class ids."""
        logits, labels = torch.as_tensor(logits), torch.as_tensor(labels).reshape(-1)
        if logits.ndim != 2 or logits.shape != (labels.numel(), self.num_labels):
            raise ValueError(
                f"expected logits of shape ({labels.numel()}, {self.num_labels}), got {tuple(logits.shape)}"
            )
        # argmax / topk run where the logits live (GPU in training): only k + 1 ints per sample move.
        ids = [labels, logits.argmax(dim=-1)]
        if self.top_k:
            ids.append(logits.topk(self.top_k, dim=-1).indices)
        batch = tuple(t.detach().to("cpu", torch.int64).numpy() for t in ids)
        if labels.numel() and not 0 <= batch[0].min() <= batch[0].max() < self.num_labels:
            # Fail at the offending batch (e.g. -100 ignore labels), not at the end of evaluation.
            raise ValueError(
                f"labels must be class ids in [0, {self.num_labels}), got {batch[0].min()}..{batch[0].max()}"
            )
        self._batches.append(batch)

    def compute(self) -> dict[str, float]:
        """Report on every batch since the last reset, store it in `.last_report`, then reset."""
        if not self._batches:
            raise RuntimeError("ClassificationMetrics.compute() called before any batch was added")
        try:
            self.last_report = self._full_report(*(np.concatenate(parts) for parts in zip(*self._batches, strict=True)))
        finally:
            self.reset()
        return self._summary(self.last_report)

    def _full_report(self, references, predictions, top_ids=None) -> dict:
        report = self._report_metric.compute(
            predictions=predictions,
            references=references,
            num_labels=self.num_labels,
            target_names=self.label_names,
        )
        if self.top_k:
            top_k = self._top_k_metric.compute(predictions=top_ids, references=references)
            report[f"top{self.top_k}_accuracy"] = top_k["top_k_accuracy"]
        return report

    def _summary(self, report: dict) -> dict[str, float]:
        summary = {"accuracy": report["accuracy"]}
        if self.top_k:
            summary[f"top{self.top_k}_accuracy"] = report[f"top{self.top_k}_accuracy"]
        for average in ("macro", "weighted"):
            summary[f"{average}_f1"] = report[f"{average}_avg"]["f1"]
        summary["macro_precision"] = report["macro_avg"]["precision"]
        summary["macro_recall"] = report["macro_avg"]["recall"]
        return summary


def _first_output(predictions):
    # A model returning more than logits (hidden states, attentions, ...) gives a tuple ordered
    # like its ModelOutput minus the loss, so the logits come first.
    while isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return predictions
