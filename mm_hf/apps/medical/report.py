"""The report a clinician reads from a trained multi-label fusion run: per-finding ROC-AUC and average precision on
the test set, with all inputs, with each modality removed, and with each modality alone.

A removed modality is marked missing in every sample and the model's learned placeholder stands in for it, the
recipe's own `test_without_<modality>_*` evaluation (`mm_hf.measures.WithoutModality`); "alone" removes all the
others. The model and its saved processor are loaded and scored as `python -m mm_hf.evaluate` scores fusion
checkpoints (`mm_hf.evaluate.fusion`), so the "all inputs" row equals the recipe's `test_*` numbers. Each study
goes through each encoder once (`mm_hf.fusion_features`, as the recipe caches frozen encoders): the seven
conditions then differ only in the modality mask, and cost little more than one evaluation.

    python -m mm_hf.apps.medical report demo_out/medical_run --test_file demo_out/medical/data/test.jsonl
"""

import json
import os
from types import SimpleNamespace

import numpy as np
import yaml

from ...args import DataArguments
from ...errors import UserError
from ...evaluate.fusion.scoring import task_scores
from ...evaluate.fusion.sets import load_fusion, read_set, run_columns
from ...fusion_features import ENCODER_KEY_OF, CachedInputs, cache_encoder_outputs
from ...measures import WithoutModality

# How a clinician names the fusion model's modalities.
MODALITY_NAMES = {"image": "radiograph", "text": "report", "tabular": "labs", "audio": "audio"}
REPORT_FILES = ("clinical_report.json", "clinical_report.md")


def input_conditions(transform, modalities: list[str]) -> dict:
    """Condition name -> eval transform: all inputs, without each modality, and (3+ modalities) each one alone."""
    names = [MODALITY_NAMES.get(m, m) for m in modalities]
    conditions = {" + ".join(names): transform}
    for index, name in enumerate(names):
        conditions[f"without {name}"] = WithoutModality(transform, index)
    if len(modalities) > 2:  # with two, "x alone" is "without y"
        for keep, name in enumerate(names):
            alone = transform
            for index in range(len(modalities)):
                alone = alone if index == keep else WithoutModality(alone, index)
            conditions[f"{name} alone"] = alone
    return conditions


def clinical_report(run_dir: str, test_file: str, *, batch_size: int = 64, device: str = "cpu") -> dict:
    """Score the run's checkpoint on `test_file` under every input condition; writes clinical_report.{json,md}
    into `run_dir` and returns the JSON: findings, prevalence, and per condition `roc_auc`, `average_precision`
    (finding -> value, plus "macro")."""
    config_path = os.path.join(run_dir, "run_config.yaml")
    if not os.path.isfile(config_path):
        raise UserError(f"{run_dir}: no run_config.yaml; pass the output folder of recipes/fusion_imagetext_cls.py")
    with open(config_path) as f:
        run = SimpleNamespace(name=os.path.basename(run_dir), path=run_dir, run_config=yaml.safe_load(f))
    columns, problem_types = run_columns(run)
    if problem_types != ["multi_label_classification"]:
        raise UserError(f"{run_dir}: a {problem_types} run; the clinical report is for one multi-label head")
    problem_type = problem_types[0]
    model, processor = load_fusion(run_dir, device)
    (task,) = model.config.tasks
    data = DataArguments(test_file=test_file)
    dataset, _ = read_set(test_file, columns, problem_type, task, None, data, None)
    findings = task["labels"]
    labels = np.asarray(dataset["labels"])
    report = {
        "run": run_dir,
        "test_file": test_file,
        "studies": len(dataset),
        "findings": findings,
        "prevalence": dict(zip(findings, labels.mean(axis=0).round(4).tolist(), strict=True)),
        "conditions": {},
    }
    modalities, transform = columns.modalities, processor.transform(train=False)
    encoded = [m for m in modalities if m in ENCODER_KEY_OF]
    dataset = cache_encoder_outputs(model, dataset, transform, encoded, batch_size, device)
    for name, condition in input_conditions(CachedInputs(transform, modalities, encoded), modalities).items():
        scores = task_scores(model, dataset, condition, task, batch_size=batch_size, num_workers=0, device=device,
                             description=name, progress=False)  # fmt: skip
        report["conditions"][name] = {
            metric: {**{f: scores.get(f"{f}_{metric}") for f in findings}, "macro": scores.get(macro)}
            for metric, macro in (("roc_auc", "macro_roc_auc"), ("average_precision", "mAP"))
        }
    with open(os.path.join(run_dir, REPORT_FILES[0]), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(run_dir, REPORT_FILES[1]), "w") as f:
        f.write(report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    """Two tables (ROC-AUC, average precision): a row per input condition, a column per finding and the macro mean."""
    findings = report["findings"]
    lines = [f"Findings on {report['studies']} test studies ({report['test_file']})\n"]
    for metric, title, chance in (("roc_auc", "ROC-AUC", "chance: 0.5"), ("average_precision", "Average precision",
                                                                          "chance: the prevalence")):  # fmt: skip
        header = ["inputs", *findings, "macro"]
        lines += [f"{title} ({chance})\n", "| " + " | ".join(header) + " |",
                  "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]  # fmt: skip
        if metric == "average_precision":
            prevalence = [report["prevalence"][f] for f in findings]
            lines.append(
                "| "
                + " | ".join(["prevalence", *(f"{p:.3f}" for p in prevalence), f"{np.mean(prevalence):.3f}"])
                + " |"
            )
        for name, scores in report["conditions"].items():
            cells = [scores[metric][key] for key in (*findings, "macro")]
            lines.append("| " + " | ".join([name, *("–" if v is None else f"{v:.3f}" for v in cells)]) + " |")
        lines.append("")
    return "\n".join(lines)


def fusion_margin(report: dict, metric: str = "roc_auc") -> dict:
    """Macro `metric` with all inputs minus each other condition's (how much fusion gains over it)."""
    (everything, *others) = report["conditions"]
    full = report["conditions"][everything][metric]["macro"]
    return {name: round(full - report["conditions"][name][metric]["macro"], 4) for name in others}
