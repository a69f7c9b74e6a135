"""Summaries of a corruption sweep: mean corruption accuracy, accuracy relative to clean, MultiBench's robustness.

Input: the clean accuracy and, per corruption, the accuracies at severities 1..5 (any score where higher is better).

- `mean_corruption_accuracy`: the mean over every (corruption, severity), each corruption weighing the same
  (ImageNet-C's averaging, on accuracy rather than error; mCE would need a reference model's errors).
- `relative_accuracy`: corrupted / clean, per corruption (mean over severities) and overall: the share of the clean
  accuracy a model keeps, so models with different clean accuracy compare.
- `area_under_curve`: MultiBench's "relative robustness" (Liang et al. 2021, `eval_scripts/robustness.py`): the
  trapezoid area under accuracy against imperfection level, clean at level 0 and the severities evenly spaced up
  to level 1, so a model that never degrades scores its clean accuracy.
- `effective_robustness` (only with `baseline`): MultiBench's effective robustness, the summed gap between this
  model's curve and the baseline's curve shifted to the same clean accuracy; > 0 means it degrades more slowly
  than the baseline (e.g. the zero-shot model) whatever their clean accuracies.

For shifted test sets (ID vs OOD rather than a corruption curve): `fit_id_ood_line` and `effective_robustness`,
Taori et al.'s effective robustness against a baseline's line in logit space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _curve(clean: float, severities: Sequence[float], name: str) -> np.ndarray:
    values = np.asarray([clean, *severities], dtype=np.float64)
    if values.ndim != 1 or len(values) < 2 or not np.isfinite(values).all():
        raise ValueError(f"{name}: expected finite accuracies for one or more severities, got {list(severities)}")
    return values


def _area(curve: np.ndarray) -> float:
    # Levels 0 (clean), 1/S, ..., 1: trapezoids of width 1/S.
    return float(((curve[:-1] + curve[1:]) / 2).sum() / (len(curve) - 1))


def robustness_summary(
    clean: float,
    accuracies: Mapping[str, Sequence[float]],
    baseline: tuple[float, Mapping[str, Sequence[float]]] | None = None,
) -> dict:
    """Per corruption and overall robustness numbers for one model (see the module docstring).

    `accuracies` maps a corruption name to its accuracies at severities 1..S in order. `baseline` is another model's
    `(clean, accuracies)` on the same corruptions, for effective robustness. Returns
    `{"mean_corruption_accuracy", "relative_accuracy", "area_under_curve", ["effective_robustness"],
    "per_corruption": {name: {"mean_accuracy", "relative_accuracy", "area_under_curve", ["effective_robustness"]}}}`.
    """
    if not accuracies:
        raise ValueError("robustness_summary needs at least one corruption's accuracies")
    if baseline is not None:
        missing = sorted(set(accuracies) - set(baseline[1]))
        if missing:
            raise ValueError(f"the baseline has no accuracies for corruptions {missing}")
    per_corruption = {}
    for name, severities in accuracies.items():
        curve = _curve(clean, severities, name)
        row = {
            "mean_accuracy": float(curve[1:].mean()),
            # A clean accuracy of 0 leaves nothing to keep: report 0 rather than divide by it.
            "relative_accuracy": float(curve[1:].mean() / clean) if clean > 0 else 0.0,
            "area_under_curve": _area(curve),
        }
        if baseline is not None:
            reference = _curve(baseline[0], baseline[1][name], f"baseline {name}")
            if len(reference) != len(curve):
                raise ValueError(f"{name}: {len(curve) - 1} severities but the baseline has {len(reference) - 1}")
            row["effective_robustness"] = float((curve - (reference + curve[0] - reference[0])).sum())
        per_corruption[name] = row
    summary = {
        key: float(np.mean([row[source] for row in per_corruption.values()]))
        for key, source in (
            ("mean_corruption_accuracy", "mean_accuracy"),
            ("relative_accuracy", "relative_accuracy"),
            ("area_under_curve", "area_under_curve"),
            ("effective_robustness", "effective_robustness"),
        )
        if source in next(iter(per_corruption.values()))
    }
    summary["per_corruption"] = per_corruption
    return summary


# Accuracies are clipped to [EPSILON, 1 - EPSILON] before the logit, so a model at 0 % or 100 % keeps a finite point.
LOGIT_EPSILON = 1e-4


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPSILON, 1 - LOGIT_EPSILON)
    return np.log(p / (1 - p))


def fit_id_ood_line(points: Sequence[tuple[float, float]]) -> dict:
    """The baseline ID -> OOD line of effective robustness (Taori et al. 2020, "Measuring robustness to natural
    distribution shifts"; Radford et al. 2021, CLIP, section 3.3), from the baseline models' `(id_accuracy,
    ood_accuracy)` points: `logit(ood) = slope * logit(id) + intercept`, least squares over the logit-transformed
    accuracies (the transform under which those papers found the points of standard models on a line).

    With one point, or points that all share one ID accuracy, no slope can be fitted: the line goes through their
    mean with slope 1 (the baseline's odds ratio between the two sets, kept at any ID accuracy). Returns
    `{"slope", "intercept", "fit": "least_squares" | "slope_1_through_point", "points"}`.
    """
    if not points:
        raise ValueError("fit_id_ood_line needs at least one baseline (id_accuracy, ood_accuracy) point")
    x, y = _logit([p[0] for p in points]), _logit([p[1] for p in points])
    if len(points) >= 2 and np.ptp(x) > 1e-12:
        slope, intercept = np.polyfit(x, y, 1)
        fit = "least_squares"
    else:
        slope, intercept, fit = 1.0, float(np.mean(y - x)), "slope_1_through_point"
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "fit": fit,
        "points": [list(map(float, p)) for p in points],
    }


def line_accuracy(line: dict, id_accuracy: float) -> float:
    """The OOD accuracy the baseline line predicts at `id_accuracy` (back from logit space)."""
    z = line["slope"] * float(_logit(id_accuracy)) + line["intercept"]
    return float(1 / (1 + np.exp(-z)))


def effective_robustness(line: dict, id_accuracy: float, ood_accuracy: float) -> float:
    """OOD accuracy above what the baseline line predicts at the same ID accuracy (> 0: more robust than the
    baseline models' trend, not just more accurate)."""
    return float(ood_accuracy) - line_accuracy(line, id_accuracy)
