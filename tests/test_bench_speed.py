"""mm_hf.bench.speed: the step timer splits a Trainer step into waiting for data and compute, and the rows, ratios,
target checks, table and JSON are built from what it measured (the full benchmark is `make bench`, not a test)."""

import json
import time

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from mm_hf.bench.report import format_checks
from mm_hf.bench.speed import Case, aggregate, format_table, target_checks, write_json
from mm_hf.bench.speed_rows import StepTimer

DATA_DELAY, COMPUTE_DELAY, BATCH, STEPS = 0.05, 0.1, 2, 3


class SleepyData(torch.utils.data.Dataset):
    def __init__(self, delay: float):
        self.delay = delay

    def __len__(self):  # one batch more than the steps: accelerate's loader reads one ahead (StepTimer)
        return BATCH * (STEPS + 1)

    def __getitem__(self, index):
        time.sleep(self.delay)
        return {"x": torch.full((4,), float(index)), "labels": torch.tensor(index % 2)}


class SleepyModel(nn.Module):
    def __init__(self, delay: float):
        super().__init__()
        self.linear, self.delay = nn.Linear(4, 2), delay

    def forward(self, x, labels=None):
        time.sleep(self.delay)
        logits = self.linear(x)
        return SequenceClassifierOutput(loss=nn.functional.cross_entropy(logits, labels), logits=logits)


def timed_training(tmp_path, data_delay: float, compute_delay: float) -> dict:
    timer = StepTimer()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=BATCH, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, use_cpu=True,
    )  # fmt: skip
    Trainer(
        model=SleepyModel(compute_delay), args=args, train_dataset=SleepyData(data_delay), callbacks=[timer]
    ).train()
    return timer.summary()


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    """A run starved by its data (each sample sleeps) and one held up by its model (each forward sleeps)."""
    tmp = tmp_path_factory.mktemp("speed")
    return {
        "data-bound": timed_training(tmp / "a", DATA_DELAY, 0.0),
        "compute-bound": timed_training(tmp / "b", 0.0, COMPUTE_DELAY),
    }


def test_step_timer_splits_waiting_for_data_from_compute(summaries):
    starved, busy = summaries["data-bound"], summaries["compute-bound"]
    assert starved["steps"] == busy["steps"] == STEPS - 1  # the first step (loader start-up) is left out
    assert starved["samples_per_step"] == BATCH
    # Each batch of the starved run took BATCH sleeps of DATA_DELAY to fetch; each step of the busy one a sleep of
    # COMPUTE_DELAY. The rest is Trainer's own work, which a loaded machine stretches: hence the loose bounds.
    assert starved["wait_s_per_step"] >= BATCH * DATA_DELAY > busy["wait_s_per_step"]
    assert busy["compute_s_per_step"] >= COMPUTE_DELAY > starved["compute_s_per_step"]
    assert starved["data_wait_fraction"] > 0.5 > busy["data_wait_fraction"]
    assert 0.5 / DATA_DELAY < starved["pipeline_samples_per_s"] <= 1 / DATA_DELAY
    assert busy["train_samples_per_s"] <= BATCH / COMPUTE_DELAY


def test_rows_ratios_targets_table_and_json(summaries, tmp_path):
    """The compute-bound run as the plain loop and the uncached probe, the data-bound one as LoRA: the ratio is
    taken to the plain loop's round, the waiting target passes for the probe and fails for LoRA."""
    case = Case("clip_imagecls", "real", "a model", "image", ["--flag", "1"],
                (("linear_probe (no cache)", ["--finetune_strategy", "linear_probe"]), ("lora", [])), {"modality": "image"})  # fmt: skip
    busy, starved = summaries["compute-bound"], summaries["data-bound"]
    rows = aggregate(case, {"plain": [busy], "examples": [busy], "linear_probe (no cache)": [busy], "lora": [starved]})
    lora = next(r for r in rows if r["row"] == "lora")
    expected = starved["train_samples_per_s"] / busy["train_samples_per_s"]
    assert lora["train_samples_per_s_x_plain"] == pytest.approx(expected)
    assert lora["argv"][:2] == ["--flag", "1"] and rows[0]["argv"] is None  # baselines run no recipe

    checks = target_checks(rows)
    assert [(c["check"], c["pass"]) for c in checks] == [
        ("data waiting < 10 % (linear_probe (no cache))", True),
        ("data waiting < 10 % (lora)", False),
    ]
    assert "FAIL data waiting < 10 % (lora) [clip_imagecls]" in format_checks(checks)
    table = format_table(rows)
    assert f"| clip_imagecls | real | lora | {starved['train_samples_per_s']:.1f} | {expected:.2f}× |" in table

    write_json(str(tmp_path / "bench.json"), {"date": "today"}, {"rounds": 1}, rows, checks)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["targets"] == checks and [r["row"] for r in saved["rows"]] == [r["row"] for r in rows]


def test_pipeline_bench_times_every_path_in_batches(capsys):
    from mm_hf.bench import pipeline

    rows = pipeline.main(["--rounds", "1", "--images", "2", "--batch_size", "2"])
    timed = [r for r in rows if "mode" in r]
    assert [(r["image"], r["mode"]) for r in timed] == [
        (f"{w}x{h} JPEG", mode) for w, h in pipeline.SIZES for mode in ("train", "eval")
    ]
    for r in timed:
        assert r["before_ratio"] == 1.0
        assert all(r[f"{kind}_img_s"] > 0 and r[f"{kind}_ratio"] > 0 for kind in pipeline.KINDS)
    # Large JPEGs are decoded at a reduced scale: even one round of two images is several times faster.
    assert timed[0]["uint8_ratio"] > 2.0, timed[0]
    out = capsys.readouterr().out
    assert "| 500x375 JPEG | train |" in out and "train crops, same seed, 500x375: mean |after - before| = 0.00" in out
