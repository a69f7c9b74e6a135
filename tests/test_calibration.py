"""Calibration metrics against hand-computed and scikit-learn values; temperature scaling on synthetic logits."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import brier_score_loss, log_loss

from mm_hf.metrics.calibration import (
    CalibrationMetrics,
    calibration_metrics,
    fit_temperature,
    multilabel_calibration,
    plot_reliability_diagram,
)


def _logits(probabilities):
    return np.log(np.asarray(probabilities, dtype=np.float64))


def test_ece_matches_hand_computed_example():
    # Top-label confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.62 (right) land in 15-bin bins 13, 13, 10, 9:
    # ECE = 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.7| + 1/4 * |1 - 0.62| = 0.2 + 0.075 + 0.095 = 0.37.
    probs = [[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.62, 0.38]]
    labels = [0, 1, 1, 0]
    metrics = CalibrationMetrics()
    metrics.update(_logits(probs), labels)
    out = metrics.compute()
    assert out["ece"] == pytest.approx(0.37)
    assert out["mce"] == pytest.approx(0.4)
    assert out["accuracy"] == pytest.approx(0.75)
    reliability = metrics.last_reliability
    assert reliability["count"][13] == 2 and reliability["count"][10] == 1 and reliability["count"][9] == 1
    assert sum(reliability["count"]) == 4
    assert reliability["accuracy"][13] == pytest.approx(0.5)
    assert reliability["confidence"][13] == pytest.approx(0.9)
    assert reliability["accuracy"][0] is None  # empty bin: no made-up value, and the dict stays valid JSON
    json.loads(json.dumps(reliability))


def test_nll_and_brier_match_sklearn_binary():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0.01, 0.99, size=200)
    labels = (rng.uniform(size=200) < p1).astype(int)
    # A binary head's single logit: softmax([0, z]) = sigmoid(z).
    z = np.log(p1 / (1 - p1))
    out = calibration_metrics(z, labels)
    assert out["nll"] == pytest.approx(log_loss(labels, p1))
    # The multi-class Brier score counts both classes' errors: twice sklearn's binary score.
    assert out["brier"] == pytest.approx(2 * brier_score_loss(labels, p1))


def test_nll_and_brier_match_sklearn_and_hand_multiclass():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    labels = np.array([0, 2])
    out = calibration_metrics(_logits(probs), labels)
    # Hand: (0.3^2 + 0.2^2 + 0.1^2 + 0.2^2 + 0.5^2 + 0.7^2) / 2 = (0.14 + 0.78) / 2 = 0.46.
    assert out["brier"] == pytest.approx(0.46)
    assert out["nll"] == pytest.approx(-(np.log(0.7) + np.log(0.3)) / 2)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 4)) * 2
    labels = rng.integers(0, 4, size=300)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    out = calibration_metrics(logits, labels)
    assert out["nll"] == pytest.approx(log_loss(labels, probs, labels=range(4)))
    assert out["brier"] == pytest.approx(brier_score_loss(labels, probs, labels=range(4), scale_by_half=False))


def test_multilabel_calibration_is_the_mean_of_per_label_binary_calibration():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, 3)) * np.array([1.0, 3.0, 0.3])  # labels calibrated to different degrees
    labels = (rng.uniform(size=logits.shape) < 1 / (1 + np.exp(-logits / 2))).astype(int)
    out = multilabel_calibration(logits, labels)
    probs = 1 / (1 + np.exp(-logits))
    # NLL: the mean over labels of each label's binary cross-entropy (sklearn's log_loss), not one pooled number.
    assert out["nll"] == pytest.approx(np.mean([log_loss(labels[:, j], probs[:, j]) for j in range(3)]))
    assert [m["ece"] for m in out["per_label"]] == [
        calibration_metrics(logits[:, j], labels[:, j])["ece"] for j in range(3)
    ]
    assert out["ece"] == pytest.approx(np.mean([m["ece"] for m in out["per_label"]]))
    assert sum(out["reliability"]["count"]) == 600  # the diagram pools every (sample, label) decision
    with pytest.raises(ValueError, match="same shape"):
        multilabel_calibration(logits, labels[:, :2])


def test_streaming_batches_equal_one_pass_and_accept_torch():
    rng = np.random.default_rng(2)
    # bf16 as a model in mixed precision returns them (numpy has no bf16, so update must upcast).
    logits = torch.from_numpy(rng.normal(size=(250, 6)) * 3).to(torch.bfloat16)
    labels = rng.integers(0, 6, size=250)
    whole = calibration_metrics(logits.double().numpy(), labels)
    streamed = CalibrationMetrics()
    for start in range(0, 250, 64):
        streamed.update(logits[start : start + 64], torch.from_numpy(labels[start : start + 64]))
    assert streamed.compute() == pytest.approx(whole)
    with pytest.raises(RuntimeError, match="before any sample"):
        streamed.compute()  # compute() reset the accumulators
    with pytest.raises(ValueError, match=r"class ids in \[0, 6\)"):
        streamed.update(logits[:2], [0, 6])


def _overconfident(temperature, n=4000, num_classes=5, seed=0):
    """Labels drawn from softmax(z), returned with logits z * temperature (over-confident for temperature > 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, num_classes)) * 2
    labels = (z + rng.gumbel(size=z.shape)).argmax(axis=1)  # Gumbel-max: a draw from softmax(z)
    return z * temperature, labels


def test_temperature_scaling_recovers_known_temperature_and_lowers_ece():
    logits, labels = _overconfident(2.5)
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(2.5, rel=0.1)
    assert fit.after["ece"] < fit.before["ece"] / 3
    assert fit.after["nll"] < fit.before["nll"]
    assert fit.after["accuracy"] == fit.before["accuracy"]  # T never changes the argmax
    # Applied to fresh data from the same model, the fitted T calibrates it too (streamed with `temperature`).
    test_logits, test_labels = _overconfident(2.5, seed=1)
    before = calibration_metrics(test_logits, test_labels)
    after = calibration_metrics(test_logits, test_labels, temperature=fit.temperature)
    assert after["ece"] < before["ece"] / 3
    # Already calibrated logits keep T close to 1.
    assert fit_temperature(*_overconfident(1.0, seed=2)).temperature == pytest.approx(1.0, abs=0.1)


def test_reliability_diagram_is_written(tmp_path):
    logits, labels = _overconfident(2.5, n=500)
    metrics = CalibrationMetrics()
    metrics.update(logits, labels)
    ece = metrics.compute()["ece"]
    path = plot_reliability_diagram(metrics.last_reliability, tmp_path / "plots" / "reliability.png", ece=ece)
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 300
