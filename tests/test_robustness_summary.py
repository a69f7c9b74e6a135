"""Corruption-sweep summaries against hand-computed values."""

import pytest

from mm_hf.metrics.robustness import robustness_summary


def test_robustness_summary_matches_hand_computed_values():
    accuracies = {"fog": [0.7, 0.6, 0.5, 0.4, 0.3], "pixelate": [0.8] * 5}
    baseline = (0.6, {"fog": [0.6, 0.5, 0.4, 0.3, 0.2], "pixelate": [0.5] * 5})
    out = robustness_summary(0.8, accuracies, baseline=baseline)
    fog, pixelate = out["per_corruption"]["fog"], out["per_corruption"]["pixelate"]
    assert fog["mean_accuracy"] == pytest.approx(0.5)
    assert fog["relative_accuracy"] == pytest.approx(0.5 / 0.8)
    # Trapezoids over levels 0, .2, ..., 1 of [0.8, 0.7, ..., 0.3]: (0.75 + 0.65 + 0.55 + 0.45 + 0.35) / 5.
    assert fog["area_under_curve"] == pytest.approx(0.55)
    assert pixelate["area_under_curve"] == pytest.approx(0.8)  # never degrades: the clean accuracy
    # Baseline shifted to the model's clean 0.8: fog [0.8, 0.8, 0.7, 0.6, 0.5, 0.4] vs [0.8, 0.7, ..., 0.3] -> -0.5;
    # pixelate [0.8, 0.7 x 5] vs [0.8 x 6] -> +0.5.
    assert fog["effective_robustness"] == pytest.approx(-0.5)
    assert pixelate["effective_robustness"] == pytest.approx(0.5)
    assert out["mean_corruption_accuracy"] == pytest.approx(0.65)
    assert out["relative_accuracy"] == pytest.approx((0.625 + 1.0) / 2)
    assert out["area_under_curve"] == pytest.approx(0.675)
    assert out["effective_robustness"] == pytest.approx(0.0)
    assert "effective_robustness" not in robustness_summary(0.8, accuracies)


def test_robustness_summary_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match=r"baseline has no accuracies for corruptions \['fog'\]"):
        robustness_summary(0.8, {"fog": [0.5]}, baseline=(0.7, {"pixelate": [0.5]}))
    with pytest.raises(ValueError, match="fog: 2 severities but the baseline has 1"):
        robustness_summary(0.8, {"fog": [0.5, 0.4]}, baseline=(0.7, {"fog": [0.5]}))
    with pytest.raises(ValueError, match="at least one corruption"):
        robustness_summary(0.8, {})
