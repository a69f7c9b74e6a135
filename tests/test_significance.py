"""Bootstrap CIs (coverage, agreement with the report's metrics), paired bootstrap and exact McNemar tests."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mm_hf.metrics.significance import (
    bootstrap_ci,
    bootstrap_metric_ci,
    macro_f1_scores,
    mcnemar_test,
    paired_bootstrap_metric_test,
    paired_bootstrap_test,
    weighted_f1_scores,
)


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    # 300 synthetic "test sets" of 100 samples from a model with true accuracy 0.7: a 95 % CI should contain 0.7
    # in about 95 % of them (percentile intervals under-cover slightly at small N; +-2.5 sd of a 300-trial rate).
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(300):
        correct = rng.uniform(size=100) < 0.7
        ci = bootstrap_ci(correct, num_resamples=400, seed=trial)
        assert ci.low <= ci.estimate <= ci.high
        hits += ci.low <= 0.7 <= ci.high
    assert 0.90 <= hits / 300 <= 0.99


def test_bootstrap_ci_width_matches_binomial_standard_error_and_is_seeded():
    correct = np.random.default_rng(1).uniform(size=2000) < 0.8
    ci = bootstrap_ci(correct, num_resamples=2000, seed=3)
    p = correct.mean()
    assert ci.estimate == pytest.approx(p)
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / 2000), rel=0.1)
    assert bootstrap_ci(correct, num_resamples=2000, seed=3) == ci
    assert bootstrap_ci(correct, num_resamples=2000, seed=4) != ci


def test_metric_scores_match_sklearn_including_absent_classes():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=(5, 60))  # class 4 of 5 never occurs: it counts as F1 = 0
    predictions = np.where(rng.uniform(size=labels.shape) < 0.6, labels, rng.integers(0, 4, size=labels.shape))
    for average, scores in (("macro", macro_f1_scores), ("weighted", weighted_f1_scores)):
        expected = [
            f1_score(y, p, labels=range(5), average=average, zero_division=0)
            for y, p in zip(labels, predictions, strict=True)
        ]
        assert scores(labels, predictions, 5) == pytest.approx(expected)
    ci = bootstrap_metric_ci("macro_f1", labels[0], predictions[0], num_labels=5, num_resamples=300)
    assert ci.estimate == pytest.approx(
        f1_score(labels[0], predictions[0], labels=range(5), average="macro", zero_division=0)
    )
    assert ci.low < ci.estimate < ci.high
    with pytest.raises(ValueError, match="num_labels"):
        bootstrap_metric_ci("macro_f1", labels[0], predictions[0])
    with pytest.raises(ValueError, match="Unknown bootstrap metric 'f2'"):
        bootstrap_metric_ci("f2", labels[0], predictions[0])


def _two_models(n, accuracy_a, accuracy_b, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)

    def model(accuracy):
        wrong = (labels + rng.integers(1, 3, size=n)) % 3
        return np.where(rng.uniform(size=n) < accuracy, labels, wrong)

    return labels, model(accuracy_a), model(accuracy_b)


def test_paired_bootstrap_p_is_small_when_b_is_clearly_better():
    labels, a, b = _two_models(600, 0.70, 0.85, seed=0)
    test = paired_bootstrap_metric_test("accuracy", labels, a, b)
    assert test.estimate_b - test.estimate_a == pytest.approx(test.difference.estimate)
    assert test.difference.estimate > 0.1 and test.difference.low > 0
    assert test.p_value < 0.01
    # The same comparison the other way round: A does not beat B.
    assert paired_bootstrap_metric_test("accuracy", labels, b, a).p_value > 0.99
    assert paired_bootstrap_metric_test("macro_f1", labels, a, b, num_labels=3).p_value < 0.01
    # Per-sample scores give the same test for accuracy.
    scores = paired_bootstrap_test(a == labels, b == labels)
    assert scores.p_value == test.p_value and scores.difference == test.difference


def test_paired_bootstrap_p_is_roughly_uniform_for_equal_models():
    p_values = []
    for seed in range(100):
        labels, a, b = _two_models(200, 0.75, 0.75, seed=seed)
        p_values.append(paired_bootstrap_test(a == labels, b == labels, num_resamples=300, seed=seed).p_value)
    p_values = np.asarray(p_values)
    # Uniform(0, 1): mean 0.5, 5 % below 0.05; wide margins for 100 draws.
    assert 0.38 < p_values.mean() < 0.62
    assert np.mean(p_values < 0.05) <= 0.12
    assert np.mean(p_values > 0.5) > 0.3
    # Identical predictions: no evidence at all.
    labels, a, _ = _two_models(100, 0.7, 0.7, seed=0)
    assert paired_bootstrap_metric_test("accuracy", labels, a, a).p_value == 1.0


def test_mcnemar_matches_hand_worked_binomial():
    # 2 samples only A gets right, 8 only B, 90 both or neither. Under H0, B's wins ~ Binomial(10, 1/2):
    # P(X >= 8) = (C(10,8) + C(10,9) + C(10,10)) / 2^10 = (45 + 10 + 1) / 1024 = 0.0546875; two-sided doubles it.
    correct_a = np.array([1] * 2 + [0] * 8 + [1] * 60 + [0] * 30, dtype=bool)
    correct_b = np.array([0] * 2 + [1] * 8 + [1] * 60 + [0] * 30, dtype=bool)
    test = mcnemar_test(correct_a, correct_b)
    assert (test.a_only, test.b_only) == (2, 8)
    assert test.p_value_b_better == pytest.approx(56 / 1024)
    assert test.p_value == pytest.approx(112 / 1024)
    assert mcnemar_test(correct_b, correct_a).p_value_b_better == pytest.approx(1 - 1 / 1024 * (1 + 10))
    assert mcnemar_test(correct_a, correct_a).as_dict() == {
        "a_only": 0,
        "b_only": 0,
        "p_value": 1.0,
        "p_value_b_better": 1.0,
    }
    with pytest.raises(ValueError, match="same samples"):
        mcnemar_test(correct_a, correct_b[:-1])
