"""Calibration of a fusion model's classification heads, with the classifier path's keys and functions
(`mm_hf.metrics.calibration`): per set each calibrated head's ECE / NLL / Brier / reliability, one temperature fitted
per head on `--calibration_data`, and `--save_temperature` writing it into the checkpoint's config.json."""

from __future__ import annotations

import numpy as np

from ...metrics.calibration import calibration_report, fit_temperature, multilabel_calibration
from ..candidates import write_config_key

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
