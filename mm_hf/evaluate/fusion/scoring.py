"""Scoring a fusion model's heads: one pass over a set (`head_outputs`, split across the processes under `accelerate
launch`), then each head's `compute_task_metrics` (and a ranking head's ranking metrics), as the recipe's own test
metrics; `HEADLINE` and `headline_key` name the metric a model is summarised by."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import default_data_collator
from transformers.utils.logging import tqdm

from ...data.multimodal import RANKING_GROUP_KEY
from ...feature_cache import shared_pass
from ...metrics.tasks import compute_ranking_metrics, compute_task_metrics

# The metric each problem type is summarised by (table, relative score of a missing modality).
HEADLINE = {
    "single_label_classification": "accuracy",
    "multi_label_classification": "micro_f1",
    "binary_classification": "roc_auc",
    "regression": "rmse",
}


def headline_key(tasks: list[dict], ranking_ks=None) -> str:
    """The metric a fusion model is summarised by: ndcg@<largest K> for a ranking run, else its (first) head's
    HEADLINE, `<task>_`-prefixed when multi-task."""
    if ranking_ks:
        return f"ndcg@{max(ranking_ks)}"
    metric = HEADLINE[tasks[0]["problem_type"]]
    return metric if len(tasks) == 1 else f"{tasks[0]['name']}_{metric}"


@torch.no_grad()
def head_outputs(model, dataset, transform, tasks: list[dict], *, batch_size, num_workers, device, description,
                 progress, world_size: int = 1) -> tuple[list, list, np.ndarray | None]:  # fmt: skip
    """One pass over `dataset` (in order): `(logits, labels)` per head of `tasks` (`(N, outputs)` arrays, labels from
    `labels` for one head, `labels_<task>` for several) and the rows' RANKING_GROUP_KEY (None without).

    With `world_size` > 1 (called on every process of an `accelerate launch`) each process runs a contiguous block of
    the rows and the blocks are gathered in order on every process (`shared_pass`, the pass of the retrieval
    embeddings and cached features): each row exactly once, the arrays one process alone would give. The whole
    arrays are gathered once per pass, so blocks may differ by a row and nothing is padded."""
    keys = ["labels"] if len(tasks) == 1 else [f"labels_{t['name']}" for t in tasks]

    def compute(rows: range) -> dict[str, np.ndarray]:
        block = dataset if len(rows) == len(dataset) else dataset.select(rows)
        loader = DataLoader(block.with_transform(transform), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=default_data_collator)  # fmt: skip
        logits, labels, groups = [[] for _ in tasks], [[] for _ in tasks], []
        for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
            for i, key in enumerate(keys):
                labels[i].append(batch.pop(key).numpy())
            if RANKING_GROUP_KEY in batch:
                groups.append(batch.pop(RANKING_GROUP_KEY).numpy())
            inputs = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
            outputs = model(**inputs).logits
            for i, head_logits in enumerate(outputs if len(tasks) > 1 else (outputs,)):
                logits[i].append(head_logits.float().cpu().numpy())
        columns = {f"logits_{i}": np.concatenate(x) for i, x in enumerate(logits)}
        columns.update({f"labels_{i}": np.concatenate(y) for i, y in enumerate(labels)})
        if groups:
            columns["groups"] = np.concatenate(groups)
        return columns

    rows = range(len(dataset))
    columns = shared_pass(len(rows), compute, desc=description) if world_size > 1 else compute(rows)
    return ([columns[f"logits_{i}"] for i in range(len(tasks))], [columns[f"labels_{i}"] for i in range(len(tasks))],
            columns.get("groups"))  # fmt: skip


def outputs_metrics(task, outputs, ranking_ks=None) -> dict:
    """compute_task_metrics of `head_outputs`' `outputs` (see `task_scores` for `task` and `ranking_ks`)."""
    tasks = task if isinstance(task, list) else [task]
    logits, labels, groups = outputs
    out = {}
    for head, head_logits, head_labels in zip(tasks, logits, labels, strict=True):
        names = head["labels"] if head["problem_type"] != "binary_classification" else None
        scores = compute_task_metrics(head["problem_type"], head_logits, head_labels, names)
        if ranking_ks:  # single-task only (the recipe refuses multi-task ranking)
            scores.update(compute_ranking_metrics(head_logits, head_labels, groups, ranking_ks))
        if not isinstance(task, list) or len(tasks) == 1:
            return scores
        out.update({f"{head['name']}_{k}": v for k, v in scores.items()})
    return out


def task_scores(model, dataset, transform, task, *, ranking_ks=None, **run):
    """compute_task_metrics of the head(s) over `dataset` (in order), as the recipe's TaskMetrics computes them; with
    `ranking_ks` (a single ranking head), also the ranking metrics of the rows grouped by their RANKING_GROUP_KEY.

    `task`: one head's dict (its metrics returned as they are), or the list of a model's heads (each head's metrics
    `<task name>_`-prefixed, as the recipe's `test_<task>_<metric>`; labels from `labels_<task>`). `run`:
    `head_outputs`' keywords."""
    tasks = task if isinstance(task, list) else [task]
    return outputs_metrics(task, head_outputs(model, dataset, transform, tasks, **run), ranking_ks)
