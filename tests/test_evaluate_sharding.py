"""python -m mm_hf.evaluate sharded over processes for fusion checkpoints and --retrieval dual encoders: every pass is
split across the processes and gathered in row order, so 2 processes report what 1 reports (the classifiers' own
2-process test is test_evaluate_cli.test_two_process_sharded_evaluation_equals_one_process)."""

import json
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import REPO
from test_evaluate_cli import ACCELERATE_CONFIG, free_port
from test_evaluate_fusion_calibration import _tabular_run

from mm_hf.args import DataArguments
from mm_hf.data.multimodal import MultimodalColumns
from mm_hf.data.synthetic import write_imagetext_xor
from mm_hf.evaluate import main
from mm_hf.evaluate.fusion import head_outputs, load_fusion, read_set
from mm_hf.models.tiny import build_tiny_encoders

# Keys that name the run rather than measure it: the command line and the process count differ by design.
# What describes the run rather than the evaluation: `cost` holds this process's peak RSS (and timings).
RUN_KEYS = ("command", "processes", "cost")


def _pass_on_one_of_two(rank, rendezvous, model, dataset, transform, tasks, out):
    """Process `rank` of a 2-process gloo group: the sharded pass, and how many rows its own forward passes saw."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    rows = []
    forward = model.forward
    model.forward = lambda **inputs: (rows.append(len(next(iter(inputs.values())))), forward(**inputs))[1]
    logits, labels, _ = head_outputs(model, dataset, transform, tasks, batch_size=2, num_workers=0, device="cpu",
                                     description="", progress=False, world_size=2)  # fmt: skip
    np.savez(out, logits=logits[0], labels=labels[0], rows=sum(rows))
    dist.destroy_process_group()


def test_sharded_fusion_pass_gathers_every_row_once_in_order(tmp_path):
    """Two real gloo processes (forked, so nothing is imported again) run a fusion scoring pass over 7 rows: each
    computes only its block (4 and 3 rows) and both get all 7 rows' logits and labels in the file's order, equal to
    one process's pass."""
    tasks = [{"name": "label", "problem_type": "single_label_classification", "labels": ["a", "b", "c"]}]
    run, files, _ = _tabular_run(tmp_path, tasks, sizes=(6, 7))
    model, processor = load_fusion(str(run))
    columns = MultimodalColumns(numeric=["x1", "x2"], labels=["label"])
    dataset, _ = read_set(files["test"], columns, "single_label_classification", tasks[0], None, DataArguments(), None)
    transform = processor.transform(train=False)
    (one,), (labels,), _ = head_outputs(model, dataset, transform, tasks, batch_size=2, num_workers=0, device="cpu",
                                        description="", progress=False)  # fmt: skip
    assert one.shape == (7, 3)

    context = multiprocessing.get_context("fork")
    outs = [tmp_path / f"rank{rank}.npz" for rank in range(2)]
    processes = [
        context.Process(target=_pass_on_one_of_two,
                        args=(rank, tmp_path / "rendezvous", model, dataset, transform, tasks, outs[rank]))
        for rank in range(2)
    ]  # fmt: skip
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=60)
    finally:
        for process in processes:
            if process.is_alive():  # a hung collective: end our own children, the test then fails on the exit codes
                process.terminate()
    assert [p.exitcode for p in processes] == [0, 0]
    results = [np.load(out) for out in outs]
    assert [int(r["rows"]) for r in results] == [4, 3]  # each process ran its own block only
    for result in results:
        np.testing.assert_allclose(result["logits"], one, atol=1e-6)
        np.testing.assert_array_equal(result["labels"], labels)


def _assert_same_numbers(two, one, path="evaluation"):
    """Every value of `two` equals `one`'s (numbers to 1e-6), the keys of RUN_KEYS aside."""
    if isinstance(one, dict):
        assert set(two) == set(one), f"{path}: keys {sorted(set(two) ^ set(one))} differ"
        for key in one:
            if key not in RUN_KEYS:
                _assert_same_numbers(two[key], one[key], f"{path}.{key}")
    elif isinstance(one, list):
        assert len(two) == len(one), path
        for i, (a, b) in enumerate(zip(two, one, strict=True)):
            _assert_same_numbers(a, b, f"{path}[{i}]")
    elif isinstance(one, float):
        assert two == pytest.approx(one, abs=1e-6), path
    else:
        assert two == one, path


def _launch(*argv) -> subprocess.CompletedProcess:
    """`accelerate launch ARGV` (a module with -m, or a recipe) on 2 gloo CPU processes; checks it succeeded."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG, "--multi_gpu",
        "--num_processes", "2", "--main_process_port", str(free_port()), *map(str, argv),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow  # three accelerate launches of 2 processes (~40 s on the busy 2-core machine)
def test_two_process_fusion_and_retrieval_evaluations_equal_one_process(tiny_vtde, digits_dir, tmp_path):
    """accelerate launch -m mm_hf.evaluate on 2 gloo processes, for an image+text fusion checkpoint (13 test rows,
    some missing a modality; an OOD set, the calibration fit, each modality missing, text and image corruptions) and
    for a dual encoder on --retrieval (19 items, corrupted items and captions): evaluation.json equals one process's,
    every number to 1e-6, with 2 processes recorded. The fusion run itself is trained on 2 processes with
    --ood_file / --robustness, whose sharded numbers equal the 1-process evaluation of its checkpoint too."""
    encoders = build_tiny_encoders(str(tmp_path / "encoders"))
    data = write_imagetext_xor(str(tmp_path / "data"), sizes=(16, 7, 13), seed=0, missing_rate=0.2)
    run = tmp_path / "run"
    # Fusion in batches of 1: a row's logits move by ~6e-8 with the other rows of its batch (BERT over padded text),
    # which breaks the exact ties of repeated rows either way, and ROC-AUC with them (one process, batches of 1/4/7:
    # 0.708/0.722/0.694 with the image missing); one-row batches are the same in any shard.
    trained = _launch(
        os.path.join(REPO, "recipes", "fusion_imagetext_cls.py"), "--vision_model_name_or_path", encoders["vision"],
        "--text_model_name_or_path", encoders["text"], "--image_column", "image", "--text_column", "text",
        "--label_column", "label", "--train_file", data["train"], "--validation_file", data["validation"],
        "--test_file", data["test"], "--output_dir", run, "--do_train", "--do_predict", "--use_cpu", "true",
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "1",
        "--fusion", "cross_attention", "--hidden_size", "32", "--max_seq_length", "12", "--finetune_strategy", "full",
        "--ddp_find_unused_parameters", "false", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm",
        "true", "--ood_file", f"val={data['validation']}", "--robustness", "typos,gaussian_noise",
        "--robustness_severities", "5", "--seed", "3",
    )  # fmt: skip
    common = [
        "--dataloader_num_workers",
        "0",
        "--disable_tqdm",
        "--device",
        "cpu",
        "--latency_runs",
        "0",
        "--seed",
        "3",
    ]
    fusion = ["--model", f"fusion={run}", "--test_file", data["test"], "--ood", f"val={data['validation']}",
              "--calibration_data", data["validation"], "--corruptions", "typos,gaussian_noise", "--severities", "5",
              "--per_device_eval_batch_size", "1", *common]  # fmt: skip
    retrieval = ["--retrieval", "--model", f"zs={tiny_vtde}", "--test_dir", str(digits_dir / "test"),
                 "--max_predict_samples", "19", "--corruptions", "gaussian_noise,typos", "--severities", "3",
                 "--per_device_eval_batch_size", "4", *common]  # fmt: skip
    evaluations = {}
    for argv, name in ((fusion, "fusion"), (retrieval, "retrieval")):
        one = main(["--output_dir", str(tmp_path / f"{name}_one"), *argv])
        out = tmp_path / f"{name}_two"
        proc = _launch("-m", "mm_hf.evaluate", "--output_dir", out, *argv)
        assert proc.stdout.count("Evaluated ") == 1  # the main process alone reports and writes
        two = json.loads((out / "evaluation.json").read_text())
        assert (one["processes"], two["processes"]) == (1, 2)
        _assert_same_numbers(two, one)
        evaluations[name] = two
    fusion = evaluations["fusion"]["models"]["fusion"]
    assert evaluations["fusion"]["sets"]["test"]["samples"] == 13 and set(
        fusion["sets"]["val"]["missing_modality"]
    ) == {
        "image",
        "text",
    }
    assert "after | ood val: 7 rows in" in trained.stderr and "on 2 process(es)" in trained.stderr  # shared_pass's log
    results = json.loads((run / "all_results.json").read_text())
    assert results["ood_val_accuracy"] == pytest.approx(fusion["sets"]["val"]["metrics"]["accuracy"], abs=1e-9)
    for corruption in ("typos", "gaussian_noise"):
        assert results[f"corruption_{corruption}_s5_accuracy"] == pytest.approx(fusion["corruptions"][corruption]["5"])
    retrieval = evaluations["retrieval"]
    assert retrieval["sets"]["test"]["samples"] == 19
    assert set(retrieval["models"]["zs"]["corruptions"]) == {"gaussian_noise", "typos"}
