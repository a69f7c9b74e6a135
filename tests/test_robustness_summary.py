"""Corruption-sweep summaries and effective robustness against hand-computed values."""

import math

import pytest

from mm_hf.metrics.robustness import effective_robustness, fit_id_ood_line, line_accuracy, robustness_summary


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


def test_effective_robustness_against_a_logit_line_fitted_over_baseline_models():
    # Two baseline points (0.5, 0.25) and (0.8, 0.5): logits (0, -ln 3) and (ln 4, 0), so slope ln 3 / ln 4 and
    # intercept -ln 3. A model at (0.9, 0.7): the line predicts sigmoid(ln 3 / ln 4 * ln 9 - ln 3) there.
    line = fit_id_ood_line([(0.5, 0.25), (0.8, 0.5)])
    assert line["fit"] == "least_squares"
    assert line["slope"] == pytest.approx(math.log(3) / math.log(4))
    assert line["intercept"] == pytest.approx(-math.log(3))
    expected = 1 / (1 + math.exp(-(math.log(3) / math.log(4) * math.log(9) - math.log(3))))
    assert expected == pytest.approx(0.6554, abs=1e-4)
    assert line_accuracy(line, 0.9) == pytest.approx(expected)
    assert effective_robustness(line, 0.9, 0.7) == pytest.approx(0.7 - expected)
    assert effective_robustness(line, 0.8, 0.5) == pytest.approx(0.0, abs=1e-12)  # a baseline point is on its line


def test_one_baseline_model_gives_a_slope_1_line_through_its_point():
    # (0.5, 0.25): intercept logit(0.25) - logit(0.5) = -ln 3; at ID 0.8 the line predicts sigmoid(ln 4 - ln 3) = 4/7.
    line = fit_id_ood_line([(0.5, 0.25)])
    assert (line["fit"], line["slope"]) == ("slope_1_through_point", 1.0)
    assert line["intercept"] == pytest.approx(-math.log(3))
    assert effective_robustness(line, 0.8, 0.5) == pytest.approx(0.5 - 4 / 7)
    # Accuracies of 0 and 1 stay finite (clipped before the logit).
    assert 0 < line_accuracy(fit_id_ood_line([(1.0, 0.0)]), 1.0) < 1e-3
    with pytest.raises(ValueError, match="at least one baseline"):
        fit_id_ood_line([])
