"""multilabel_report, regression_report and binary_report against sklearn/scipy and hand-worked cases; the dispatcher."""

import json
import math

import numpy as np
import pytest
from scipy import special, stats
from sklearn import metrics as sk

from mm_hf.metrics import load_metric
from mm_hf.metrics.tasks import compute_task_metrics

EXACT = 1e-12  # inputs stay float64 end to end, so results match sklearn to rounding


@pytest.fixture(scope="module")
def multilabel():
    return load_metric("multilabel_report")


@pytest.fixture(scope="module")
def binary():
    return load_metric("binary_report")


@pytest.fixture(scope="module")
def regression():
    return load_metric("regression_report")


def _fresh_in_memory(name):
    # For calls that raise: evaluate leaves a raising compute()'s cache file locked, and the next compute()
    # on that instance waits 1 s for the lock; in memory there is no file.
    return load_metric(name, keep_in_memory=True)


def _assert_plain_floats(out):
    assert out and all(type(value) is float and math.isfinite(value) for value in out.values()), out
    json.dumps(out, allow_nan=False)


def _assert_close(ours, expected):
    assert set(ours) == set(expected)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, rel=EXACT, abs=EXACT), key


# ---------------------------------------------------------------- multilabel_report

# 3 samples x 2 labels. At threshold 0.5 the predictions are [[1, 1], [1, 0], [0, 0]]:
# label a: tp 2, fp 0, fn 0 -> P = R = F1 = 1; label b: tp 0, fp 1, fn 2 -> P = R = F1 = 0.
# micro: tp 2, fp 1, fn 2 -> P 2/3, R 1/2, F1 4/7. Per-sample F1: 2/3, 2/3, 0 -> samples_f1 4/9.
# Ranking: a is perfectly ranked (AUC 1, AP 1); b ranks its negative (0.6) above both positives -> AUC 0,
# AP (1/2 + 2/3) / 2 = 7/12. Micro, all pairs ranked 0.9+ 0.8+ 0.6- 0.4+ 0.3+ 0.2-: 6 of the 8
# positive-negative pairs in order -> AUC 0.75; precision at each positive 1, 1, 3/4, 4/5 -> AP their mean.
HAND_SCORES = [[0.9, 0.6], [0.8, 0.3], [0.2, 0.4]]
HAND_TARGETS = [[1, 0], [1, 1], [0, 1]]


def test_multilabel_hand_computed(multilabel):
    out = multilabel.compute(predictions=HAND_SCORES, references=HAND_TARGETS, label_names=["a", "b"])
    expected = {
        "micro_precision": 2 / 3,
        "micro_recall": 1 / 2,
        "micro_f1": 4 / 7,
        "macro_precision": 1 / 2,
        "macro_recall": 1 / 2,
        "macro_f1": 1 / 2,
        "samples_f1": 4 / 9,
        "subset_accuracy": 0.0,
        "hamming_loss": 3 / 6,
        "macro_roc_auc": 0.5,
        "mAP": (1 + 7 / 12) / 2,
        "micro_roc_auc": 0.75,
        "micro_average_precision": (1 + 1 + 3 / 4 + 4 / 5) / 4,
        **{f"a_{key}": 1.0 for key in ("precision", "recall", "f1", "roc_auc", "average_precision")},
        "a_support": 2.0,
        **{f"b_{key}": 0.0 for key in ("precision", "recall", "f1", "roc_auc")},
        "b_average_precision": 7 / 12,
        "b_support": 2.0,
    }
    _assert_close(out, expected)
    _assert_plain_floats(out)


def test_multilabel_threshold(multilabel):
    # At 0.35, b also predicts sample 3 (0.4): b has tp 1, fp 1, fn 1 -> P = R = F1 = 1/2; micro 3/4.
    out = multilabel.compute(predictions=HAND_SCORES, references=HAND_TARGETS, threshold=0.35)
    assert (out["1_precision"], out["1_recall"], out["1_f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (out["micro_precision"], out["micro_recall"], out["micro_f1"]) == pytest.approx((0.75, 0.75, 0.75))
    assert out["macro_roc_auc"] == 0.5  # ranking metrics do not depend on the threshold
    # A score equal to the threshold counts as predicted.
    at_threshold = multilabel.compute(predictions=[[0.3, 0.7]], references=[[1, 0]], threshold=0.3)
    assert at_threshold["0_recall"] == 1.0 and at_threshold["1_precision"] == 0.0


@pytest.mark.parametrize(("seed", "threshold"), [(0, 0.5), (1, 0.3)])
def test_multilabel_matches_sklearn(multilabel, seed, threshold):
    rng = np.random.default_rng(seed)
    names = ["cat", "dog", "car", "rare", "always"]
    targets = (rng.random((83, 5)) < 0.4).astype(int)
    targets[:, 3] = 0  # no positive: ROC-AUC / AP undefined
    targets[:, 4] = 1  # no negative: undefined too
    scores = np.clip(0.6 * targets + 0.7 * rng.random((83, 5)) - 0.15, 0, 1)
    predicted = (scores >= threshold).astype(int)

    out = multilabel.compute(predictions=scores, references=targets, threshold=threshold, label_names=names)

    expected = {
        "samples_f1": sk.f1_score(targets, predicted, average="samples", zero_division=0),
        "subset_accuracy": sk.accuracy_score(targets, predicted),
        "hamming_loss": sk.hamming_loss(targets, predicted),
        "micro_roc_auc": sk.roc_auc_score(targets, scores, average="micro"),
        "micro_average_precision": sk.average_precision_score(targets, scores, average="micro"),
    }
    for average in ("micro", "macro"):
        for key, function in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
            expected[f"{average}_{key}"] = function(targets, predicted, average=average, zero_division=0)
    defined = [0, 1, 2]
    expected["macro_roc_auc"] = sk.roc_auc_score(targets[:, defined], scores[:, defined], average="macro")
    expected["mAP"] = sk.average_precision_score(targets[:, defined], scores[:, defined], average="macro")
    for j, name in enumerate(names):
        expected[f"{name}_precision"] = sk.precision_score(targets[:, j], predicted[:, j], zero_division=0)
        expected[f"{name}_recall"] = sk.recall_score(targets[:, j], predicted[:, j], zero_division=0)
        expected[f"{name}_f1"] = sk.f1_score(targets[:, j], predicted[:, j], zero_division=0)
        expected[f"{name}_support"] = targets[:, j].sum()
        if j in defined:
            expected[f"{name}_roc_auc"] = sk.roc_auc_score(targets[:, j], scores[:, j])
            expected[f"{name}_average_precision"] = sk.average_precision_score(targets[:, j], scores[:, j])
    _assert_close(out, expected)
    assert "rare_roc_auc" not in out and "always_average_precision" not in out
    _assert_plain_floats(out)


def test_multilabel_omits_undefined_averages(multilabel):
    # Every label single-class: no per-label or macro ranking keys, but micro is defined (both classes overall).
    out = multilabel.compute(predictions=[[0.9, 0.2], [0.6, 0.1]], references=[[1, 0], [1, 0]])
    assert not {"macro_roc_auc", "mAP", "0_roc_auc", "1_average_precision"} & set(out)
    assert out["micro_roc_auc"] == 1.0
    # Every reference 0: micro is undefined as well; thresholded scores are still all there.
    out = multilabel.compute(predictions=[[0.9, 0.2], [0.6, 0.1]], references=[[0, 0], [0, 0]])
    assert not any("roc_auc" in key or "average_precision" in key or key == "mAP" for key in out)
    assert out["micro_f1"] == 0.0 and out["hamming_loss"] == 0.5
    _assert_plain_floats(out)


def test_multilabel_rejects_bad_input():
    multilabel = _fresh_in_memory("multilabel_report")
    with pytest.raises(ValueError, match="sigmoid"):
        multilabel.compute(predictions=[[2.3, -1.0]], references=[[1, 0]])
    with pytest.raises(ValueError, match="0/1"):
        multilabel.compute(predictions=[[0.3, 0.8]], references=[[1, 0.7]])
    with pytest.raises(ValueError, match="unique names"):
        multilabel.compute(predictions=[[0.3, 0.8]], references=[[1, 0]], label_names=["a"])
    with pytest.raises(ValueError, match="clash"):
        multilabel.compute(predictions=[[0.3, 0.8]], references=[[1, 0]], label_names=["macro", "b"])


# ---------------------------------------------------------------- binary_report


def test_binary_hand_computed(binary):
    # Ranked: 0.9 (+), 0.6 (-), 0.4 (+), 0.2 (-): 3 of 4 pairs in order; AP = (1/1 + 2/3) / 2.
    # At 0.5: predicted [1, 0, 0, 1] -> tp 1, fp 1, fn 1, tn 1.
    out = binary.compute(predictions=[0.9, 0.4, 0.2, 0.6], references=[1, 1, 0, 0])
    expected = {
        "roc_auc": 0.75,
        "average_precision": 5 / 6,
        "log_loss": -(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.4)) / 4,
        "brier": (0.1**2 + 0.6**2 + 0.2**2 + 0.6**2) / 4,
        "accuracy": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "positive_rate": 0.5,
    }
    _assert_close(out, expected)
    _assert_plain_floats(out)
    # At 0.3: predicted [1, 1, 0, 1] -> tp 2, fp 1, fn 0.
    low = binary.compute(predictions=[0.9, 0.4, 0.2, 0.6], references=[1, 1, 0, 0], threshold=0.3)
    assert (low["accuracy"], low["precision"], low["recall"], low["f1"]) == pytest.approx((0.75, 2 / 3, 1.0, 0.8))
    assert low["roc_auc"] == out["roc_auc"] and low["log_loss"] == out["log_loss"]


@pytest.mark.parametrize(("seed", "threshold"), [(0, 0.5), (1, 0.2)])
def test_binary_matches_sklearn(binary, seed, threshold):
    rng = np.random.default_rng(seed)
    targets = (rng.random(101) < 0.3).astype(int)
    probabilities = np.clip(0.5 * targets + rng.random(101) * 0.7, 0, 1)
    probabilities[:4] = [0.0, 1.0, 0.0, 1.0]  # certain predictions, some wrong: clipping keeps log_loss finite
    targets[:4] = [1, 0, 0, 1]
    predicted = (probabilities >= threshold).astype(int)

    out = binary.compute(predictions=probabilities, references=targets, threshold=threshold)

    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    expected = {
        "roc_auc": sk.roc_auc_score(targets, probabilities),
        "average_precision": sk.average_precision_score(targets, probabilities),
        "log_loss": sk.log_loss(targets, clipped, labels=[0, 1]),
        "brier": sk.brier_score_loss(targets, probabilities),
        "accuracy": sk.accuracy_score(targets, predicted),
        "precision": sk.precision_score(targets, predicted, zero_division=0),
        "recall": sk.recall_score(targets, predicted, zero_division=0),
        "f1": sk.f1_score(targets, predicted, zero_division=0),
        "positive_rate": targets.mean(),
    }
    _assert_close(out, expected)
    assert out["log_loss"] > 2 * -math.log(1e-7) / 101  # the two certain mistakes cost -log(1e-7) each
    _assert_plain_floats(out)


def test_binary_one_class_omits_ranking(binary):
    out = binary.compute(predictions=[0.2, 0.7, 0.4], references=[0, 0, 0])
    assert "roc_auc" not in out and "average_precision" not in out
    _assert_close(
        out,
        {
            "log_loss": -(math.log(0.8) + math.log(0.3) + math.log(0.6)) / 3,
            "brier": (0.04 + 0.49 + 0.16) / 3,
            "accuracy": 2 / 3,
            "precision": 0.0,
            "recall": 0.0,  # no positives: zero_division=0
            "f1": 0.0,
            "positive_rate": 0.0,
        },
    )
    _assert_plain_floats(out)


def test_binary_rejects_bad_input():
    binary = _fresh_in_memory("binary_report")
    with pytest.raises(ValueError, match="sigmoid"):
        binary.compute(predictions=[1.5, 0.2], references=[1, 0])
    with pytest.raises(ValueError, match="0/1"):
        binary.compute(predictions=[0.5, 0.2], references=[0.9, 0])


# ---------------------------------------------------------------- regression_report


def _sklearn_regression(predicted, targets, correlations=True):
    expected = {
        "mae": sk.mean_absolute_error(targets, predicted),
        "mse": sk.mean_squared_error(targets, predicted),
        "rmse": sk.root_mean_squared_error(targets, predicted),
        "r2": sk.r2_score(targets, predicted),
    }
    if correlations:
        expected["pearson"] = stats.pearsonr(predicted, targets).statistic
        expected["spearman"] = stats.spearmanr(predicted, targets).statistic
    return expected


def test_regression_hand_computed(regression):
    # errors 0, 0, 1: MAE = MSE = 1/3; R^2 = 1 - 1 / 2 (references deviate -1, 0, 1); ranks agree.
    out = regression.compute(predictions=[1.0, 2.0, 4.0], references=[1.0, 2.0, 3.0])
    expected = {
        "mae": 1 / 3,
        "mse": 1 / 3,
        "rmse": math.sqrt(1 / 3),
        "r2": 0.5,
        # deviations: predictions -4/3, -1/3, 5/3 and references -1, 0, 1 -> 3 / sqrt(14/3 * 2)
        "pearson": 3 / math.sqrt(14 / 3 * 2),
        "spearman": 1.0,
    }
    _assert_close(out, expected)
    _assert_plain_floats(out)


def test_regression_matches_sklearn(regression):
    rng = np.random.default_rng(0)
    targets = rng.normal(size=57)
    predicted = targets + rng.normal(scale=0.5, size=57)
    out = regression.compute(predictions=predicted, references=targets)
    _assert_close(out, _sklearn_regression(predicted, targets))
    _assert_plain_floats(out)


def test_regression_multi_output(regression):
    rng = np.random.default_rng(1)
    targets = rng.normal(size=(40, 3))
    predicted = targets + rng.normal(scale=[0.1, 1.0, 3.0], size=(40, 3))
    predicted[:, 2] = 7.0  # constant output: no correlation for it
    names = ["price", "rating", "flat"]

    out = regression.compute(predictions=predicted, references=targets, output_names=names)

    expected = {}
    for j, name in enumerate(names):
        per_output = _sklearn_regression(predicted[:, j], targets[:, j], correlations=name != "flat")
        expected.update({f"{key}_{name}": value for key, value in per_output.items()})
    expected.update(
        {
            "mae": sk.mean_absolute_error(targets, predicted),
            "mse": sk.mean_squared_error(targets, predicted),
            "rmse": sk.root_mean_squared_error(targets, predicted),
            "r2": sk.r2_score(targets, predicted),
            "pearson": (expected["pearson_price"] + expected["pearson_rating"]) / 2,
            "spearman": (expected["spearman_price"] + expected["spearman_rating"]) / 2,
        }
    )
    _assert_close(out, expected)
    _assert_plain_floats(out)
    # Length-1 sequences are one output named "0", not scalars.
    single = regression.compute(predictions=predicted[:, :1], references=targets[:, :1])
    assert single["mae_0"] == single["mae"] == pytest.approx(expected["mae_price"])


def test_regression_omits_undefined(regression):
    out = regression.compute(predictions=[1.0, 2.0, 3.0], references=[5.0, 5.0, 5.0])
    assert set(out) == {"mae", "mse", "rmse", "r2"} and out["r2"] == 0.0  # sklearn: constant references
    assert set(regression.compute(predictions=[1.0], references=[2.0])) == {"mae", "mse", "rmse"}
    out = regression.compute(predictions=[[1.0, 4.0], [2.0, 4.0]], references=[[1.0, 3.0], [3.0, 3.0]])
    assert "pearson_1" not in out and out["pearson"] == out["pearson_0"] == pytest.approx(1.0)
    _assert_plain_floats(out)


def test_regression_rejects_bad_input():
    regression = _fresh_in_memory("regression_report")
    with pytest.raises(ValueError, match="finite"):
        regression.compute(predictions=[1.0, float("nan")], references=[1.0, 2.0])
    with pytest.raises(ValueError, match="multi-output"):
        regression.compute(predictions=[1.0, 2.0], references=[1.0, 2.0], output_names=["a"])
    with pytest.raises(ValueError, match="unique names"):
        regression.compute(predictions=[[1.0, 2.0]], references=[[1.0, 2.0]], output_names=["a", "a"])


# ---------------------------------------------------------------- compute_task_metrics


def test_task_single_label_multiclass():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 64)
    logits = rng.normal(size=(64, 4))
    logits[np.arange(64), labels] += 1.0
    names = ["cat", "dog", "bird", "fish"]

    out = compute_task_metrics("single_label_classification", logits, labels, label_names=names)

    predicted = logits.argmax(1)
    expected = {"accuracy": sk.accuracy_score(labels, predicted)}
    for key, function in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        expected[f"macro_{key}"] = function(labels, predicted, average="macro", zero_division=0)
        per_class = function(labels, predicted, average=None, labels=range(4), zero_division=0)
        expected.update({f"{name}_{key}": value for name, value in zip(names, per_class, strict=True)})
    _assert_close(out, expected)  # no roc_auc / log_loss beyond two classes
    _assert_plain_floats(out)


def test_task_single_label_two_classes():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2)) + np.eye(2)[labels]
    out = compute_task_metrics("single_label_classification", logits, labels)
    probabilities = special.softmax(logits, axis=1)[:, 1]
    assert out["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, probabilities), rel=EXACT)
    assert out["log_loss"] == pytest.approx(sk.log_loss(labels, probabilities), rel=EXACT)
    assert out["accuracy"] == pytest.approx(sk.accuracy_score(labels, logits.argmax(1)), rel=EXACT)
    assert {"0_f1", "1_f1", "macro_f1"} <= set(out)
    _assert_plain_floats(out)
    with pytest.raises(ValueError, match="clash"):
        compute_task_metrics("single_label_classification", logits, labels, label_names=["macro", "b"])


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_task_multi_label(threshold):
    rng = np.random.default_rng(2)
    labels = (rng.random((48, 3)) < 0.5).astype(np.float32)  # BCE targets arrive as floats
    logits = rng.normal(size=(48, 3)) + 2 * labels - 1
    out = compute_task_metrics(
        "multi_label_classification", logits, labels, label_names=["a", "b", "c"], threshold=threshold
    )
    predicted = logits >= special.logit(threshold)  # sigmoid(x) >= t  <=>  x >= logit(t)
    assert out["micro_f1"] == pytest.approx(sk.f1_score(labels, predicted, average="micro"), rel=EXACT)
    assert out["b_recall"] == pytest.approx(sk.recall_score(labels[:, 1], predicted[:, 1]), rel=EXACT)
    assert out["mAP"] == pytest.approx(sk.average_precision_score(labels, logits, average="macro"), rel=EXACT)
    _assert_plain_floats(out)


def test_task_binary():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 40)
    logits = (rng.normal(size=40) + labels)[:, None]  # a (N, 1) head
    out = compute_task_metrics("binary_classification", logits, labels, threshold=0.6)
    assert set(out) == {
        *"roc_auc log_loss average_precision accuracy precision recall f1 brier".split(),
        "positive_rate",
    }
    assert out["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, logits[:, 0]), rel=EXACT)
    predicted = special.expit(logits[:, 0]) >= 0.6
    assert out["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted), rel=EXACT)
    assert out["log_loss"] == pytest.approx(sk.log_loss(labels, special.expit(logits[:, 0])), rel=EXACT)
    assert compute_task_metrics("binary_classification", logits[:, 0], labels[:, None]) == pytest.approx(
        compute_task_metrics("binary_classification", logits, labels)
    )
    _assert_plain_floats(out)


def test_task_regression():
    rng = np.random.default_rng(4)
    labels = rng.normal(size=30)
    predictions = labels[:, None] + rng.normal(scale=0.3, size=(30, 1))  # num_labels=1 head: (N, 1) vs (N,)
    out = compute_task_metrics("regression", predictions, labels)
    _assert_close(out, _sklearn_regression(predictions[:, 0], labels))
    two = compute_task_metrics("regression", rng.normal(size=(30, 2)), rng.normal(size=(30, 2)), ["x", "y"])
    assert {"mae", "mae_x", "r2_y"} <= set(two)
    _assert_plain_floats(two)


def test_task_rejects_unknown_problem_type_and_shapes():
    with pytest.raises(ValueError, match="problem_type"):
        compute_task_metrics("ranking", np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        compute_task_metrics("binary_classification", np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="logits"):
        compute_task_metrics("single_label_classification", np.zeros(4), np.zeros(4))
