"""Fusion checkpoints in `python -m mm_hf.evaluate`: recipes/fusion_imagetext_cls.py output folders side by side.

A fusion run's inputs are several columns of one CSV/JSONL file, so the data comes from `--test_file` (and
`--ood NAME=FILE`) read with the columns and problem type the run itself recorded in run_config.yaml. Each model
is scored with its saved `MultimodalProcessor` (eval transform) and `mm_hf.metrics.tasks.compute_task_metrics`,
the recipe's own metrics, so the clean test numbers equal the recipe's `test_*` ones; then again with each modality
marked missing (the learned placeholder stands in), the recipe's `test_without_<modality>_*` numbers, and the
relative score of each missing-modality case (metric without / metric with all modalities).

A `--problem_type ranking` run (a binary head) is read with its `group_column` and also gets the recipe's ranking
metrics (recall/ndcg/hit_rate@K, mrr per group, `compute_ranking_metrics`), ndcg@<largest K> as its headline.

Scope: single-task heads (any problem type), one process. Logits are kept whole per set (N x outputs), as the
recipes' Trainer evaluation does. Multi-task checkpoints and sharding are refused with a message.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, default_data_collator
from transformers.utils.logging import tqdm

from ..args import DataArguments
from ..data.multimodal import RANKING_GROUP_KEY, MultimodalColumns, check_media, load_multimodal_splits
from ..errors import DataError, UserError
from ..measures import WithoutModality
from ..metrics.tasks import compute_ranking_metrics, compute_task_metrics
from ..processing import MultimodalProcessor

# The metric each problem type is summarised by (table, relative score of a missing modality).
HEADLINE = {
    "single_label_classification": "accuracy",
    "multi_label_classification": "micro_f1",
    "binary_classification": "roc_auc",
    "regression": "rmse",
}


def fusion_columns(candidate) -> MultimodalColumns:
    """The columns the fusion run was trained with (its run_config.yaml), any number of tasks."""
    config = candidate.run_config
    if not config:
        raise UserError(
            f"{candidate.path}: a fusion checkpoint reads the columns its run recorded in run_config.yaml, and "
            "there is none (save it with recipes/fusion_imagetext_cls.py)"
        )
    return MultimodalColumns(
        image=config.get("image_column"),
        text=config.get("text_column"),
        audio=config.get("audio_column"),
        numeric=config.get("numeric_columns") or [],
        categorical=config.get("categorical_columns") or [],
        labels=list(config.get("label_column") or []),
        group=config.get("group_column"),
    )


def run_columns(candidate) -> tuple[MultimodalColumns, str]:
    """The columns and problem type the fusion run was trained with; refuses a multi-task run."""
    columns = fusion_columns(candidate)
    problem_types = list(candidate.run_config.get("problem_type") or [])
    if len(problem_types) != 1:
        raise UserError(
            f"--model {candidate.name}={candidate.path}: a multi-task fusion checkpoint ({problem_types}); "
            "python -m mm_hf.evaluate scores single-task fusion heads only for now"
        )
    return columns, problem_types[0]


def head_type(problem_type: str) -> str:
    """The model head's problem type: a ranking run trains a binary (relevant or not) head."""
    return "binary_classification" if problem_type == "ranking" else problem_type


def headline_metric(problem_type: str, ranking_ks=None) -> str:
    return f"ndcg@{max(ranking_ks)}" if problem_type == "ranking" else HEADLINE[problem_type]


def load_fusion(path: str, device="cpu") -> tuple:
    """(model in eval mode on `device`, its saved MultimodalProcessor) of a fusion checkpoint folder."""
    model = AutoModelForSequenceClassification.from_pretrained(path).eval().to(device)
    return model, MultimodalProcessor.from_pretrained(path)


def read_set(path: str, columns: MultimodalColumns, problem_type: str, task: dict, args, data_args, sampling_rate):
    """One labelled file as the recipe's test split (labels encoded as the checkpoint's head expects)."""
    if os.path.isdir(path):
        raise DataError(f"{path}: fusion data is a CSV/JSONL file with one column per modality, not a folder")
    # The label space comes from the file itself: it must be the head's (refused with both lists otherwise).
    data = DataArguments(train_file=path, validation_file=path, test_file=path)
    splits, space = load_multimodal_splits(data, columns, head_type(problem_type), args.cache_dir)
    if problem_type != "regression" and space.names != task["labels"]:
        raise DataError(
            f"{path}: labels {space.names} are not the fusion model's {task['labels']}: evaluate data with the "
            "classes the model was trained on (every class present)"
        )
    test = splits["test"]
    if data_args.max_predict_samples is not None and path == data_args.test_file:
        test = test.select(range(min(data_args.max_predict_samples, len(test))))
    checked, skipped = check_media(
        {"test": test}, columns.modalities, skip_bad=data_args.skip_bad_samples, audio_sampling_rate=sampling_rate
    )
    return checked["test"], skipped.get("test", [])


@torch.no_grad()
def task_scores(
    model, dataset, transform, task: dict, *, batch_size, num_workers, device, description, progress, ranking_ks=None
):
    """compute_task_metrics of the head over `dataset` (in order), as the recipe's TaskMetrics computes them; with
    `ranking_ks`, also the ranking metrics of the rows grouped by their RANKING_GROUP_KEY."""
    loader = DataLoader(dataset.with_transform(transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=default_data_collator)  # fmt: skip
    logits, labels, groups = [], [], []
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        labels.append(batch.pop("labels").numpy())
        if RANKING_GROUP_KEY in batch:
            groups.append(batch.pop(RANKING_GROUP_KEY).numpy())
        inputs = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
        logits.append(model(**inputs).logits.float().cpu().numpy())
    names = task["labels"] if task["problem_type"] != "binary_classification" else None
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    scores = compute_task_metrics(task["problem_type"], logits, labels, names)
    if ranking_ks:
        scores.update(compute_ranking_metrics(logits, labels, np.concatenate(groups), ranking_ks))
    return scores


def evaluate_fusion(candidates, args, data_args, ood_sources: dict, failed: dict, device, command: str) -> dict:
    """evaluation.json for fusion checkpoints (all `candidates` are fusion ones) and the .md table; returns it."""
    if not data_args.test_file:
        raise UserError("fusion checkpoints are evaluated on --test_file (CSV/JSONL with the run's columns)")
    first = candidates[0]
    columns, problem_type = run_columns(first)
    for candidate in candidates[1:]:
        if run_columns(candidate) != (columns, problem_type):
            raise UserError(
                f"--model {candidate.name} was trained on other columns/problem type than --model {first.name} "
                f"({run_columns(candidate)} vs {(columns, problem_type)}); evaluate them in separate runs"
            )
    modalities = columns.modalities
    ranking_ks = (first.run_config.get("ranking_ks") or [1, 5, 10]) if problem_type == "ranking" else None
    run = dict(batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers, device=device,
               progress=not args.disable_tqdm, ranking_ks=ranking_ks)  # fmt: skip
    results, sets_info = {}, {}
    for candidate in candidates:
        try:
            model, processor = load_fusion(candidate.path, device)
        except Exception as error:  # noqa: BLE001 (reported; the others are still evaluated)
            failed[candidate.name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            continue
        (task,) = model.config.tasks
        sampling_rate = getattr(processor.feature_extractor, "sampling_rate", None)
        transform = processor.transform(train=False)
        entry = {"path": candidate.path, "kind": "mm-hf-fusion", "problem_type": problem_type, "sets": {}}
        for set_name, path in {"test": data_args.test_file, **ood_sources}.items():
            dataset, skipped = read_set(path, columns, problem_type, task, args, data_args, sampling_rate)
            sets_info[set_name] = {"source": path, "samples": len(dataset), "skipped_bad_samples": len(skipped)}
            scored = {"samples": len(dataset), "metrics": task_scores(model, dataset, transform, task,
                                                                       description=f"{candidate.name} | {set_name}",
                                                                       **run)}  # fmt: skip
            if len(modalities) > 1:  # each modality missing in every sample (the placeholder stands in)
                scored["missing_modality"] = {
                    modality: task_scores(model, dataset, WithoutModality(transform, index), task,
                                          description=f"{candidate.name} | {set_name} without {modality}", **run)
                    for index, modality in enumerate(modalities)
                }  # fmt: skip
                headline = headline_metric(problem_type, ranking_ks)
                clean = scored["metrics"].get(headline)
                scored["missing_modality_relative"] = {
                    modality: (metrics.get(headline) / clean if clean else None)
                    for modality, metrics in scored["missing_modality"].items()
                }
            entry["sets"][set_name] = scored
        results[candidate.name] = entry
        del model
    if not results:
        raise UserError("no model could be evaluated: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
    evaluation = {
        "schema_version": 1,
        "command": command,
        "modality": "fusion",
        "modalities": modalities,
        "problem_type": problem_type,
        "ranking_ks": ranking_ks,
        "label_names": task["labels"],
        "device": str(device),
        "processes": 1,
        "sets": sets_info,
        "models": results,
        "failed": failed,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "evaluation.json"), "w") as f:
        json.dump(evaluation, f, indent=2)
    with open(os.path.join(args.output_dir, "evaluation.md"), "w") as f:
        f.write(_markdown(evaluation))
    print(f"Evaluated {', '.join(results)} on {', '.join(sets_info)}: {os.path.join(args.output_dir, 'evaluation.md')}")
    return evaluation


def _markdown(evaluation: dict) -> str:
    headline = headline_metric(evaluation["problem_type"], evaluation["ranking_ks"])
    modalities = evaluation["modalities"] if len(evaluation["modalities"]) > 1 else []
    header = ["model", "set", headline, *(f"{headline} without {m}" for m in modalities)]
    lines = [f"# Fusion evaluation ({evaluation['problem_type']})\n", "| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]  # fmt: skip
    for name, entry in evaluation["models"].items():
        for set_name, scored in entry["sets"].items():
            row = [name, set_name, scored["metrics"].get(headline)]
            row += [scored["missing_modality"][m].get(headline) for m in modalities]
            lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    if evaluation["failed"]:
        lines.append("\nNot evaluated: " + "; ".join(f"{n} ({why})" for n, why in evaluation["failed"].items()))
    return "\n".join(lines) + "\n"
