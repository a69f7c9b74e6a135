"""Report files: JSON + text table, confusion matrix PNG, training curves, before/after table."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk

from mm_hf.metrics import load_metric
from mm_hf.reports import (
    format_before_after_table,
    plot_training_curves,
    write_classification_report,
    write_confusion_matrix,
)

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]


@pytest.fixture(scope="module")
def labels():
    rng = np.random.default_rng(0)
    references = rng.integers(0, len(NAMES), 40)
    predictions = np.where(rng.random(40) < 0.6, references, rng.integers(0, 5, 40))
    return references, predictions


@pytest.fixture(scope="module")
def report(labels):
    references, predictions = labels
    return load_metric("classification_report").compute(
        predictions=predictions,
        references=references,
        num_labels=len(NAMES),
        target_names=NAMES,
    )


def _assert_png(path):
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) > 100


def test_text_report_is_sklearn_table(tmp_path, report, labels):
    text = write_classification_report(report, tmp_path, prefix="test_")

    expected = sk.classification_report(
        *labels, labels=range(len(NAMES)), target_names=NAMES, digits=4, zero_division=0
    )
    assert text == expected
    assert (tmp_path / "test_classification_report.txt").read_text() == text
    saved = json.loads((tmp_path / "test_classification_report.json").read_text())
    assert saved == report


def test_text_report_lists_every_class_and_top_k(tmp_path, report):
    text = write_classification_report({**report, "top5_accuracy": 0.975}, tmp_path)
    for name in NAMES:
        assert name in text
    assert "top5 accuracy" in text
    assert "0.9750" in text
    rows = [line for line in text.splitlines() if line.strip()]
    assert len({len(row) for row in rows[1:]}) == 1  # every data row aligned


def test_confusion_matrix_files(tmp_path, report):
    png = write_confusion_matrix(report, tmp_path, prefix="eval_")

    saved = json.loads((tmp_path / "eval_confusion_matrix.json").read_text())
    assert saved["labels"] == NAMES
    assert saved["matrix"] == report["confusion_matrix"]
    assert png == tmp_path / "eval_confusion_matrix.png"
    _assert_png(png)


def test_confusion_matrix_with_many_classes(tmp_path):
    names = [f"species_{i:02d}" for i in range(50)]
    rng = np.random.default_rng(1)
    references = rng.integers(0, 50, 500)
    report = load_metric("classification_report").compute(
        predictions=references, references=references, num_labels=50, target_names=names
    )
    _assert_png(write_confusion_matrix(report, tmp_path))


HISTORY = [
    {"loss": 2.0, "learning_rate": 1e-4, "epoch": 0.5, "step": 5},
    {"loss": 1.5, "learning_rate": 5e-5, "epoch": 1.0, "step": 10},
    {
        "eval_loss": 1.4,
        "eval_accuracy": 0.5,
        "eval_macro_f1": 0.4,
        "eval_runtime": 0.3,
        "epoch": 1.0,
        "step": 10,
    },
    {"train_runtime": 3.0, "train_loss": 1.75, "epoch": 1.0, "step": 10},
]


@pytest.mark.parametrize(
    "history",
    [HISTORY, [log for log in HISTORY if "eval_loss" not in log], []],
    ids=["with-eval", "train-only", "empty"],
)
def test_training_curves(tmp_path, history):
    path = plot_training_curves(history, tmp_path / "plots" / "curves.png")
    _assert_png(path)


def test_before_after_table():
    before = {"eval_accuracy": 0.25, "eval_macro_f1": 0.125, "eval_runtime": 1.0}
    after = {"accuracy": 0.875, "top5_accuracy": 0.99, "macro_f1": 0.8}

    table = format_before_after_table(before, after)

    lines = table.splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == [
        "metric",
        "before (zero-shot)",
        "after (fine-tuned)",
        "change",
    ]
    rows = {
        cells[0]: cells[1:] for cells in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:])
    }
    assert rows == {
        "accuracy": ["0.2500", "0.8750", "+0.6250"],
        "top5_accuracy": ["–", "0.9900", "–"],
        "macro_f1": ["0.1250", "0.8000", "+0.6750"],
    }  # weighted_f1 is in neither dict, so it is skipped
    assert len({len(line) for line in lines}) == 1  # padded for the console
