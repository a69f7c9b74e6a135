"""recipes/clip_imagecls.py as a real 2-process run (gloo on CPU): metrics cover the test split exactly once.

`accelerate launch --cpu --num_processes 2` starts a single process, so the runs below use `--multi_gpu`
(recipes/accelerate/cpu_2proc.yaml) together with the recipe's `--use_cpu true`, which makes the two
processes one `MULTI_CPU` group.
The eval batch size 3 does not divide the 20 test images over 2 processes: accelerate pads the last
batch with duplicates, which must be dropped before any metric or report is computed.
"""

import json
import logging
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification, AutoProcessor

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.data.transforms import build_image_transform
from mm_hf.models import load_finetuned

CLASSES = ["one", "three", "two", "zero"]
STEPS, TRAIN_BATCH, EVAL_BATCH, PROCESSES = 4, 4, 3, 2
N_TRAIN, N_TEST = 48, 20
RECIPE = os.path.join(REPO, "recipes", "clip_imagecls.py")
ACCELERATE_CONFIG = os.path.join(REPO, "recipes", "accelerate", "cpu_2proc.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(model, data, out, *extra, timeout=240):
    # The config file also keeps a user's default accelerate config (GPU ids, mixed precision...) out.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG,
        "--multi_gpu", "--num_processes", str(PROCESSES), "--main_process_port", str(free_port()),
        RECIPE,
        "--model_name_or_path", str(model), "--train_dir", str(data / "train"),
        "--validation_dir", str(data / "validation"), "--test_dir", str(data / "test"), "--output_dir", str(out),
        "--do_train", "--do_eval", "--do_predict", "--use_cpu", "true", "--max_steps", str(STEPS),
        "--per_device_train_batch_size", str(TRAIN_BATCH), "--per_device_eval_batch_size", str(EVAL_BATCH),
        "--learning_rate", "1e-3", "--report_to", "none", "--disable_tqdm", "true",
        # zeroshot, not auto: the loss tolerance below was set for this head (a random one spreads per-image losses
        # wider, so the padded last batches move Trainer's mean loss further).
        "--prompt_templates", "a photo of the digit {}.", "--head_init", "zeroshot", *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def captioned_digits(digits_dir, tmp_path):
    import shutil

    from mm_hf.demo import write_digit_captions

    data = tmp_path / "digits"
    shutil.copytree(digits_dir, data)
    write_digit_captions(str(data))
    return data


def launch_retrieval(model, data, out, *extra, timeout=240):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG,
        "--multi_gpu", "--num_processes", str(PROCESSES), "--main_process_port", str(free_port()),
        os.path.join(REPO, "recipes", "clip_retrieval.py"), "--model_name_or_path", str(model),
        "--train_dir", str(data / "train"), "--validation_dir", str(data / "validation"),
        "--test_dir", str(data / "test"), "--output_dir", str(out), "--do_train", "--use_cpu", "true",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "3",
        "--finetune_strategy", "lock_text", "--ddp_find_unused_parameters", "false", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", "--max_seq_length", "12", *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def check_ok(proc):
    assert proc.returncode == 0, f"exit code {proc.returncode}\n--- stderr (tail) ---\n{proc.stderr[-6000:]}"


@torch.no_grad()
def recompute(model, processor, test_dir):
    """(labels, logits) of `model` over every image of `test_dir`, once, with the eval transform."""
    paths = sorted(test_dir.glob("*/*.png"))
    transform = build_image_transform(processor.image_processor, train=False)
    pixel_values = torch.stack(transform({"image": [str(p) for p in paths]})["pixel_values"])
    model.eval()
    return torch.tensor([CLASSES.index(p.parent.name) for p in paths]), model(pixel_values=pixel_values).logits


@pytest.mark.parametrize("strategy", ["full", "linear_probe", "lora"])
def test_two_process_run_reports_each_test_image_once(strategy, tiny_vtde, digits_dir, tmp_path):
    out = tmp_path / "out"
    # find_unused_parameters=False makes DDP fail loudly if a trainable parameter gets no gradient
    # (e.g. a text tower left trainable), instead of silently searching the graph every step.
    # Replicas log at --log_level_replica (warning): each INFO line once, unless one asks for the replicas' too.
    replicas_log = strategy == "lora"
    verbose = ("--log_level_replica", "info") if replicas_log else ()
    # linear_probe by Trainer epochs here (DDP over cached features); the L-BFGS fit has its own test below.
    solver = ("--probe_solver", "trainer") if strategy == "linear_probe" else ()
    proc = launch(
        tiny_vtde,
        digits_dir,
        out,
        "--finetune_strategy",
        strategy,
        "--ddp_find_unused_parameters",
        "false",
        *verbose,
        *solver,
    )
    check_ok(proc)

    # Really two processes in one group: it is logged, rank 1 saved its RNG state, and each optimizer
    # step consumed 2 x 4 training images (one process would have reached only 4 * 4 / 48 of an epoch).
    logged = PROCESSES if replicas_log else 1
    assert proc.stderr.count(f"world_size={PROCESSES} (DistributedType.MULTI_CPU)") == logged, proc.stderr[-3000:]
    # Logged by the protocol (mm_hf.run.train_and_evaluate), once per logging process.
    assert proc.stderr.count(f"INFO mm_hf.run: finetune_strategy={strategy}") == logged, proc.stderr[-3000:]
    checkpoint = out / f"checkpoint-{STEPS}"
    assert {f"rng_state_{rank}.pth" for rank in range(PROCESSES)} <= set(os.listdir(checkpoint))
    results = json.loads((out / "all_results.json").read_text())
    assert results["epoch"] == pytest.approx(STEPS * TRAIN_BATCH * PROCESSES / N_TRAIN)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS

    # Every metric counts each test image exactly once: padding duplicates were dropped.
    assert results["test_samples"] == N_TEST and results["train_samples"] == N_TRAIN
    for prefix in ("zeroshot_", ""):  # the fine-tuned ones last, checked below
        report = json.loads((out / f"{prefix}classification_report.json").read_text())
        assert sorted(report["per_class"]) == CLASSES
        assert sum(c["support"] for c in report["per_class"].values()) == N_TEST
        matrix = json.loads((out / f"{prefix}confusion_matrix.json").read_text())
        assert np.asarray(matrix["matrix"]).sum() == N_TEST
        assert np.asarray(matrix["matrix"]).sum(axis=1).tolist() == [5, 5, 5, 5]
    assert report["accuracy"] == pytest.approx(results["test_accuracy"])

    # The logged numbers are the saved model's over the whole test folder, computed once here. Processes
    # training unsynchronised copies (no DDP wrapper) fail this too: rank 1's copy scores its shard, rank 0's is saved.
    processor = AutoProcessor.from_pretrained(out)
    model = load_finetuned(str(out)) if strategy == "lora" else AutoModelForImageClassification.from_pretrained(out)
    labels, logits = recompute(model, processor, digits_dir / "test")
    predictions = logits.argmax(-1)
    assert len(labels) == N_TEST
    assert results["test_accuracy"] == pytest.approx((predictions == labels).float().mean().item())
    # Not exact: Trainer averages per-batch mean losses, and the last batches hold the padding. But a loss
    # scaled by the world size (Trainer's num_items_in_batch handling, see the recipe) is far outside.
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert results["test_loss"] == pytest.approx(loss, rel=0.02), (results["test_loss"], loss)
    expected = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    np.add.at(expected, (labels.numpy(), predictions.numpy()), 1)
    assert np.asarray(matrix["matrix"]).tolist() == expected.tolist()

    # Outputs were written by the main process only (one summary printed), as whole files that parse.
    assert proc.stdout.count("Evaluation on the test split (20 samples)") == 1
    card = ModelCard.load(out / "README.md")
    index = {m["type"]: m["value"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    assert index["accuracy"] == pytest.approx(results["test_accuracy"])
    assert "accelerate launch recipes/clip_imagecls.py" in card.text
    saved = "adapter_model.safetensors" if strategy == "lora" else "model.safetensors"
    assert (out / saved).is_file() and (out / "config.json").is_file()


@pytest.mark.parametrize(
    ("main", "flags", "level"),
    [
        (True, [], logging.INFO),  # "passive": mm-hf's progress messages
        (True, ["--log_level", "error"], logging.ERROR),
        (False, [], logging.WARNING),  # --log_level_replica's default
        (False, ["--log_level_replica", "info"], logging.INFO),
    ],
)
def test_log_level_of_main_process_and_replicas(monkeypatch, tmp_path, main, flags, level):
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    from mm_hf.args import FinetuneArguments
    from mm_hf.run import start_run

    monkeypatch.setattr(TrainingArguments, "should_log", property(lambda self: main))
    root, hf_level = logging.getLogger().level, hf_logging.get_verbosity()
    try:
        start_run((FinetuneArguments, TrainingArguments), ["--output_dir", str(tmp_path), "--use_cpu", "true", *flags])
        assert logging.getLogger("mm_hf.training").getEffectiveLevel() == level
        assert hf_logging.get_verbosity() == (logging.WARNING if main and not flags else level)
    finally:
        logging.getLogger().setLevel(root)
        hf_logging.set_verbosity(hf_level)


def test_two_process_lbfgs_probe_reports_the_saved_fit(tiny_vtde, digits_dir, tmp_path):
    """Each process fits the same head from the same cached features; the saved one gives the logged numbers."""
    out = tmp_path / "out"
    check_ok(launch(tiny_vtde, digits_dir, out, "--finetune_strategy", "linear_probe"))
    results = json.loads((out / "all_results.json").read_text())
    assert results["probe_solver"] == "lbfgs" and results["test_samples"] == N_TEST
    model = AutoModelForImageClassification.from_pretrained(out)
    labels, logits = recompute(model, AutoProcessor.from_pretrained(out), digits_dir / "test")
    assert results["test_accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    # Trainer averages per-batch means over padded batches (see above): near, not equal; a world-size factor is far.
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert results["test_loss"] == pytest.approx(loss, rel=0.1), (results["test_loss"], loss)


def test_multi_process_launch_without_use_cpu_fails_fast(tiny_vtde, digits_dir, tmp_path):
    """Without GPUs and --use_cpu, each launched process would run alone, all writing one output folder."""
    out = tmp_path / "out"
    proc = launch(tiny_vtde, digits_dir, out, "--finetune_strategy", "linear_probe", "--use_cpu", "false", timeout=120)
    assert proc.returncode != 0
    assert "pass --use_cpu true" in proc.stderr
    assert not out.exists() or not os.listdir(out)


def test_two_process_contrastive_run_gathers_negatives(tiny_vtde, digits_dir, tmp_path):
    """clip_retrieval on 2 processes: DDP + gathered negatives run, evaluation happens once on the whole split.

    That the gathered loss and gradients equal a single process with the global batch is shown exactly
    in tests/test_losses.py; here the recipe's distributed path runs end to end.
    """
    data, out = captioned_digits(digits_dir, tmp_path), tmp_path / "out"
    proc = launch_retrieval(tiny_vtde, data, out, "--max_steps", "3", "--do_eval")
    check_ok(proc)
    assert proc.stderr.count(f"world_size={PROCESSES} (DistributedType.MULTI_CPU)") == 1  # the main process's
    assert proc.stdout.count("Retrieval on the test split (20 images)") == 1
    results = json.loads((out / "all_results.json").read_text())
    assert results["epoch"] == pytest.approx(3 * 4 * PROCESSES / N_TRAIN)
    assert results["test_num_items"] == N_TEST and results["test_num_texts"] == 4 * N_TEST
    assert "eval_loss" in results and "zeroshot_test_image_to_text_recall@1" in results


def test_gather_negatives_false_contrasts_within_each_process(tiny_vtde, digits_dir, tmp_path):
    """The first step's loss tells the batch that was contrasted. The tiny model's random text tower gives every
    caption the same embedding, so InfoNCE over B pairs is ln B plus a small image-side term (>= 0): at least ln 8
    over the gathered global batch (2 processes x 4 pairs), about ln 4 within each process's own 4 pairs."""
    data, out = captioned_digits(digits_dir, tmp_path), tmp_path / "out"
    check_ok(launch_retrieval(tiny_vtde, data, out, "--max_steps", "1", "--gather_negatives", "false"))
    loss = json.loads((out / "all_results.json").read_text())["train_loss"]
    assert math.log(4) - 1e-3 <= loss < math.log(8) - 0.3, loss


@pytest.mark.slow  # ~55 s on a busy 2-core machine (compiling forward + backward twice); exactness is in test_losses
def test_two_process_contrastive_run_under_torch_compile(tiny_vtde, digits_dir, tmp_path):
    """--torch_compile on 2 processes: the gathered loss runs compiled end to end. (That it traces without a graph
    break is tested with fullgraph in tests/test_losses.py: DDP's own forward breaks the graph here.)

    aot_eager traces forward and backward like inductor but skips its C++ code generation (minutes on CPU).
    """
    data, out = captioned_digits(digits_dir, tmp_path), tmp_path / "out"
    compile_flags = ("--torch_compile", "true", "--torch_compile_backend", "aot_eager")
    proc = launch_retrieval(tiny_vtde, data, out, "--max_steps", "2", *compile_flags)
    check_ok(proc)
    assert proc.stderr.count(f"world_size={PROCESSES} (DistributedType.MULTI_CPU)") == 1  # the main process's
    assert "torch.distributed.nn.functional.all_gather is deprecated" not in proc.stderr
    results = json.loads((out / "all_results.json").read_text())
    assert math.isfinite(results["train_loss"]) and results["train_loss"] > 0


def test_two_process_fusion_run(tmp_path):
    """fusion_imagetext_cls on 2 gloo processes: DDP over both encoders, the fusion and the heads (with modality
    dropout and placeholders), every test row scored once, numbers equal to the saved model's."""
    from transformers import AutoModelForSequenceClassification

    from mm_hf.args import DataArguments
    from mm_hf.data.multimodal import MultimodalColumns, load_multimodal_splits
    from mm_hf.data.synthetic import write_imagetext_xor
    from mm_hf.models.tiny import build_tiny_encoders
    from mm_hf.processing import MultimodalProcessor

    encoders = build_tiny_encoders(str(tmp_path / "encoders"))
    data = write_imagetext_xor(str(tmp_path / "data"), sizes=(48, 10, 21), seed=0, missing_rate=0.2)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG,
        "--multi_gpu", "--num_processes", str(PROCESSES), "--main_process_port", str(free_port()),
        os.path.join(REPO, "recipes", "fusion_imagetext_cls.py"),
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--image_column", "image", "--text_column", "text", "--label_column", "label",
        "--train_file", data["train"], "--validation_file", data["validation"], "--test_file", data["test"],
        "--output_dir", str(out), "--do_train", "--do_eval", "--do_predict", "--use_cpu", "true",
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--fusion", "cross_attention", "--modality_dropout", "0.3", "--hidden_size", "32", "--max_seq_length", "12",
        "--finetune_strategy", "full", "--ddp_find_unused_parameters", "false", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    check_ok(proc)
    assert proc.stderr.count(f"world_size={PROCESSES} (DistributedType.MULTI_CPU)") == 1  # the main process's
    assert proc.stdout.count("Evaluation on the test split (21 samples)") == 1
    results = json.loads((out / "all_results.json").read_text())
    assert results["epoch"] == pytest.approx(3 * 4 * PROCESSES / 48)
    assert results["test_samples"] == 21 and "test_without_text_accuracy" in results

    # 21 rows over 2 processes with batches of 4: padding duplicates are dropped before the metrics.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    processor = MultimodalProcessor.from_pretrained(str(out))
    splits, _ = load_multimodal_splits(
        DataArguments(train_file=data["train"], test_file=data["test"]),
        MultimodalColumns(image="image", text="text", labels=["label"]),
        "single_label_classification",
    )
    inputs = processor.transform(train=False)(dict(splits["test"][:]))
    labels = torch.tensor(inputs.pop("labels"))
    with torch.no_grad():
        logits = model(**{k: torch.stack(v) for k, v in inputs.items()}).logits
    assert len(labels) == 21
    assert results["test_accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert results["test_loss"] == pytest.approx(loss, rel=0.05), (results["test_loss"], loss)
