"""Resumable, atomic runs: a run killed by SIGKILL while saving a checkpoint resumes into its own folder
(--resume_from_checkpoint auto) and ends where an uninterrupted run with the same seed ends; the unfinished folder is
marked and refused by mm_hf.publish; result files are replaced whole or not at all."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_recipe
from safetensors.torch import load_file
from transformers import TrainingArguments

from mm_hf.args import FinetuneArguments
from mm_hf.atomic_files import atomic_write
from mm_hf.errors import UserError
from mm_hf.evaluate.candidates import inspect_model
from mm_hf.export.checkpoints import inspect_checkpoint
from mm_hf.index.encoder import Embedder
from mm_hf.publish import PublishError, publish
from mm_hf.run import start_run
from mm_hf.run_folder import UNFINISHED_MARKER, checkpoint_problem, is_unfinished, mark_unfinished, resolve_resume

recipe = load_recipe("clip_imagecls")

# Run by the killed process: the recipe, with Trainer's RNG-state save (after the model and optimizer of a checkpoint,
# before its trainer_state.json) replaced by SIGKILL at step KILL_AT_STEP: the hardest stop, mid-checkpoint.
KILLED_RUN = """
import importlib.util, os, signal, sys
from transformers import Trainer

save_rng_state = Trainer._save_rng_state

def killed_mid_checkpoint(self, output_dir):
    if self.state.global_step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rng_state(self, output_dir)

Trainer._save_rng_state = killed_mid_checkpoint
spec = importlib.util.spec_from_file_location("recipe", sys.argv[1])
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)
recipe.main(sys.argv[2:])
"""


def recipe_args(model, digits, out):
    """4 full fine-tuning steps of 16 images (epochs of 3 steps, evaluated at each end), a checkpoint every 2; at
    this learning rate the test accuracy moves (0.25 zero-shot -> 0.35 after 6 steps)."""
    return [
        "--model_name_or_path", str(model), "--output_dir", str(out),
        "--train_dir", str(digits / "train"), "--validation_dir", str(digits / "validation"),
        "--test_dir", str(digits / "test"),
        "--do_train", "--do_eval", "--do_predict", "--finetune_strategy", "full", "--head_init", "zeroshot",
        "--prompt_templates", "a photo of the digit {}.", "--learning_rate", "1e-2",
        "--max_steps", "4", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32",
        "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--seed", "7",
    ]  # fmt: skip


def test_a_run_killed_mid_checkpoint_resumes_into_its_folder_and_ends_like_an_uninterrupted_one(
    tiny_vtde, digits_dir, tmp_path
):
    killed = tmp_path / "killed"
    env = {**os.environ, "KILL_AT_STEP": "4", "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    script = os.path.join(REPO, "recipes", "clip_imagecls.py")
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, script, *recipe_args(tiny_vtde, digits_dir, killed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # checkpoint-2 complete, checkpoint-4 torn (weights and optimizer, no trainer_state.json); the folder is marked.
    assert checkpoint_problem(killed / "checkpoint-2") is None
    assert "no trainer_state.json" in checkpoint_problem(killed / "checkpoint-4")
    assert (killed / "checkpoint-4" / "model.safetensors").exists()
    assert is_unfinished(killed) and not (killed / "all_results.json").exists()
    with pytest.raises(PublishError, match="unfinished run.*--resume_from_checkpoint auto"):
        publish(str(killed), "user/model", token="hf_unused")

    # Without the flag the folder is refused (it is not empty), with a pointer to the flag.
    with pytest.raises(UserError, match="unfinished run: continue it with --resume_from_checkpoint auto"):
        recipe.main(recipe_args(tiny_vtde, digits_dir, killed))
    resumed = recipe.main([*recipe_args(tiny_vtde, digits_dir, killed), "--resume_from_checkpoint", "auto"])
    once = recipe.main(recipe_args(tiny_vtde, digits_dir, tmp_path / "once"))

    info = json.loads((killed / "run_info.json").read_text())
    assert info["resumed_from"] == "checkpoint-2"
    assert not is_unfinished(killed) and (killed / "README.md").exists()
    # Resumed from step 2 (model, optimizer, scheduler, RNG and data order restored), the run ends where the
    # uninterrupted one does: same weights, same validation and test metrics.
    assert resumed["zeroshot_test_accuracy"] == once["zeroshot_test_accuracy"]
    for key in ("test_accuracy", "test_macro_f1", "eval_accuracy"):
        assert resumed[key] == once[key], key
    for key in ("test_loss", "eval_loss"):
        assert resumed[key] == pytest.approx(once[key], rel=1e-5), key
    a, b = load_file(killed / "model.safetensors"), load_file(tmp_path / "once" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    # Steps 3 and 4 (across an epoch boundary) ran after the resume with the uninterrupted run's losses: same
    # batches, same dropout; steps 1 and 2 come from checkpoint-2's restored state.
    losses = [
        {log["step"]: log["loss"] for log in json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())[
            "log_history"] if "loss" in log}
        for out in (killed, tmp_path / "once")
    ]  # fmt: skip
    assert sorted(losses[0]) == [1, 2, 3, 4] and losses[0] == pytest.approx(losses[1], rel=1e-5)


def write_checkpoint(folder, step, state=True):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_auto_picks_the_last_complete_checkpoint_of_an_unfinished_run_only(tmp_path):
    out = tmp_path / "out"
    assert resolve_resume(str(out), "auto", overwrite=False) is None  # nothing there: a fresh start
    mark_unfinished(str(out))
    assert resolve_resume(str(out), "auto", overwrite=False) is None  # unfinished, no checkpoint: a fresh start
    write_checkpoint(out / "checkpoint-10", 10)
    write_checkpoint(out / "checkpoint-20", 20)
    torn = write_checkpoint(out / "checkpoint-30", 30, state=False)
    write_checkpoint(out / "checkpoint-40", 40, state=False)
    (out / "checkpoint-40" / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    assert resolve_resume(str(out), "auto", overwrite=False) == str(out / "checkpoint-20")
    with pytest.raises(UserError, match=r"checkpoint-30 is not a complete checkpoint: no trainer_state.json"):
        resolve_resume(str(out), str(torn), overwrite=False)
    assert resolve_resume(str(out), str(out / "checkpoint-10"), overwrite=False) == str(out / "checkpoint-10")

    (out / UNFINISHED_MARKER).unlink()  # a finished run: nothing to resume, and not silently retrained
    with pytest.raises(UserError, match="holds a finished run.*--overwrite_output_dir"):
        resolve_resume(str(out), "auto", overwrite=False)
    assert resolve_resume(str(out), "auto", overwrite=True) is None
    with pytest.raises(UserError, match="exists and is not empty; pass --overwrite_output_dir"):
        resolve_resume(str(out), str(out / "checkpoint-10"), overwrite=False)


def test_start_run_resolves_auto_into_the_checkpoint_path(tmp_path):
    out = tmp_path / "out"
    mark_unfinished(str(out))
    write_checkpoint(out / "checkpoint-5", 5)
    argv = ["--output_dir", str(out), "--do_train", "--use_cpu", "true", "--resume_from_checkpoint", "auto"]
    _, training_args = start_run((FinetuneArguments, TrainingArguments), argv)
    assert training_args.resume_from_checkpoint == str(out / "checkpoint-5")


def test_atomic_write_leaves_the_old_file_whole_when_interrupted(tmp_path):
    path = tmp_path / "all_results.json"
    path.write_text('{"test_accuracy": 0.5}')
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:
        f.write('{"test_accu')
        raise KeyboardInterrupt  # the process stops mid-write
    assert json.loads(path.read_text()) == {"test_accuracy": 0.5}
    assert os.listdir(tmp_path) == ["all_results.json"]  # no temporary file left behind
    with atomic_write(path) as f:
        f.write('{"test_accuracy": 0.75}')
    assert json.loads(path.read_text()) == {"test_accuracy": 0.75}


@pytest.mark.parametrize("use", ["evaluate", "predict", "export", "index"])
def test_a_folder_marked_unfinished_is_refused_even_with_a_config_json(tiny_vtde, tmp_path, use):
    """A run restarted into a finished run's folder and killed leaves the old config.json and weights next to the
    marker: every reader refuses it by name instead of loading the earlier run's model."""
    folder = tmp_path / "run"
    shutil.copytree(tiny_vtde, folder)
    mark_unfinished(str(folder))
    read = {
        "evaluate": lambda: inspect_model("m", str(folder), {}),
        "predict": lambda: inspect_model(None, str(folder), {}, allow_video=True),
        "export": lambda: inspect_checkpoint(str(folder)),
        "index": lambda: Embedder(str(folder)),
    }[use]
    with pytest.raises(UserError, match=rf"{folder} holds an unfinished run \({UNFINISHED_MARKER}.*resume_from"):
        read()
