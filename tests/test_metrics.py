"""The shipped evaluate modules against sklearn, and ClassificationMetrics inside a real Trainer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as sk
from torch import nn
from transformers import EvalPrediction, Trainer, TrainingArguments

from mm_hf.metrics import ClassificationMetrics, available_metrics, load_metric

METRICS_DIR = Path(__file__).parents[1] / "mm_hf" / "metrics"


def _random_labels(seed, num_labels, size, absent=()):
    """References and predictions in [0, num_labels); `absent` classes are never predicted."""
    rng = np.random.default_rng(seed)
    predictable = [c for c in range(num_labels) if c not in absent]
    references = rng.integers(0, num_labels, size)
    predictions = np.where(rng.random(size) < 0.5, references, rng.choice(predictable, size))
    predictions = np.where(np.isin(predictions, absent), predictable[0], predictions)
    return references, predictions


@pytest.fixture(scope="module")
def report_metric():
    return load_metric("classification_report")


@pytest.mark.parametrize(
    ("seed", "num_labels", "size", "absent", "names"),
    [
        (0, 2, 50, (), None),
        (1, 5, 97, (3,), ["cat", "dog", "bird", "fish", "frog"]),
        (
            2,
            12,
            31,
            (0, 7, 11),
            None,
        ),  # 31 samples: some classes have no support either
    ],
)
def test_classification_report_matches_sklearn(report_metric, seed, num_labels, size, absent, names):
    references, predictions = _random_labels(seed, num_labels, size, absent)
    ours = report_metric.compute(
        predictions=predictions,
        references=references,
        num_labels=num_labels,
        target_names=names,
    )
    theirs = sk.classification_report(
        references,
        predictions,
        labels=range(num_labels),
        target_names=names,
        zero_division=0,
        output_dict=True,
    )
    names = names or [str(i) for i in range(num_labels)]
    assert list(ours["per_class"]) == names
    for name in names:
        _assert_scores(ours["per_class"][name], theirs[name])
    _assert_scores(ours["macro_avg"], theirs["macro avg"])
    _assert_scores(ours["weighted_avg"], theirs["weighted avg"])
    accuracy = sk.accuracy_score(references, predictions)
    assert ours["accuracy"] == pytest.approx(accuracy)
    assert ours["micro_avg"]["f1"] == pytest.approx(accuracy)
    assert ours["micro_avg"]["support"] == size
    expected = sk.confusion_matrix(references, predictions, labels=range(num_labels))
    assert ours["confusion_matrix"] == expected.tolist()
    json.dumps(ours)  # plain Python types only, so reports can be written as they are


def _assert_scores(ours, theirs):
    for key, sk_key in [
        ("precision", "precision"),
        ("recall", "recall"),
        ("f1", "f1-score"),
    ]:
        assert ours[key] == pytest.approx(theirs[sk_key]), key
    assert ours["support"] == theirs["support"]


def test_classification_report_rejects_bad_input(report_metric):
    with pytest.raises(ValueError, match="num_labels"):
        report_metric.compute(predictions=[0, 1], references=[0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        report_metric.compute(predictions=[0, 2], references=[0, 1], num_labels=2)
    with pytest.raises(ValueError, match="unique names"):
        report_metric.compute(predictions=[0], references=[0], num_labels=2, target_names=["a", "a"])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_top_k_accuracy_matches_sklearn(k):
    rng = np.random.default_rng(k)
    scores = rng.random((41, 8))
    references = rng.integers(0, 8, 41)
    top_ids = np.argsort(-scores, axis=1)[:, :k]
    result = load_metric("top_k_accuracy").compute(predictions=top_ids, references=references)
    expected = sk.top_k_accuracy_score(references, scores, k=k, labels=range(8))
    assert result == {"top_k_accuracy": pytest.approx(expected), "k": k}


def test_top_k_accuracy_truncates_to_k():
    result = load_metric("top_k_accuracy").compute(predictions=[[2, 0], [1, 2]], references=[0, 0], k=1)
    assert result == {"top_k_accuracy": 0.0, "k": 1}


def test_modules_load_offline_in_a_fresh_process(tmp_path):
    # A fresh HF_HOME and an unreachable endpoint: anything that needs the network fails.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path),
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    script = (
        "import evaluate, json, sys\n"
        "d = sys.argv[1]\n"
        "r = evaluate.load(d + '/classification_report')\n"
        "t = evaluate.load(d + '/top_k_accuracy')\n"
        "assert isinstance(r, evaluate.Metric) and isinstance(t, evaluate.Metric)\n"
        "print(json.dumps([\n"
        "    r.compute(predictions=[0, 1], references=[0, 0], num_labels=3)['accuracy'],\n"
        "    t.compute(predictions=[[1, 0], [2, 1]], references=[0, 0])['top_k_accuracy'],\n"
        "]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(METRICS_DIR)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0.5, 0.5]


def test_load_metric_names_and_unique_experiment_ids():
    assert available_metrics() == [
        "binary_report",
        "classification_report",
        "multilabel_report",
        "ranking_report",
        "regression_report",
        "retrieval",
        "top_k_accuracy",
    ]
    first, second = (load_metric("top_k_accuracy") for _ in range(2))
    assert first.experiment_id != second.experiment_id
    with pytest.raises(ValueError, match="shipped metrics"):
        load_metric("accuracy")


ID2LABEL = {i: f"class_{i}" for i in range(7)}


def _logits_and_labels(seed, size, num_labels=7):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_labels, (size,), generator=generator)
    logits = torch.randn(size, num_labels, generator=generator)
    logits[torch.arange(size), labels] += 1.0  # better than chance, so numbers differ
    return logits, labels


def _feed(metrics, logits, labels, batch_size):
    """Call `metrics` like the Trainer does; return what the last call returned."""
    starts = range(0, len(labels), batch_size)
    for start in starts:
        batch = slice(start, start + batch_size)
        prediction = EvalPrediction(predictions=logits[batch], label_ids=labels[batch])
        result = metrics(prediction, compute_result=start == starts[-1])
    return result


def test_streaming_matches_one_shot_and_resets():
    metrics = ClassificationMetrics(ID2LABEL)
    logits, labels = _logits_and_labels(0, 53)
    assert _feed(metrics, logits[:8], labels[:8], 3)  # an earlier evaluation, forgotten
    summary = _feed(metrics, logits, labels, 5)

    report = load_metric("classification_report").compute(
        predictions=logits.argmax(-1),
        references=labels,
        num_labels=7,
        target_names=list(ID2LABEL.values()),
    )
    top5 = sk.top_k_accuracy_score(labels, logits, k=5, labels=range(7))
    assert summary == pytest.approx(
        {
            "accuracy": report["accuracy"],
            "top5_accuracy": top5,
            "macro_f1": report["macro_avg"]["f1"],
            "weighted_f1": report["weighted_avg"]["f1"],
            "macro_precision": report["macro_avg"]["precision"],
            "macro_recall": report["macro_avg"]["recall"],
        }
    )
    assert metrics.last_report == {**report, "top5_accuracy": pytest.approx(top5)}
    assert _feed(metrics, logits, labels, 53) == summary  # one batch, same numbers


def test_streaming_non_final_batches_return_empty_dict():
    metrics = ClassificationMetrics(ID2LABEL)
    logits, labels = _logits_and_labels(1, 4)
    assert metrics(EvalPrediction(predictions=logits, label_ids=labels)) == {}


def test_streaming_reports_top_k_only_when_informative():
    metrics = ClassificationMetrics({0: "no", 1: "yes"})
    logits, labels = _logits_and_labels(2, 9, num_labels=2)
    summary = _feed(metrics, logits, labels, 4)
    assert "top5_accuracy" not in summary
    assert "top5_accuracy" not in metrics.last_report
    top3 = _feed(ClassificationMetrics(ID2LABEL, top_k=3), *_logits_and_labels(3, 9), 4)
    assert "top3_accuracy" in top3


def test_streaming_rejects_non_batch_mode_and_bad_shapes():
    metrics = ClassificationMetrics(ID2LABEL)
    logits, labels = _logits_and_labels(4, 6)
    with pytest.raises(TypeError, match="batch_eval_metrics=True"):
        metrics(EvalPrediction(predictions=logits.numpy(), label_ids=labels.numpy()))
    with pytest.raises(ValueError, match="shape"):
        metrics(EvalPrediction(predictions=logits[:, :3], label_ids=labels))
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        metrics.update(logits, torch.full_like(labels, -100))
    with pytest.raises(ValueError, match="id2label"):
        ClassificationMetrics({1: "a", 2: "b"})


class TinyClassifier(nn.Module):
    """Linear classifier returning loss, logits and an extra output, like a ModelOutput."""

    def __init__(self, num_features=6, num_labels=7):
        super().__init__()
        self.linear = nn.Linear(num_features, num_labels)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        # A second output makes the Trainer pass a (logits, hidden) tuple as predictions;
        # hidden has 6 columns, so picking it instead of the logits fails the shape check.
        outputs = {"logits": logits, "hidden": x * 2}
        if labels is not None:
            outputs = {"loss": nn.functional.cross_entropy(logits, labels), **outputs}
        return outputs


class TinyDataset(torch.utils.data.Dataset):
    def __init__(self, size, num_features=6, num_labels=7):
        generator = torch.Generator().manual_seed(size)
        self.x = torch.randn(size, num_features, generator=generator)
        self.labels = torch.randint(0, num_labels, (size,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.labels[i]}


def _trainer(tmp_path, metrics, batch_eval_metrics=True):
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=4,
        batch_eval_metrics=batch_eval_metrics,
        use_cpu=True,
        report_to="none",
    )
    return Trainer(model=TinyClassifier(), args=args, compute_metrics=metrics)


def test_trainer_evaluate_with_batch_eval_metrics(tmp_path):
    dataset = TinyDataset(23)  # odd size: the last batch holds 3 samples
    metrics = ClassificationMetrics(ID2LABEL)
    trainer = _trainer(tmp_path, metrics)

    results = trainer.evaluate(dataset)

    with torch.no_grad():
        logits = trainer.model(dataset.x)["logits"]
    accuracy = (logits.argmax(-1) == dataset.labels).float().mean().item()
    assert results["eval_accuracy"] == pytest.approx(accuracy)
    for key in ("top5_accuracy", "macro_f1", "weighted_f1", "macro_precision"):
        assert f"eval_{key}" in results
    supports = [row["support"] for row in metrics.last_report["per_class"].values()]
    assert sum(supports) == len(dataset) == metrics.last_report["macro_avg"]["support"]
    # A second evaluation starts from a clean state.
    assert trainer.evaluate(dataset)["eval_accuracy"] == results["eval_accuracy"]


def test_trainer_without_batch_eval_metrics_fails_loudly(tmp_path):
    trainer = _trainer(tmp_path, ClassificationMetrics(ID2LABEL), batch_eval_metrics=False)
    with pytest.raises(TypeError, match="batch_eval_metrics=True"):
        trainer.evaluate(TinyDataset(9))


def test_streaming_metrics_pickle_with_fresh_modules():
    """Ray Tune (--hp_search ray) pickles the Trainer into each trial's process: the evaluate modules' locks do not
    pickle, so they are left out and loaded again there; a half-fed evaluation carries over."""
    import pickle

    metrics = ClassificationMetrics(ID2LABEL)
    logits, labels = _logits_and_labels(1, 40)
    metrics(EvalPrediction(predictions=logits[:10], label_ids=labels[:10]))
    copy = pickle.loads(pickle.dumps(metrics))
    assert copy._report_metric is not metrics._report_metric and copy._top_k_metric is not None
    rest = EvalPrediction(predictions=logits[10:], label_ids=labels[10:])
    assert copy(rest, compute_result=True) == metrics(rest, compute_result=True)
