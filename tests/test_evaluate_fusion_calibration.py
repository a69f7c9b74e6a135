"""Calibration of fusion heads in python -m mm_hf.evaluate: ECE/NLL/Brier as the classifier path computes them,
temperature scaling fitted on --calibration_data, and --save_temperature applied by the reloaded model (forward and
python -m mm_hf.predict scores).

The checkpoints are tabular-only fusion models built in-process (no encoder, no media: a scoring pass takes
milliseconds). Labels are drawn from softmax(z / 3) of the model's own logits z, so its head is over-confident by a
known factor 3 and a fitted temperature has something real to fix.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForSequenceClassification

from mm_hf.data.tabular import TabularProcessor
from mm_hf.errors import UserError
from mm_hf.evaluate import main
from mm_hf.metrics.calibration import calibration_metrics
from mm_hf.models import MultimodalFusionConfig
from mm_hf.models.modeling_multimodal_fusion import MultimodalFusionForClassification
from mm_hf.models.processing_multimodal_fusion import ProcessorSettings
from mm_hf.predict.cli import main as predict
from mm_hf.processing import MultimodalProcessor

OVERCONFIDENCE = 3.0  # labels come from softmax(logits / 3): the fitted temperature should land near 3


def _tabular_run(path, tasks: list[dict], sizes=(300, 300), seed=0):
    """A saved tabular fusion checkpoint (run_config.yaml included) and its calibration/test JSONL files, labels
    drawn from the model's logits divided by OVERCONFIDENCE; returns (run, {set: file}, {set: per-head logits})."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = {name: rng.normal(size=(n, 2)) for name, n in zip(("calibration", "test"), sizes, strict=True)}
    config = MultimodalFusionConfig(modalities=["tabular"], tabular_num_numeric=2, hidden_size=16, head_dropout=0.0,
                                    tasks=tasks)  # fmt: skip
    model = MultimodalFusionForClassification(config).eval()
    tabular = TabularProcessor().fit({"x1": rows["test"][:, 0], "x2": rows["test"][:, 1]}, ["x1", "x2"])
    processor = MultimodalProcessor(ProcessorSettings(["tabular"]), tabular=tabular)
    transform = processor.transform(train=False)

    def logits_of(x):
        batch = transform({"x1": x[:, 0].tolist(), "x2": x[:, 1].tolist()})
        with torch.no_grad():
            out = model(**{k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()}).logits
        return [o.double().numpy() for o in (out if isinstance(out, tuple) else (out,))]

    with torch.no_grad():  # centred logits with a spread of a few units, so over-confidence shows
        for task, head_logits in zip(tasks, logits_of(rows["test"]), strict=True):
            last = model.heads[task["name"]][-1]
            scale = 4.0 / max(head_logits.std(), 1e-6)
            last.weight.mul_(scale)
            last.bias.mul_(scale).sub_(torch.as_tensor(scale * head_logits.mean(0), dtype=last.bias.dtype))
    files, logits = {}, {}
    for name, x in rows.items():
        logits[name] = logits_of(x)
        records = [{"x1": float(a), "x2": float(b)} for a, b in x]
        for task, z in zip(tasks, logits[name], strict=True):
            kind, labels = task["problem_type"], task["labels"]
            if kind == "single_label_classification":  # Gumbel-max: a draw from softmax(z / 3)
                drawn = (z / OVERCONFIDENCE + rng.gumbel(size=z.shape)).argmax(1)
                values = [labels[i] for i in drawn]
            elif kind == "regression":
                values = [float(a) for a in x[:, 0]]
            else:  # binary / multi-label: each logit a Bernoulli draw of sigmoid(z / 3)
                drawn = (rng.uniform(size=z.shape) < 1 / (1 + np.exp(-z / OVERCONFIDENCE))).astype(int)
                values = drawn[:, 0].tolist() if kind == "binary_classification" else drawn
            for record, value in zip(records, values, strict=True):
                if kind == "multi_label_classification":
                    record.update({label: int(v) for label, v in zip(labels, value, strict=True)})
                else:
                    record[task["name"]] = value
        files[name] = str(path / f"{name}.jsonl")
        with open(files[name], "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
    run = path / "run"
    model.save_pretrained(run)
    processor.save_pretrained(str(run))
    label_columns = tasks[0]["labels"] if tasks[0]["problem_type"] == "multi_label_classification" else None
    with open(run / "run_config.yaml", "w") as f:
        yaml.safe_dump({"numeric_columns": ["x1", "x2"], "problem_type": [t["problem_type"] for t in tasks],
                        "label_column": label_columns or [t["name"] for t in tasks]}, f)  # fmt: skip
    return run, files, logits


def _evaluate(run, files, out, *extra):
    return main(["--model", f"run={run}", "--test_file", files["test"], "--output_dir", str(out),
                 "--dataloader_num_workers", "0", "--disable_tqdm", "--latency_runs", "0", *extra])  # fmt: skip


def _labels(file, column):
    with open(file) as f:
        return [json.loads(line)[column] for line in f]


def test_fitted_temperature_calibrates_an_overconfident_head_and_is_saved_into_the_checkpoint(tmp_path):
    tasks = [{"name": "label", "problem_type": "single_label_classification", "labels": ["a", "b", "c"]}]
    run, files, logits = _tabular_run(tmp_path, tasks)
    result = _evaluate(run, files, tmp_path / "eval", "--calibration_data", files["calibration"], "--save_temperature")
    entry = result["models"]["run"]
    labels = np.array([tasks[0]["labels"].index(v) for v in _labels(files["test"], "label")])
    # The fusion path's numbers are the classifier path's function on the same logits.
    expected = calibration_metrics(logits["test"][0], labels)
    calibration = entry["sets"]["test"]["calibration"]
    for key in ("ece", "mce", "nll", "brier", "accuracy", "confidence"):
        assert calibration[key] == pytest.approx(expected[key], abs=1e-6), key
    assert sum(calibration["reliability"]["count"]) == 300 and len(calibration["reliability"]["count"]) == 15

    # Fitted on the calibration rows, the temperature recovers the over-confidence and calibrates the held-out test.
    scaling = entry["temperature_scaling"]
    temperature = scaling["temperature"]
    assert temperature == pytest.approx(OVERCONFIDENCE, rel=0.3) and scaling["samples"] == 300
    scaled = entry["sets"]["test"]["calibration_temperature_scaled"]
    assert scaled["temperature"] == temperature
    assert scaled["nll"] < calibration["nll"] - 0.05 and scaled["ece"] < calibration["ece"] / 2
    assert scaled["accuracy"] == calibration["accuracy"]
    assert result["plots"] == ["plots/reliability_run.png"] and (tmp_path / "eval" / result["plots"][0]).is_file()
    assert "Temperature scaling" in (tmp_path / "eval" / "evaluation.md").read_text()

    # --save_temperature: the reloaded checkpoint divides its logits by T in eval mode (training never sees it).
    assert scaling["saved_to"] == str(run / "config.json")
    assert AutoConfig.from_pretrained(run).calibration_temperature == {"label": temperature}
    model = AutoModelForSequenceClassification.from_pretrained(run)
    batch = MultimodalProcessor.from_pretrained(str(run)).transform(train=False)({"x1": [0.3, -1.0], "x2": [1.2, 0.1]})
    inputs = {k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()}
    with torch.no_grad():
        raw = model.train()(**inputs).logits
        calibrated = model.eval()(**inputs).logits
    assert torch.allclose(calibrated, raw / temperature, atol=1e-6)
    assert not torch.allclose(raw.softmax(-1), calibrated.softmax(-1), atol=1e-2)  # the change is visible
    # python -m mm_hf.predict on the checkpoint: its scores are the calibrated probabilities softmax(z / T).
    predict([str(run), "--data", files["test"], "--output", str(tmp_path / "p.jsonl"), "--num_workers", "0"])
    expected = torch.softmax(torch.as_tensor(logits["test"][0]) / temperature, -1)
    with open(tmp_path / "p.jsonl") as f:
        for row, probabilities in zip(map(json.loads, f), expected, strict=True):
            scores = {item["label"]: item["score"] for item in row["top_k"]}
            assert [scores[label] for label in tasks[0]["labels"]] == pytest.approx(probabilities.tolist(), abs=1e-5)

    # A second fit composes with the saved temperature (the scored logits are already divided by it).
    again = _evaluate(run, files, tmp_path / "eval2", "--calibration_data", files["calibration"], "--save_temperature")
    refit = again["models"]["run"]["temperature_scaling"]["temperature"]
    assert refit == pytest.approx(1.0, abs=0.02)
    assert AutoConfig.from_pretrained(run).calibration_temperature["label"] == pytest.approx(temperature * refit)
    assert again["models"]["run"]["sets"]["test"]["calibration"]["ece"] == pytest.approx(scaled["ece"], abs=1e-6)


@pytest.mark.parametrize("kind", ["binary", "multi_label", "multi_task"])
def test_each_head_kind_gets_its_calibration_and_regression_none(kind, tmp_path):
    tasks = {
        "binary": [{"name": "clicked", "problem_type": "binary_classification", "labels": ["0", "1"]}],
        "multi_label": [{"name": "findings", "problem_type": "multi_label_classification", "labels": ["p", "q"]}],
        "multi_task": [{"name": "label", "problem_type": "single_label_classification", "labels": ["a", "b"]},
                       {"name": "score", "problem_type": "regression", "labels": ["score"]}],
    }[kind]  # fmt: skip
    run, files, logits = _tabular_run(tmp_path, tasks, sizes=(120, 120))
    result = _evaluate(run, files, tmp_path / "eval", "--calibration_data", files["calibration"])
    entry, test = result["models"]["run"], result["models"]["run"]["sets"]["test"]
    if kind == "binary":  # one logit: softmax([0, z]) = sigmoid(z), as the classifier path reads a binary head
        expected = calibration_metrics(logits["test"][0], _labels(files["test"], "clicked"))
        assert test["calibration"]["ece"] == pytest.approx(expected["ece"], abs=1e-6)
        assert entry["temperature_scaling"]["temperature"] > 1.5
    elif kind == "multi_label":  # mean over labels of each label's binary calibration
        per_label = [calibration_metrics(logits["test"][0][:, j], _labels(files["test"], name))
                     for j, name in enumerate(("p", "q"))]  # fmt: skip
        assert test["calibration"]["ece"] == pytest.approx(np.mean([m["ece"] for m in per_label]), abs=1e-6)
        assert test["calibration"]["nll"] == pytest.approx(np.mean([m["nll"] for m in per_label]), abs=1e-6)
        assert len(test["calibration"]["per_label"]) == 2
        scaling = entry["temperature_scaling"]
        assert scaling["temperature"] > 1.5 and scaling["after"]["nll"] < scaling["before"]["nll"]
    else:  # per head; the regression head has none (null, not zeros), and no temperature
        assert test["calibration"]["score"] is None and entry["temperature_scaling"]["score"] is None
        assert set(test["calibration_temperature_scaled"]) == {"label", "score"}
        assert test["calibration_temperature_scaled"]["score"] is None
        labels = [tasks[0]["labels"].index(v) for v in _labels(files["test"], "label")]
        expected = calibration_metrics(logits["test"][0], labels)
        assert test["calibration"]["label"]["ece"] == pytest.approx(expected["ece"], abs=1e-6)
        assert entry["temperature_scaling"]["label"]["temperature"] > 1.5
        assert "| run   | test | label |" in (tmp_path / "eval" / "evaluation.md").read_text()
        assert result["plots"] == ["plots/reliability_run_label.png"]  # one diagram per calibrated head


def test_regression_only_fusion_is_refused_calibration_data(tmp_path):
    tasks = [{"name": "score", "problem_type": "regression", "labels": ["score"]}]
    run, files, _ = _tabular_run(tmp_path, tasks, sizes=(20, 20))
    result = _evaluate(run, files, tmp_path / "eval")
    assert result["models"]["run"]["sets"]["test"]["calibration"] is None and result["plots"] == []
    assert "Calibration: not measured" in (tmp_path / "eval" / "evaluation.md").read_text()
    with pytest.raises(UserError, match=r"--calibration_data: the fusion model's heads are \['regression'\]"):
        _evaluate(run, files, tmp_path / "eval", "--calibration_data", files["calibration"])


def test_fusion_config_refuses_bad_calibration_temperatures():
    tasks = [{"name": "label", "problem_type": "single_label_classification", "labels": ["a", "b"]},
             {"name": "score", "problem_type": "regression", "labels": ["score"]}]  # fmt: skip
    with pytest.raises(ValueError, match="must be > 0"):
        MultimodalFusionConfig(modalities=["tabular"], tabular_num_numeric=1, tasks=tasks,
                               calibration_temperature={"label": 0.0})  # fmt: skip
    for name in ("score", "nope"):
        config = MultimodalFusionConfig(modalities=["tabular"], tabular_num_numeric=1, tasks=tasks,
                                        calibration_temperature={name: 2.0})  # fmt: skip
        with pytest.raises(ValueError, match=f"names \\['{name}'\\]: not classification heads"):
            config.check()
