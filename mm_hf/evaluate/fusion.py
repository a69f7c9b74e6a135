"""Fusion checkpoints in `python -m mm_hf.evaluate`: recipes/fusion_imagetext_cls.py and video_cls.py output folders
side by side.

A fusion run's inputs are several columns of one CSV/JSONL file, so the data comes from `--test_file` (and
`--ood NAME=FILE`) read with the columns and problem type the run itself recorded in run_config.yaml. Each model
is scored with its saved `MultimodalProcessor` (eval transform) and `mm_hf.metrics.tasks.compute_task_metrics`,
the recipe's own metrics, so the clean test numbers equal the recipe's `test_*` ones; then again with each modality
marked missing (the learned placeholder stands in), the recipe's `test_without_<modality>_*` numbers, and the
relative score of each missing-modality case (metric without / metric with all modalities).

A `--problem_type ranking` run (a binary head) is read with its `group_column` and also gets the recipe's ranking
metrics (recall/ndcg/hit_rate@K, mrr per group, `compute_ranking_metrics`), ndcg@<largest K> as its headline.

Calibration, with the classifier path's keys and functions (`mm_hf.metrics.calibration`, report.py's writers): per
set `calibration` `{ece (15 bins), mce, nll, brier, accuracy, confidence, reliability}` of each single-label or
binary head (binary: softmax([0, z]) = sigmoid(z)); a multi-label head's are means over its labels, each a binary
problem, with `per_label` and a `reliability` pooling every (sample, label) decision. Regression and ranking heads
have none: `calibration` is null (a regression head predicts values; a ranking head is scored by its order within a
group, which no temperature changes). `--calibration_data FILE` (read like --test_file) fits one temperature per
calibrated head (a multi-label head's over all its labels' binary cross-entropy): `temperature_scaling`
`{temperature, before, after, samples}` (+ `saved_to` with `--save_temperature`, which writes the product with the
one already saved into config.json's `calibration_temperature` `{head: T}`) and per set
`calibration_temperature_scaled`. One head: these keys hold the head's values as a classifier's do; several heads:
each is `{head name: value or null}`. Plots: `plots/reliability_<model>[_<head>].png` (test set), listed in `plots`.

Error bars, comparisons and cost as for classifiers (`scoring.head_confidence_intervals` / `head_paired_tests`,
`cost.py`): per set 95 % bootstrap CIs of each head's headline metric (and accuracy / macro F1 of classification
heads) over resampled rows, a ranking head's over resampled groups; McNemar and paired bootstrap tests between every
two models on the same rows; parameters, weight size, latency on real test batches, peak RSS.

Scope: any heads (a multi-task model's metrics `<task>_`-prefixed, as its run's `test_<task>_*`). Logits are kept
whole per set (N x outputs), as the recipes' Trainer evaluation does, and every model's until the paired tests.
Under `accelerate launch -m mm_hf.evaluate` every pass (each set, each modality missing, each corruption and
severity, the calibration set) is split across the processes and gathered in row order (`head_outputs`); the
metrics, error bars, paired tests, temperature fits and files are the main process's. `--corruptions` corrupt the
image / text / audio columns and a video column's decoded frames (`fusion_corruption_sweep`).
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, default_data_collator
from transformers.utils.logging import tqdm

from ..args import DataArguments
from ..corruptions import CORRUPTIONS, CorruptColumn
from ..data.multimodal import RANKING_GROUP_KEY, MultimodalColumns, check_media, load_multimodal_splits
from ..errors import DataError, UserError
from ..feature_cache import shared_pass
from ..measures import WithoutModality
from ..metrics.calibration import calibration_report, fit_temperature, multilabel_calibration
from ..metrics.robustness import robustness_summary
from ..metrics.tasks import compute_ranking_metrics, compute_task_metrics
from ..processing import MultimodalProcessor
from .candidates import write_config_key
from .card import eval_results, update_card
from .cost import measure_latency, model_cost, peak_memory, reset_peak_memory
from .processes import main_process_first, process_rank
from .report import (
    calibration_table,
    cost_table,
    evaluation_record,
    markdown_table,
    reliability_plot,
    temperature_section,
    with_ci,
    write_evaluation,
)
from .scoring import INDEX_COLUMN, head_confidence_intervals, head_paired_tests

# The metric each problem type is summarised by (table, relative score of a missing modality).
HEADLINE = {
    "single_label_classification": "accuracy",
    "multi_label_classification": "micro_f1",
    "binary_classification": "roc_auc",
    "regression": "rmse",
}


def select_fusion_corruptions(spec: str, modalities: list[str], flag: str = "--corruptions") -> list[str]:
    """Corruption names for a fusion model's `modalities` from "all" or a comma-separated list; each name belongs to
    one modality (image: gaussian_noise ...; text: typos, word_dropout; audio: noise ...) and corrupts that column;
    a video model's image corruptions corrupt every frame of its clips."""
    visual = [m for m in ("image", "video") if m in modalities]
    available = {name: m for m in ("image", "text", "audio") if m in modalities or (m == "image" and visual)
                 for name in CORRUPTIONS[m]}  # fmt: skip
    if spec.strip() == "all":
        return list(available)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise UserError(f"{flag} {spec}: {unknown or 'no name'} not a corruption of this model's modalities "
                        f"{modalities}; choose from {sorted(available)}")  # fmt: skip
    return names


def corruption_modality(name: str, columns=("image", "text", "audio")) -> str:
    """The modality (column) corruption `name` applies to among `columns`: an image corruption corrupts a video
    column's frames when there is no image column."""
    modality = next(m for m, table in CORRUPTIONS.items() if name in table)
    return "video" if modality == "image" and "image" not in columns and "video" in columns else modality


def fusion_corruption_sweep(model, dataset, transform, task: dict, names, severities, *, seed: int, sampling_rate,
                            name: str, **run) -> dict:  # fmt: skip
    """`{corruption: {severity: compute_task_metrics}}`: the head on `dataset` (canonical columns image/video/text/
    audio) with each corruption applied to its modality's column (a missing value stays missing), seeded per row
    index. A video column's clips are decoded to the processor's frames and each frame corrupted (the same draws for
    every frame of a clip, mm_hf.corruptions), which the transform then uses instead of decoding the file."""
    if INDEX_COLUMN not in dataset.column_names:
        dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    out = {}
    for corruption in names:
        modality = corruption_modality(corruption, dataset.column_names)
        out[corruption] = {}
        for severity in severities:
            corrupted = CorruptColumn(
                transform, modality=modality, corruption=corruption, severity=severity, seed=seed,
                index_column=INDEX_COLUMN, sampling_rate=sampling_rate if modality == "audio" else None,
                num_frames=transform.processor.settings.num_frames if modality == "video" else None,
            )  # fmt: skip
            out[corruption][str(severity)] = task_scores(model, dataset, corrupted, task,
                                                         description=f"{name} | {corruption}@{severity}", **run)  # fmt: skip
    return out


def head_type(problem_type: str) -> str:
    """The model head's problem type: a ranking run trains a binary (relevant or not) head."""
    return "binary_classification" if problem_type == "ranking" else problem_type


def headline_key(tasks: list[dict], ranking_ks=None) -> str:
    """The metric a fusion model is summarised by: ndcg@<largest K> for a ranking run, else its (first) head's
    HEADLINE, `<task>_`-prefixed when multi-task."""
    if ranking_ks:
        return f"ndcg@{max(ranking_ks)}"
    metric = HEADLINE[tasks[0]["problem_type"]]
    return metric if len(tasks) == 1 else f"{tasks[0]['name']}_{metric}"


def sweep_summary(clean: dict, sweep: dict, headline: str, lower_is_better: bool = False) -> dict | None:
    """`robustness_summary` of the `headline` metric (None when lower is better, as a regression head's RMSE)."""
    if lower_is_better:
        return None
    curves = {c: [per[s].get(headline) for s in per] for c, per in sweep.items()}
    if clean.get(headline) is None or any(v is None for curve in curves.values() for v in curve):
        return None  # e.g. ROC-AUC undefined on a one-class set
    return robustness_summary(clean[headline], curves)


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
        video=config.get("video_column"),
        numeric=config.get("numeric_columns") or [],
        categorical=config.get("categorical_columns") or [],
        labels=list(config.get("label_column") or []),
        group=config.get("group_column"),
    )


def run_columns(candidate) -> tuple[MultimodalColumns, list[str]]:
    """The columns and problem type(s), one per head, the fusion run was trained with."""
    columns = fusion_columns(candidate)
    problem_types = list(candidate.run_config.get("problem_type") or [])
    # One problem type: one head over all label columns (multi-label findings); one per label column: multi-task.
    if len(problem_types) not in (1, len(columns.labels)):
        raise UserError(f"--model {candidate.name}={candidate.path}: its run_config.yaml has problem types "
                        f"{problem_types} for the label columns {columns.labels}")  # fmt: skip
    return columns, problem_types


def load_fusion(path: str, device="cpu") -> tuple:
    """(model in eval mode on `device`, its saved MultimodalProcessor) of a fusion checkpoint folder."""
    model = AutoModelForSequenceClassification.from_pretrained(path).eval().to(device)
    return model, MultimodalProcessor.from_pretrained(path)


def read_set(path: str, columns: MultimodalColumns, problem_type, task, cache_dir, data_args, sampling_rate,
             source: str | None = None):  # fmt: skip
    """One labelled file as the recipe's test split (labels encoded as the checkpoint's heads expect: `task` one
    head's dict or the list of them, `problem_type` its type or theirs); `source` names it in errors (default: the
    path)."""
    source = source or path
    tasks = task if isinstance(task, list) else [task]
    if os.path.isdir(path):
        raise DataError(f"{source}: fusion data is a CSV/JSONL file with one column per modality, not a folder")
    # The label space comes from the file itself: it must be the head's (refused with both lists otherwise).
    data = DataArguments(train_file=path, validation_file=path, test_file=path)
    multi_task = len(tasks) > 1
    splits, spaces = load_multimodal_splits(
        data, columns, [head_type(p) for p in problem_type] if multi_task else head_type(problem_type), cache_dir
    )
    for head in tasks:
        space = spaces[head["name"]] if multi_task else spaces
        if head["problem_type"] != "regression" and space.names != head["labels"]:
            unseen = sorted(set(space.names) - set(head["labels"]))
            raise DataError(
                f"{source}: labels {space.names} are not the fusion model's {head['labels']}"
                + (f" (head {head['name']})" if multi_task else "")
                + (f" (label(s) {unseen} were not seen in training)" if unseen else "")
                + ": evaluate data with the classes the model was trained on (every class present)"
            )
    test = splits["test"]
    if data_args.max_predict_samples is not None and path == data_args.test_file:
        test = test.select(range(min(data_args.max_predict_samples, len(test))))
    checked, skipped = check_media(
        {"test": test}, columns.modalities, skip_bad=data_args.skip_bad_samples, audio_sampling_rate=sampling_rate
    )
    return checked["test"], skipped.get("test", [])


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


# ------------------------------------------------------------------------------------------------ calibration
# Heads whose outputs are probabilities: a ranking run's binary head is scored by its order within each group
# (temperature never changes it) and a regression head predicts values, so neither is calibrated.
CALIBRATED = ("single_label_classification", "binary_classification", "multi_label_classification")


def calibrated_heads(tasks: list[dict], ranking: bool) -> list[str]:
    """Names of the heads that get calibration metrics and temperature scaling."""
    return [] if ranking else [t["name"] for t in tasks if t["problem_type"] in CALIBRATED]


def head_calibration(problem_type: str, logits, labels, temperature: float = 1.0) -> dict:
    """evaluation.json's `calibration` of one head: the classifier path's `calibration_report` (single-label, or
    binary through softmax([0, z]) = sigmoid(z)), or for multi-label `multilabel_calibration` (means over labels)."""
    if problem_type == "multi_label_classification":
        return multilabel_calibration(logits, labels, temperature=temperature)
    return calibration_report(logits, np.asarray(labels).reshape(-1).astype(np.int64), temperature=temperature)


def fit_head_temperature(problem_type: str, logits, labels) -> dict:
    """`fit_temperature` on one head's calibration-set outputs: `{temperature, before, after, samples}` as the
    classifier path's `temperature_scaling`. A multi-label head gets one T for all its labels (the NLL minimised is
    the mean binary cross-entropy over every (sample, label)); its before/after are per-label means."""
    if problem_type != "multi_label_classification":
        fit = fit_temperature(logits, np.asarray(labels).reshape(-1))
        return {**fit.as_dict(), "samples": len(logits)}
    temperature = fit_temperature(np.asarray(logits).reshape(-1), np.asarray(labels).reshape(-1)).temperature

    def summary(t):
        return {k: v for k, v in multilabel_calibration(logits, labels, temperature=t).items() if k != "reliability"}

    return {"temperature": temperature, "before": summary(1.0), "after": summary(temperature), "samples": len(logits)}


def per_head(tasks: list[dict], values: dict):
    """A `{head: value}` dict as evaluation.json keeps it: the value itself for a one-head model (the classifier
    path's keys), else keyed by head name (every head: None where one is not calibrated)."""
    if len(tasks) == 1:
        return values.get(tasks[0]["name"])
    return {t["name"]: values.get(t["name"]) for t in tasks}


def set_calibration(tasks: list[dict], heads: list[str], outputs, temperatures: dict) -> dict:
    """`calibration` (and with `temperatures` fitted, `calibration_temperature_scaled`) of one scored set."""
    problem = {t["name"]: t["problem_type"] for t in tasks}
    index = {t["name"]: i for i, t in enumerate(tasks)}
    logits, labels, _ = outputs
    out = {"calibration": per_head(tasks, {h: head_calibration(problem[h], logits[index[h]], labels[index[h]])
                                           for h in heads})}  # fmt: skip
    if temperatures:
        out["calibration_temperature_scaled"] = per_head(tasks, {
            h: {**head_calibration(problem[h], logits[index[h]], labels[index[h]], t), "temperature": t}
            for h, t in temperatures.items()
        })  # fmt: skip
    return out


def fit_temperatures(tasks: list[dict], heads: list[str], outputs) -> dict:
    """`{head: fit_head_temperature}` on the calibration set's `head_outputs`."""
    logits, labels, _ = outputs
    index = {t["name"]: i for i, t in enumerate(tasks)}
    return {h: fit_head_temperature(tasks[index[h]]["problem_type"], logits[index[h]], labels[index[h]]) for h in heads}


def save_fusion_temperatures(candidate, saved: dict, fits: dict) -> str | None:
    """Write each head's fitted T into the checkpoint's config.json `calibration_temperature` (times the one it
    already divides by, `saved`: the scored logits were divided by it, so the new fit composes); each fit gets
    `saved_to`."""
    composed = {head: saved.get(head, 1.0) * fit["temperature"] for head, fit in fits.items()}
    path = write_config_key(candidate, "calibration_temperature", {**saved, **composed})
    for fit in fits.values():
        fit["saved_to"] = path
    return path


def reliability_plots(output_dir: str, models: dict, tasks: list[dict]) -> list[str]:
    """The test set's reliability diagram of every calibrated head (report.reliability_plot); paths relative to
    `output_dir`."""
    paths = []
    problem = {t["name"]: t["problem_type"] for t in tasks}
    for name, entry in models.items():
        calibration = entry["sets"]["test"]["calibration"]
        by_head = {tasks[0]["name"]: calibration} if len(tasks) == 1 else calibration
        for head, values in by_head.items():
            if values is None:
                continue
            label = name if len(tasks) == 1 else f"{name}_{head}"
            pooled = problem[head] == "multi_label_classification"  # its diagram pools the labels, its ECE is a mean
            paths.append(reliability_plot(output_dir, label, values, "test, labels pooled" if pooled else "test"))
    return [os.path.relpath(p, output_dir) for p in paths]


def evaluate_fusion(candidates, args, data_args, ood_sources: dict, failed: dict, device, command: str,
                    severities=(), state=None) -> dict | None:  # fmt: skip
    """evaluation.json for fusion checkpoints (all `candidates` are fusion ones) and the .md table; returns it.

    `state`: `inference_processes`' group under `accelerate launch` (call on every process): each scoring pass is
    split across the processes and gathered (`head_outputs`); the calibration, temperature fits and outputs are the
    main process's, which returns the dict (the others return None)."""
    if not data_args.test_file:
        raise UserError("fusion checkpoints are evaluated on --test_file (CSV/JSONL with the run's columns)")
    first = candidates[0]
    columns, problem_types = run_columns(first)
    for candidate in candidates[1:]:
        if run_columns(candidate) != (columns, problem_types):
            raise UserError(
                f"--model {candidate.name} was trained on other columns/problem type than --model {first.name} "
                f"({run_columns(candidate)} vs {(columns, problem_types)}); evaluate them in separate runs"
            )
    problem_type = problem_types[0] if len(problem_types) == 1 else problem_types
    modalities = columns.modalities
    corruptions = select_fusion_corruptions(args.corruptions, modalities) if args.corruptions else []
    ranking_ks = (first.run_config.get("ranking_ks") or [1, 5, 10]) if problem_type == "ranking" else None
    if args.calibration_data and not any(p in CALIBRATED for p in problem_types):
        raise UserError(f"--calibration_data: the fusion model's heads are {problem_types}; temperature scaling "
                        "calibrates classification heads (a regression head predicts values, a ranking head's order "
                        "within a group does not change with a temperature)")  # fmt: skip
    rank, world_size = process_rank(state)
    is_main = rank == 0
    passes = dict(batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers,
                  device=device, progress=is_main and not args.disable_tqdm, world_size=world_size)  # fmt: skip
    run = dict(passes, ranking_ks=ranking_ks)

    def read(path, task, sampling_rate):  # the main process reads and checks first, the others reuse its cache
        with main_process_first(state):
            return read_set(path, columns, problem_type, task, args.cache_dir, data_args, sampling_rate)

    results, sets_info, to_save = {}, {}, []
    kept = {}  # the main process's head_outputs per set and model: the paired tests compare them row by row
    for candidate in candidates:
        reset_peak_memory(device)
        try:
            model, processor = load_fusion(candidate.path, device)
        except Exception as error:  # noqa: BLE001 (reported; the others are still evaluated)
            failed[candidate.name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            continue
        tasks = list(model.config.tasks)
        task = tasks[0] if len(tasks) == 1 else tasks  # one head's metrics as they are; several prefixed
        headline = headline_key(tasks, ranking_ks)
        # The model's own modality order (a video run's sound track is a modality without a column of its own).
        modalities = list(model.config.modalities)
        sampling_rate = getattr(processor.feature_extractor, "sampling_rate", None)
        transform = processor.transform(train=False)
        entry = {"path": candidate.path, "kind": "mm-hf-fusion", "problem_type": problem_type, "sets": {}}
        heads = calibrated_heads(tasks, ranking=ranking_ks is not None)
        fits = {}
        if args.calibration_data:
            calibration_set, _ = read(args.calibration_data, task, sampling_rate)
            calibration_outputs = head_outputs(model, calibration_set, transform, tasks,
                                               description=f"{candidate.name} | calibration", **passes)  # fmt: skip
            if is_main:
                fits = fit_temperatures(tasks, heads, calibration_outputs)
                entry["temperature_scaling"] = per_head(tasks, fits)
                if args.save_temperature:  # written once every model is scored, as for classifiers
                    to_save.append((candidate, dict(model.config.calibration_temperature or {}), fits))
        temperatures = {head: fit["temperature"] for head, fit in fits.items()}
        for set_name, path in {"test": data_args.test_file, **ood_sources}.items():
            dataset, skipped = read(path, task, sampling_rate)
            sets_info[set_name] = {"source": path, "samples": len(dataset), "skipped_bad_samples": len(skipped)}
            outputs = head_outputs(model, dataset, transform, tasks, description=f"{candidate.name} | {set_name}",
                                   **passes)  # fmt: skip
            missing = sweep = None
            if len(modalities) > 1:  # each modality missing in every sample (the placeholder stands in)
                missing = {
                    modality: task_scores(model, dataset, WithoutModality(transform, index), task,
                                          description=f"{candidate.name} | {set_name} without {modality}", **run)
                    for index, modality in enumerate(modalities)
                }  # fmt: skip
            if set_name == "test" and corruptions:
                sweep = fusion_corruption_sweep(
                    model, dataset, transform, task, corruptions, severities, seed=args.seed,
                    sampling_rate=sampling_rate, name=candidate.name, **run,
                )  # fmt: skip
            if not is_main:  # every process took part in the passes; the numbers are the main process's to report
                continue
            scored = {"samples": len(dataset), "metrics": outputs_metrics(task, outputs, ranking_ks),
                      "confidence_intervals": head_confidence_intervals(tasks, outputs, ranking_ks,
                                                                        args.num_resamples, args.seed)}  # fmt: skip
            kept.setdefault(set_name, {})[candidate.name] = outputs
            if set_name == "test":
                test_set = dataset
            scored.update(set_calibration(tasks, heads, outputs, temperatures))
            if missing is not None:
                clean = scored["metrics"].get(headline)
                scored["missing_modality"] = missing
                scored["missing_modality_relative"] = {
                    modality: (metrics.get(headline) / clean if clean else None)
                    for modality, metrics in missing.items()
                }
            entry["sets"][set_name] = scored
            if sweep is not None:
                entry["corruptions"] = {c: {s: m.get(headline) for s, m in per.items()} for c, per in sweep.items()}
                entry["corruption_metrics"] = sweep
                lower_is_better = tasks[0]["problem_type"] == "regression"
                entry["robustness"] = sweep_summary(scored["metrics"], sweep, headline, lower_is_better)
        entry["cost"] = model_cost(candidate, model)
        if args.latency_runs > 0 and is_main:  # timed once, by the main process, on real test batches
            entry["cost"]["latency"] = measure_latency(model, test_set, transform, device, runs=args.latency_runs,
                                                       not_inputs=("labels", RANKING_GROUP_KEY))  # fmt: skip
        entry["cost"].update(peak_memory(device))
        results[candidate.name] = entry
        del model
    if not results:
        raise UserError("no model could be evaluated: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
    if not is_main:  # the files (checkpoint configs, evaluation.json/.md, plots) are the main process's
        return None
    for candidate, saved, fits in to_save:
        save_fusion_temperatures(candidate, saved, fits)
    paired = {
        set_name: {f"{a} vs {b}": head_paired_tests(tasks, by_model[a], by_model[b], ranking_ks, args.num_resamples,
                                                    args.seed) for a, b in itertools.combinations(results, 2)}
        for set_name, by_model in kept.items()
    }  # fmt: skip
    evaluation = evaluation_record(
        command=command, modality="fusion", device=device, processes=world_size, sets=sets_info,
        corruptions=corruptions, severities=severities, seed=args.seed, models=results, failed=failed,
        modalities=modalities, problem_type=problem_type, headline=headline, ranking_ks=ranking_ks, paired_tests=paired,
        label_names=task["labels"] if len(tasks) == 1 else {t["name"]: t["labels"] for t in tasks},
    )  # fmt: skip
    evaluation["plots"] = reliability_plots(args.output_dir, results, tasks)
    if args.update_card:  # a fusion checkpoint is always a local mm-hf folder (it needs its run_config.yaml)
        for name, entry in results.items():
            entry["card"] = update_card(entry["path"], eval_results(evaluation, name))
    markdown = _markdown(evaluation) + _calibration_markdown(evaluation) + _comparison_markdown(evaluation)
    path = write_evaluation(args.output_dir, evaluation, markdown)
    print(f"Evaluated {', '.join(results)} on {', '.join(sets_info)}: {path}")
    return evaluation


def _markdown(evaluation: dict) -> str:
    headline = evaluation["headline"]
    modalities = evaluation["modalities"] if len(evaluation["modalities"]) > 1 else []
    header = ["model", "set", f"{headline} [95 % CI]", *(f"{headline} without {m}" for m in modalities)]
    lines = [f"# Fusion evaluation ({evaluation['problem_type']})\n", "| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]  # fmt: skip
    for name, entry in evaluation["models"].items():
        for set_name, scored in entry["sets"].items():
            row = [name, set_name, with_ci(scored["metrics"], scored["confidence_intervals"], headline)]
            row += [scored["missing_modality"][m].get(headline) for m in modalities]
            lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    sweep = evaluation.get("corruptions")
    if sweep:
        columns = [f"{c}@{s}" for c in sweep["names"] for s in sweep["severities"]]
        lines += [f"\n## Corruptions of the test set ({headline})\n", "| " + " | ".join(["model", "clean", *columns,
                  "mean", "relative"]) + " |", "|" + " --- |" * (len(columns) + 4)]  # fmt: skip
        for name, entry in evaluation["models"].items():
            robustness = entry.get("robustness") or {}
            row = [name, entry["sets"]["test"]["metrics"].get(headline),
                   *(entry["corruptions"][c][str(s)] for c in sweep["names"] for s in sweep["severities"]),
                   robustness.get("mean_corruption_accuracy"), robustness.get("relative_accuracy")]  # fmt: skip
            lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    if evaluation["failed"]:
        lines.append("\nNot evaluated: " + "; ".join(f"{n} ({why})" for n, why in evaluation["failed"].items()))
    return "\n".join(lines) + "\n"


def _calibration_markdown(evaluation: dict) -> str:
    """evaluation.md's calibration tables: ECE / NLL / Brier per model, set (and head), the temperature scaling."""
    heads = evaluation["label_names"] if isinstance(evaluation["label_names"], dict) else None
    rows, scaled = [], []
    for name, entry in evaluation["models"].items():
        for set_name, scored in entry["sets"].items():
            by_head = scored["calibration"] if heads else {None: scored["calibration"]}
            rows += [[name, set_name, *([head] if heads else []), values] for head, values in by_head.items() if values]
        fits = entry.get("temperature_scaling") or {}
        by_head = fits if heads else {None: fits}
        test = entry["sets"]["test"]
        for head, fit in by_head.items():
            if not fit:
                continue
            before = test["calibration"][head] if heads else test["calibration"]
            after = test["calibration_temperature_scaled"][head] if heads else test["calibration_temperature_scaled"]
            scaled.append([name if head is None else f"{name} / {head}", fit["temperature"], before["ece"],
                           after["ece"]])  # fmt: skip
    if not rows:
        return "\nCalibration: not measured (no classification head: a regression head predicts values, a ranking " \
               "head is scored by its order within each group).\n"  # fmt: skip
    multi_label = "multi_label_classification" in str(evaluation["problem_type"])
    out = "\n## Calibration (ECE with 15 bins)\n\n" + calibration_table(
        rows, ("model", "set", *(["head"] if heads else []))
    )
    if multi_label:
        out += "\nA multi-label head's numbers are means over its labels, each a binary (sigmoid) problem.\n"
    if scaled:
        out += temperature_section(scaled, "model" if not heads else "model / head")
    return out


def _comparison_markdown(evaluation: dict) -> str:
    """evaluation.md's error bars of every bootstrapped metric, the paired tests per set, and the cost table."""
    out = ["\n## Bootstrap confidence intervals (95 %)\n\n"]
    rows = []
    for name, entry in evaluation["models"].items():
        for set_name, scored in entry["sets"].items():
            intervals = scored["confidence_intervals"]
            rows += [[name, set_name, metric, with_ci(scored["metrics"], intervals, metric), ci["resampled"],
                      ci["units"]] for metric, ci in intervals.items()]  # fmt: skip
    out.append(markdown_table(["model", "set", "metric", "estimate [95 % CI]", "resampled", "units"], rows))
    for set_name, pairs in (evaluation.get("paired_tests") or {}).items():
        if pairs:
            out.append(f"\nPaired tests on {set_name} (B − A; McNemar two-sided, paired bootstrap one-sided "
                       "\"B beats A\", lower is better for rmse):\n\n" + markdown_table(*_paired_rows(pairs)))  # fmt: skip
    out.append("\n## Cost\n\n" + cost_table(evaluation["models"]))
    return "".join(out)


def _paired_rows(pairs: dict) -> tuple[list[str], list[list]]:
    rows = []
    for pair, tests in pairs.items():
        for key, test in tests.items():
            if key.startswith("mcnemar"):
                rows.append([pair, key, f"{test['a_only']} A only / {test['b_only']} B only", "", test["p_value"]])
            else:
                difference = test["difference"]
                rows.append([pair, key.removeprefix("paired_bootstrap_"), difference["estimate"],
                             f"[{difference['low']:.3f}, {difference['high']:.3f}]", test["p_value"]])  # fmt: skip
    return ["A vs B", "test (metric)", "Δ (B − A) / discordant", "95 % CI", "p"], rows
