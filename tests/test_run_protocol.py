"""mm_hf.run.train_and_evaluate (the one before -> train -> after protocol) and mm_hf.outputs.save_run (the one
output folder writer with its typed RunInfo record), driven directly rather than through a recipe."""

import json
import os

import pytest
import torch
from transformers import Trainer, TrainingArguments

from mm_hf.args import FinetuneArguments
from mm_hf.cards import RunInfo, read_run_info, write_run_info
from mm_hf.models.fusion import Task
from mm_hf.outputs import save_run, task_report_writer
from mm_hf.run import RunResult, train_and_evaluate


class RecordingMeasure:
    """A measure that scores `accuracy` as the model's weight and remembers every call."""

    write_report = None

    def __init__(self, trainer):
        self.trainer, self.calls, self.report = trainer, [], None

    def score(self, split, prefix):
        self.calls.append((split, prefix))
        self.report = {"called": prefix}
        return {f"{prefix}_accuracy": float(self.trainer.model.weight.item())}

    before = after = score

    def validation(self, split):
        self.calls.append(("validation", split))
        return {"eval_loss": 0.5} if split != "validation" else {}

    def table_metrics(self, key):
        return ["accuracy"]

    def headline(self, split, key):
        return f"measured {split} as {key}"


class Weight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))


def tiny_trainer(tmp_path, **args):
    training_args = TrainingArguments(str(tmp_path / "out"), report_to="none", use_cpu=True, **args)
    return Trainer(model=Weight(), args=training_args)


@pytest.mark.parametrize(
    ("splits", "key"), [(("train", "validation", "test"), "test"), (("train", "validation"), "eval")]
)
def test_protocol_measures_before_fits_then_measures_after(tmp_path, splits, key):
    trainer = tiny_trainer(tmp_path, do_train=True)
    datasets = {name: list(range(10 + i)) for i, name in enumerate(splits)}
    measure = RecordingMeasure(trainer)
    seen = {}

    def fit(train, validation):  # what an L-BFGS probe does: set the weights, report what it chose
        seen.update(train=train, validation=validation)
        with torch.no_grad():
            trainer.model.weight.fill_(0.75)
        return {"probe_l2": 0.1}

    run = train_and_evaluate(trainer, datasets, measure, FinetuneArguments(), before_label="untrained", fit=fit)
    split = "test" if key == "test" else "validation"
    assert measure.calls == [(split, f"zeroshot_{key}"), ("validation", split), (split, key)]
    assert seen == {"train": datasets["train"], "validation": datasets["validation"]}
    assert run.results[f"zeroshot_{key}_accuracy"] == 0.0 and run.results[f"{key}_accuracy"] == 0.75
    assert run.results["probe_l2"] == 0.1 and run.results["train_samples"] == 10
    assert run.train_runtime == run.results["train_runtime"] >= 0
    assert ("eval_loss" in run.results) == (key == "test")  # the validation split's Trainer metrics, not measured twice
    assert run.before_report == {"called": f"zeroshot_{key}"} and run.after_report == {"called": key}
    assert run.eval_key == key and run.headline == f"measured {split} as {key}"
    assert run.trainable["trainable_params"] == run.trainable["total_params"] == 1
    assert "before (untrained)" in run.table and "| accuracy" in run.table and "+0.7500" in run.table


def test_protocol_without_do_train_measures_twice_and_trains_nothing(tmp_path):
    trainer = tiny_trainer(tmp_path, do_train=False)
    run = train_and_evaluate(
        trainer, {"train": [0], "test": [1]}, RecordingMeasure(trainer), FinetuneArguments(), before_label="zero-shot"
    )
    assert run.train_runtime is None and "train_samples" not in run.results
    assert run.results["zeroshot_test_accuracy"] == run.results["test_accuracy"] == 0.0


def result(report=None, write_report=None):
    before = {"zeroshot_test_accuracy": 0.25}
    after = {"test_accuracy": 0.75, "test_samples": 4}
    return RunResult(
        results={**before, **after, "train_runtime": 1.5},
        table="| metric | before | after |\n",
        headline="Evaluation on the test split (4 samples)",
        eval_key="test",
        before_label="untrained heads",
        train_runtime=1.5,
        trainable={"trainable_params": 3, "total_params": 4, "trainable_share_percent": 75.0},
        before_report=report,
        after_report=report,
        write_report=write_report,
    )


INFO = dict(
    base_model="org/encoder",
    dataset="local-data",
    command="accelerate launch recipes/x.py",
    finetune_strategy="full",
)
TASK = Task("label", "single_label_classification", ["no", "yes"])
REPORT = {"label": {"accuracy": 0.75, "no_precision": 1.0, "no_recall": 0.5, "no_f1": 0.667, "yes_precision": 0.667,
                    "yes_recall": 1.0, "yes_f1": 0.8}}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "run", "info"),
    [
        ("classifier", result(REPORT, task_report_writer([TASK])), RunInfo(pipeline_tag="image-classification", **INFO)),
        ("retrieval", result(), RunInfo(pipeline_tag="zero-shot-image-classification", task="image-text retrieval", **INFO)),
        ("fusion", result(REPORT, task_report_writer([TASK])),
         RunInfo(pipeline_tag=None, task="multimodal (image + text) classification", usage="fusion",
                 eval_task_type="multimodal-classification", extra_tags=[], **INFO)),
    ],
)  # fmt: skip
def test_save_run_writes_one_output_folder_for_every_kind(tmp_path, capsys, kind, run, info):
    trainer = tiny_trainer(tmp_path)
    saved = []

    def save(trainer, output_dir, merge_lora):
        saved.append((output_dir, merge_lora))
        os.makedirs(output_dir, exist_ok=True)
        return "merged" if merge_lora else "full"

    skipped = {"train": [("a.png", "truncated")], "test": []}
    config = {"learning_rate": 0.001}
    results = save_run(
        trainer, run, info, config=config, skipped=skipped, push_to_hub=False, merge_lora=True, save=save
    )
    out = tmp_path / "out"
    assert saved == [(str(out), True)]
    files = set(os.listdir(out))
    assert {"all_results.json", "run_config.yaml", "before_after.md", "run_info.json", "README.md"} <= files
    assert (
        ("classification_report.txt" in files)
        == ("zeroshot_classification_report.txt" in files)
        == (kind != "retrieval")
    )
    on_disk = json.loads((out / "all_results.json").read_text())
    assert on_disk == results and on_disk["skipped_bad_samples"] == 1 and on_disk["test_accuracy"] == 0.75
    recorded = json.loads((out / "run_info.json").read_text())
    card = (out / "README.md").read_text()
    assert recorded["task"] == info.task and recorded["pipeline_tag"] == info.pipeline_tag
    assert (recorded["saved_as"], recorded["eval_split"], recorded["before_label"]) == (
        "merged",
        "test",
        "untrained heads",
    )
    assert recorded["trainable"]["trainable_params"] == 3 and "3 of 4 parameters trained (75.00 %)" in card
    assert recorded["train_runtime"] == 1.5 and recorded["hardware"].startswith(("CPU", "1 ", "2 "))
    # Fields a recipe did not set are left out, so each recipe's run_info.json keeps the keys it always had.
    assert ("usage" in recorded) == (kind == "fusion") and "head" not in recorded
    assert read_run_info(str(out)).task == info.task
    assert "(untrained heads)" in card and ("Per-class report" in card) == (kind != "retrieval")
    printed = capsys.readouterr().out
    assert "Evaluation on the test split (4 samples):" in printed
    assert "Skipped 1 unreadable samples: a.png (truncated)" in printed


def test_run_info_defaults_the_task_to_the_pipeline_tag_and_round_trips(tmp_path):
    trainable = {"trainable_params": 1, "total_params": 2, "trainable_share_percent": 50.0}
    info = RunInfo(pipeline_tag="audio-classification", head={"head_init": "random"}, trainable=trainable, **INFO)
    assert info.task == "audio-classification"
    written = write_run_info(str(tmp_path), info)
    assert "usage" not in written and "extra_tags" not in written and written["head"] == {"head_init": "random"}
    back = read_run_info(str(tmp_path))
    assert back == RunInfo(
        **{**vars(info), "hardware": written["hardware"], "transformers_version": written["transformers_version"]}
    )
