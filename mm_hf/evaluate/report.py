"""Writing an evaluation: evaluation.json, evaluation.md (side-by-side tables), predictions and plots.

Plots use matplotlib's object API with the Agg canvas (as mm_hf/reports.py), so no display or backend change.
"""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np

from ..atomic_files import write_text_atomic
from ..metrics.calibration import plot_reliability_diagram
from ..metrics.robustness import line_accuracy

SCHEMA_VERSION = 1  # of evaluation.json: bumped when a key changes meaning


def evaluation_record(
    *, command: str, modality: str, device, processes: int, sets: dict, corruptions, severities, seed: int,
    models: dict, failed: dict, **specific,
) -> dict:  # fmt: skip
    """evaluation.json's record, the same keys for every mode of `python -m mm_hf.evaluate` (classifiers, fusion,
    retrieval) in one order; `specific` holds the mode's own keys (label names, paired tests...), placed after
    `modality`. `corruptions` is None when no sweep ran."""
    sweep = {"names": corruptions, "severities": list(severities), "seed": seed} if corruptions else None
    return {
        "schema_version": SCHEMA_VERSION, "command": command, "modality": modality, **specific,
        "device": str(device), "processes": processes, "sets": sets, "corruptions": sweep, "models": models,
        "failed": failed,
    }  # fmt: skip


def write_outputs(output_dir: str, evaluation: dict, predictions: dict) -> None:
    """evaluation.json, evaluation.md, predictions/<set>.csv and plots/*.png under `output_dir`."""
    os.makedirs(os.path.join(output_dir, "plots"), exist_ok=True)
    plots = write_plots(output_dir, evaluation)
    evaluation["plots"] = plots
    write_predictions(output_dir, evaluation["label_names"], predictions)
    write_evaluation(output_dir, evaluation, format_markdown(evaluation))


def write_evaluation(output_dir: str, evaluation: dict, markdown: str) -> str:
    """`evaluation.json` and `evaluation.md` in `output_dir`, each written whole or not at all (a killed run never
    leaves half a file); returns the path of the .md."""
    os.makedirs(output_dir, exist_ok=True)
    write_text_atomic(os.path.join(output_dir, "evaluation.json"), json.dumps(evaluation, indent=2))
    path = os.path.join(output_dir, "evaluation.md")
    write_text_atomic(path, markdown)
    return path


def write_predictions(output_dir: str, label_names: list[str], predictions: dict) -> None:
    """predictions/<set>.csv: one row per sample in evaluation order: index, label, each model's predicted label."""
    folder = os.path.join(output_dir, "predictions")
    os.makedirs(folder, exist_ok=True)
    for set_name, columns in predictions.items():
        names = [name for name in columns if name != "labels"]
        with open(os.path.join(folder, f"{_slug(set_name)}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "label", *names])
            for i, label in enumerate(columns["labels"]):
                writer.writerow([i, label_names[label], *(label_names[columns[name][i]] for name in names)])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table, the first column left-aligned and the others right-aligned (floats with 4 decimals)."""
    cells = [[str(c) for c in header], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            + " |"
        )

    rule = ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]
    return "\n".join([line(cells[0]), "| " + " | ".join(rule) + " |", *map(line, cells[1:])]) + "\n"


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def with_ci(metrics: dict, intervals: dict, name: str) -> str:
    """`metrics[name]` with its bootstrap interval, "0.8123 [0.791, 0.834]" ("–" when it was not measured)."""
    if name not in metrics:
        return "–"
    ci = intervals.get(name)
    return f"{metrics[name]:.4f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else f"{metrics[name]:.4f}"


def format_markdown(evaluation: dict) -> str:
    """The side-by-side tables of evaluation.md."""
    models = evaluation["models"]
    out = ["# Evaluation\n\n", f"`{evaluation['command']}`\n\n"]
    sets = evaluation["sets"]
    out.append(markdown_table(["set", "source", "samples", "skipped"],
                      [[n, s["source"], s["samples"], s["skipped_bad_samples"]] for n, s in sets.items()]))  # fmt: skip
    top_k = next((k for k in next(iter(models.values()))["sets"]["test"]["metrics"] if k.startswith("top")), None)
    for set_name in sets:
        out.append(f"\n## {set_name}: accuracy, F1 (95 % bootstrap CI) and calibration\n\n")
        header = ["model", "accuracy", *([top_k] if top_k else []), "macro F1", "weighted F1", "ECE", "NLL", "Brier"]
        rows = []
        for name, entry in models.items():
            scores = entry["sets"][set_name]
            m, ci, cal = scores["metrics"], scores["confidence_intervals"], scores["calibration"]
            rows.append([name, with_ci(m, ci, "accuracy"), *([with_ci(m, ci, top_k)] if top_k else []),
                         with_ci(m, ci, "macro_f1"), with_ci(m, ci, "weighted_f1"), cal["ece"], cal["nll"],
                         cal["brier"]])  # fmt: skip
        out.append(markdown_table(header, rows))
        if set_name != "test":
            line = (evaluation.get("effective_robustness_lines") or {}).get(set_name)
            header = ["model", "accuracy − test", "relative to test"]
            if line:
                header += ["baseline line predicts", "effective robustness"]
            rows = []
            for n, e in models.items():
                scores = e["sets"][set_name]
                rows.append([n, scores["gap"]["accuracy_minus_test"], scores["gap"]["relative_to_test"]])
                if line:
                    rows[-1] += [scores["effective_robustness"]["expected_accuracy"],
                                 scores["effective_robustness"]["value"]]  # fmt: skip
            out.append("\n" + markdown_table(header, rows))
            if line:
                fit = "least squares" if line["fit"] == "least_squares" else "slope 1 through its point"
                out.append(f"\nEffective robustness: OOD accuracy minus the baseline line's at the same test accuracy; "
                           f"line logit(OOD) = {line['slope']:.3f} · logit(test) + {line['intercept']:.3f} over "
                           f"{', '.join(line['models'])} ({fit}).\n")  # fmt: skip
        pairs = evaluation["paired_tests"].get(set_name) or {}
        if pairs:
            out.append(f"\nPaired tests on {set_name} (B − A; p-values of McNemar, two-sided, and of the paired "
                       "bootstrap, one-sided \"B beats A\"):\n\n")  # fmt: skip
            rows = []
            for pair, tests in pairs.items():
                accuracy = tests["paired_bootstrap_accuracy"]
                rows.append([pair, accuracy["difference"]["estimate"],
                             f"[{accuracy['difference']['low']:.3f}, {accuracy['difference']['high']:.3f}]",
                             tests["mcnemar"]["p_value"], accuracy["p_value"],
                             tests["paired_bootstrap_macro_f1"]["p_value"]])  # fmt: skip
            out.append(markdown_table(["A vs B", "Δ accuracy", "95 % CI", "McNemar p", "bootstrap p (acc)",
                               "bootstrap p (macro F1)"], rows))  # fmt: skip
    scaled = {n: e for n, e in models.items() if "temperature_scaling" in e}
    if scaled:
        out.append(temperature_section([[n, e["temperature_scaling"]["temperature"],
                                         e["sets"]["test"]["calibration"]["ece"],
                                         e["sets"]["test"]["calibration_temperature_scaled"]["ece"]]
                                        for n, e in scaled.items()]))  # fmt: skip
    robust = {n: e for n, e in models.items() if "robustness" in e}
    if robust:
        out.append("\n## Corruptions (test set)\n\n")
        rows = [[n, e["sets"]["test"]["metrics"]["accuracy"], e["robustness"]["mean_corruption_accuracy"],
                 e["robustness"]["relative_accuracy"], e["robustness"]["area_under_curve"],
                 e["robustness"].get("effective_robustness")] for n, e in robust.items()]  # fmt: skip
        out.append(markdown_table(["model", "clean accuracy", "mean corruption accuracy", "relative", "area under curve",
                           "effective robustness vs zero-shot"], rows))  # fmt: skip
        first = next(iter(robust.values()))["corruptions"]
        columns = [f"{c}@{s}" for c, per in first.items() for s in per]
        rows = [[n, *(e["corruptions"][c][s] for c, per in first.items() for s in per)] for n, e in robust.items()]
        out.append("\n" + markdown_table(["model", *columns], rows))
    out.append("\n## Cost\n\n" + cost_table(models))
    if evaluation["failed"]:
        out.append("\n## Not evaluated\n\n")
        out.extend(f"- {name}: {why}\n" for name, why in evaluation["failed"].items())
    return "".join(out)


def cost_table(models: dict) -> str:
    """evaluation.md's cost table of every mode: parameters, weight size, latency per batch, throughput, peak RSS."""
    rows = []
    for name, entry in models.items():
        cost = entry["cost"]
        latency = cost.get("latency", {})
        rows.append([name, entry["kind"], entry.get("saved_as", "full"), cost["total_params"], cost["trainable_params"],
                     _megabytes(cost["disk_bytes"]),
                     *(_ms(latency.get(f"batch_{b}", {}).get(q)) for b in (1, 32) for q in ("p50_s", "p95_s")),
                     _rate(latency.get("batch_32", {}).get("throughput_per_s")),
                     _megabytes(cost["peak_rss_bytes"])])  # fmt: skip
    return markdown_table(["model", "kind", "saved as", "params", "trainable", "disk MB", "bs1 p50 ms", "bs1 p95 ms",
                           "bs32 p50 ms", "bs32 p95 ms", "samples/s (bs32)", "peak RSS MB"], rows)  # fmt: skip


def temperature_section(rows: list[list], model_header: str = "model") -> str:
    """evaluation.md's temperature-scaling section: rows `[model (or "model / head"), T, test ECE before, after]`."""
    return "\n## Temperature scaling (fitted on --calibration_data)\n\n" + markdown_table(
        [model_header, "temperature", "test ECE before", "test ECE after"], rows
    )


def calibration_table(rows: list[list], first: tuple[str, ...] = ("model",)) -> str:
    """A table of calibration summaries: rows `[*first, calibration dict]` -> `first` columns, ECE, NLL, Brier."""
    rows = [[*row[:-1], row[-1]["ece"], row[-1]["nll"], row[-1]["brier"]] for row in rows]
    return markdown_table([*first, "ECE", "NLL", "Brier"], rows)


def reliability_plot(output_dir: str, name: str, calibration: dict, set_name: str = "test") -> str:
    """plots/reliability_<name>.png of one `calibration` entry (its `reliability` and `ece`); the path."""
    path = os.path.join(output_dir, "plots", f"reliability_{_slug(name)}.png")
    plot_reliability_diagram(calibration["reliability"], path, title=f"{name} ({set_name})", ece=calibration["ece"])
    return path


def _megabytes(value) -> str:
    return "–" if value is None else f"{value / 1e6:.1f}"


def _rate(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _ms(value) -> str:
    return "–" if value is None else f"{1000 * value:.2f}"


def write_plots(output_dir: str, evaluation: dict) -> list[str]:
    """Reliability diagram per model (test set), accuracy vs severity per corruption, ID vs OOD accuracy (with --ood),
    per-class F1 bars."""
    from matplotlib.figure import Figure  # lazy: matplotlib is only needed for plots

    folder = os.path.join(output_dir, "plots")
    paths = []
    models = evaluation["models"]
    for name, entry in models.items():
        paths.append(reliability_plot(output_dir, name, entry["sets"]["test"]["calibration"]))
    corruptions = (evaluation.get("corruptions") or {}).get("names") or []
    for corruption in corruptions:
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        for name, entry in models.items():
            per = entry["corruptions"][corruption]
            levels = [0, *(int(s) for s in per)]
            ax.plot(levels, [entry["sets"]["test"]["metrics"]["accuracy"], *per.values()], marker="o", label=name)
        ax.set_xticks([0, *(int(s) for s in next(iter(models.values()))["corruptions"][corruption])])
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(corruption)
        ax.legend(fontsize=8)
        path = os.path.join(folder, f"corruption_{_slug(corruption)}.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        paths.append(path)
    shifted = [name for name in evaluation["sets"] if name != "test"]
    if shifted:  # ID vs OOD: points under the diagonal lose accuracy under the shift
        fig = Figure(figsize=(5, 5))
        ax = fig.subplots()
        for set_name, marker in zip(shifted, "osD^v<>ph*", strict=False):
            for i, (name, entry) in enumerate(models.items()):
                ax.scatter(entry["sets"]["test"]["metrics"]["accuracy"], entry["sets"][set_name]["metrics"]["accuracy"],
                           marker=marker, color=f"C{i}", label=f"{name} ({set_name})")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        lines = evaluation.get("effective_robustness_lines") or {}
        for set_name, line in lines.items():  # the baseline line, a curve back in accuracy space
            xs = np.linspace(0.005, 0.995, 100)
            ax.plot(xs, [line_accuracy(line, x) for x in xs], ":", linewidth=1, label=f"baseline line ({set_name})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("test accuracy (in distribution)")
        ax.set_ylabel("shifted-set accuracy")
        ax.legend(fontsize=7)
        path = os.path.join(folder, "id_vs_ood.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        paths.append(path)
    labels = evaluation["label_names"]
    fig = Figure(figsize=(max(5, 0.5 * len(labels) * max(1, len(models)) / 2), 4))
    ax = fig.subplots()
    width = 0.8 / len(models)
    for i, (name, entry) in enumerate(models.items()):
        f1 = [entry["sets"]["test"]["per_class"][label]["f1"] for label in labels]
        ax.bar(np.arange(len(labels)) + i * width - 0.4 + width / 2, f1, width=width, label=name)
    ax.set_xticks(np.arange(len(labels)))
    ax.set_xticklabels(labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center")
    ax.set_ylabel("F1 (test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    path = os.path.join(folder, "per_class_f1.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    paths.append(path)
    return [os.path.relpath(p, output_dir) for p in paths]
