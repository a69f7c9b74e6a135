"""The fusion evaluation's files besides evaluation.json: evaluation.md (the headline per model and set with each
modality missing, the corruption table, calibration, bootstrap intervals, paired tests, cost) and the test set's
reliability diagrams."""

from __future__ import annotations

import os

from ..report import calibration_table, cost_table, markdown_table, reliability_plot, temperature_section, with_ci


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


def fusion_markdown(evaluation: dict) -> str:
    """evaluation.md of a fusion evaluation: the results, calibration and comparison sections."""
    return _markdown(evaluation) + _calibration_markdown(evaluation) + _comparison_markdown(evaluation)


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
