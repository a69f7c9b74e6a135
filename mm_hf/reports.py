"""Evaluation outputs written next to a checkpoint: classification report, confusion matrix, curves, tables.

`report` arguments are the dicts produced by the `classification_report` evaluate module
(e.g. `ClassificationMetrics.last_report`). Plots use matplotlib's object API with the Agg canvas,
so nothing here changes the global pyplot backend or needs a display.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic_files import atomic_path, write_text_atomic

if TYPE_CHECKING:
    from .models.fusion import Task

_TABLE_HEADERS = ("precision", "recall", "f1-score", "support")
# Annotating every cell stops being readable past this many classes; colours still are.
_MAX_ANNOTATED_CLASSES = 25
# Trainer bookkeeping that shares the `eval_` prefix but is not a metric worth plotting.
_NOT_METRICS = (
    "loss",
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "model_preparation_time",
    "epoch",
)


def write_classification_report(report: dict, output_dir, prefix: str = "", digits: int = 4) -> str:
    """Write `{prefix}classification_report.json` and an sklearn-style `.txt` table; return the table."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / f"{prefix}classification_report.json", json.dumps(report, indent=2) + "\n")
    text = format_classification_report(report, digits=digits)
    write_text_atomic(output_dir / f"{prefix}classification_report.txt", text)
    return text


def format_classification_report(report: dict, digits: int = 4) -> str:
    """The report as the aligned text table of `sklearn.metrics.classification_report`."""
    top_k = {
        key.replace("_", " "): report[key] for key in report if key.startswith("top") and key.endswith("_accuracy")
    }
    averages = {
        "macro avg": report["macro_avg"],
        "weighted avg": report["weighted_avg"],
    }
    width = max(len(name) for name in [*report["per_class"], *top_k, *averages])
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    # Accuracy-like rows fill only the f1 column, as sklearn's "accuracy" row does.
    single = "{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n"
    total = report["macro_avg"]["support"]
    text = ("{:>{width}s} " + " {:>9}" * 4).format("", *_TABLE_HEADERS, width=width) + "\n\n"
    for name, scores in report["per_class"].items():
        text += row.format(name, *_scores(scores), width=width, digits=digits)
    text += "\n"
    for name, value in {"accuracy": report["accuracy"], **top_k}.items():
        text += single.format(name, "", "", value, total, width=width, digits=digits)
    for name, scores in averages.items():
        text += row.format(name, *_scores(scores), width=width, digits=digits)
    return text


def _scores(scores: dict) -> tuple:
    return scores["precision"], scores["recall"], scores["f1"], scores["support"]


def write_confusion_matrix(report: dict, output_dir, prefix: str = "") -> Path:
    """Write `{prefix}confusion_matrix.json` (labels + matrix) and `.png`; return the PNG path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    labels, matrix = list(report["per_class"]), report["confusion_matrix"]
    payload = {
        "labels": labels,
        "matrix": matrix,
        "rows": "true",
        "columns": "predicted",
    }
    write_text_atomic(output_dir / f"{prefix}confusion_matrix.json", json.dumps(payload, indent=2) + "\n")
    png = output_dir / f"{prefix}confusion_matrix.png"
    with atomic_path(png) as tmp:  # a run killed mid-write leaves no torn image
        _plot_confusion_matrix(np.asarray(matrix), labels).savefig(tmp, dpi=120, bbox_inches="tight")
    return png


def _plot_confusion_matrix(matrix: np.ndarray, labels: list[str]):
    from matplotlib.figure import Figure  # lazy: matplotlib is only needed for plots

    n = len(labels)
    # Row-normalised colours, so a rare class's mistakes are as visible as a frequent one's.
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    side = min(max(5.0, 0.35 * n + 2.5), 22.0)
    fontsize = 9 if n <= 10 else 8 if n <= 25 else 7
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(
        range(n),
        labels,
        rotation=90 if n > 8 else 45,
        ha="center" if n > 8 else "right",
        fontsize=fontsize,
    )
    ax.set_yticks(range(n), labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (counts, colour = row share)")
    if n <= _MAX_ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color=color,
                fontsize=fontsize,
            )
    return fig


def plot_training_curves(log_history: list[dict], path) -> Path:
    """Plot train/eval loss and every `eval_*` metric versus step from `trainer.state.log_history`."""
    from matplotlib.figure import Figure

    train = [(log["step"], log["loss"]) for log in log_history if "loss" in log and "step" in log]
    evals = [log for log in log_history if "step" in log and any(key.startswith("eval_") for key in log)]
    metrics = sorted({key for log in evals for key in log if _is_eval_metric(key, log[key])})
    fig = Figure(figsize=(12 if metrics else 6.5, 4.5))
    loss_ax = fig.add_subplot(1, 2 if metrics else 1, 1)
    _plot_series(loss_ax, train, "train loss")
    _plot_series(
        loss_ax,
        [(log["step"], log["eval_loss"]) for log in evals if "eval_loss" in log],
        "eval loss",
    )
    _style(loss_ax, "loss")
    if metrics:
        metric_ax = fig.add_subplot(1, 2, 2)
        for key in metrics:
            points = [(log["step"], log[key]) for log in evals if key in log]
            _plot_series(metric_ax, points, key.removeprefix("eval_"))
        _style(metric_ax, "eval metrics")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def _is_eval_metric(key: str, value) -> bool:
    if not key.startswith("eval_") or key.removeprefix("eval_") in _NOT_METRICS:
        return False
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plot_series(ax, points: list[tuple], label: str) -> None:
    if points:
        steps, values = zip(*points, strict=True)
        # Markers keep a single evaluation (one point) visible.
        ax.plot(
            steps,
            values,
            marker="o" if len(points) < 30 else None,
            markersize=3,
            label=label,
        )


def _style(ax, title: str) -> None:
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=ax.transAxes)


# The rows of the classification recipes' before/after table (metrics missing from both columns are left out).
CLASSIFICATION_TABLE_METRICS = ("accuracy", "top5_accuracy", "macro_f1", "weighted_f1")


def format_before_after_table(
    before: dict,
    after: dict,
    metrics=CLASSIFICATION_TABLE_METRICS,
    before_label: str = "zero-shot",
) -> str:
    """Markdown table metric | before (`before_label`) | after (fine-tuned) | change.

    Keys are looked up as given, then with the Trainer's `eval_` / `test_` prefixes, so the dicts
    returned by `trainer.evaluate()` can be passed as they are. Metrics missing from both are skipped.
    """
    header = ("metric", f"before ({before_label})", "after (fine-tuned)", "change")
    rows = []
    for name in metrics:
        old, new = _lookup(before, name), _lookup(after, name)
        if old is None and new is None:
            continue
        change = f"{new - old:+.4f}" if old is not None and new is not None else "–"
        rows.append((name, _number(old), _number(new), change))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    # First column left-aligned, numbers right-aligned.
    rule = ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]
    return "\n".join(_markdown_row(cells, widths) for cells in [header, rule, *rows]) + "\n"


def _lookup(metrics: dict, name: str):
    for key in (name, f"eval_{name}", f"test_{name}"):
        if metrics.get(key) is not None:
            return float(metrics[key])
    return None


def _number(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def _markdown_row(cells, widths) -> str:
    # Padded cells keep the Markdown readable when printed to the console as well.
    aligned = (
        cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "| " + " | ".join(aligned) + " |"


def write_task_report(report: dict, tasks: list[Task], output_dir, prefix: str = "") -> str:
    """Fusion heads: `{prefix}task_report.json` (every metric of every head) and a readable
    `{prefix}classification_report.txt` (per class / label precision, recall, F1, then the averages); returns the text."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / f"{prefix}task_report.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    text = format_task_report(report, tasks)
    write_text_atomic(output_dir / f"{prefix}classification_report.txt", text)
    return text


def format_task_report(report: dict, tasks: list[Task], digits: int = 4) -> str:
    """One block per head: a precision/recall/F1 table over its classes or labels (classification heads), then
    its summary metrics one per line."""
    blocks = []
    for task in tasks:
        scores = report.get(task.name, {})
        lines = [f"{task.name} ({task.problem_type})", ""]
        per_label = task.problem_type in ("single_label_classification", "multi_label_classification")
        names = [n for n in task.labels if f"{n}_f1" in scores] if per_label else []
        if names:
            width = max(len(n) for n in names + ["label"])
            lines.append(f"{'':>{width}s}  {'precision':>9} {'recall':>9} {'f1-score':>9}")
            for name in names:
                values = (scores[f"{name}_{k}"] for k in ("precision", "recall", "f1"))
                lines.append(f"{name:>{width}s}  " + " ".join(f"{v:>9.{digits}f}" for v in values))
            lines.append("")
        prefixes = tuple(f"{n}_" for n in task.labels)
        for key in sorted(k for k in scores if not (per_label and k.startswith(prefixes))):
            lines.append(f"{key:>24s}  {scores[key]:.{digits}f}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plot_wise_ft_curve(results: dict, path, metric: str = "accuracy"):
    """The ID–OOD plot of the α curve (validation accuracy across, each OOD set's up, points labelled by α, the
    chosen one ringed); without OOD sets, validation accuracy against α. Returns the path, or None without a curve."""
    curve = results.get("wise_ft_curve") or []
    if not curve:
        return None
    from matplotlib.figure import Figure  # lazy: matplotlib is only needed for plots

    chosen = results.get("wise_ft_alpha")
    sets = [name for name in curve[0] if name not in ("alpha", "validation")]
    alphas = [p["alpha"] for p in curve]
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    if "validation" in curve[0] and sets:
        xs = [p["validation"].get(metric) for p in curve]
        for name in sets:
            ys = [p[name].get(metric) for p in curve]
            ax.plot(xs, ys, marker="o", label=name)
            for a, x, y in zip(alphas, xs, ys, strict=True):
                ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
                if a == chosen:
                    ax.scatter([x], [y], s=160, facecolors="none", edgecolors="black")
        ax.set_xlabel(f"ID (validation) {metric}")
        ax.set_ylabel(f"OOD {metric}")
    else:
        for name in [n for n in curve[0] if n != "alpha"]:
            ax.plot(alphas, [p[name].get(metric) for p in curve], marker="o", label=name)
        if chosen is not None:
            ax.axvline(chosen, color="black", linestyle=":", label=f"chosen α = {chosen:g}")
        ax.set_xlabel("α (0 = start, 1 = fine-tuned)")
        ax.set_ylabel(metric)
    ax.set_title("WiSE-FT: weight interpolation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
