"""--hp_search through Trainer.hyperparameter_search: a 3-trial Optuna sweep on a tiny model, compared on the
validation split, whose best trial is retrained into a normal output folder; bad sweep flags refused up front."""

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, load_recipe, sweep_argv
from huggingface_hub import ModelCard
from transformers import TrainingArguments

from mm_hf.args import FinetuneArguments
from mm_hf.errors import UserError
from mm_hf.run import start_run
from mm_hf.run_folder import is_unfinished, mark_unfinished
from mm_hf.sweeps import load_hp_space, optuna_space

pytest.importorskip("optuna")
recipe = load_recipe("clip_imagecls")


def test_optuna_sweep_compares_trials_on_validation_and_retrains_the_best(tiny_vtde, digits_dir, tmp_path):
    out = tmp_path / "out"
    results = recipe.main(sweep_argv(tiny_vtde, digits_dir, tmp_path, "optuna", 3))

    on_disk = json.loads((out / "all_results.json").read_text())
    sweep = on_disk["hp_search"]
    assert sweep == results["hp_search"]
    assert (sweep["backend"], sweep["objective"], sweep["direction"]) == ("optuna", "eval_loss", "minimize")
    trials = sweep["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2] and {t["state"] for t in trials} == {"COMPLETE"}
    assert len({t["learning_rate"] for t in trials}) == 3
    assert all(1e-4 <= t["learning_rate"] <= 3e-2 for t in trials)
    best = min(trials, key=lambda t: t["objective"])
    assert sweep["best_trial"] == best["trial"] and sweep["best_params"] == {"learning_rate": best["learning_rate"]}
    assert len({round(t["objective"], 6) for t in trials}) == 3  # the learning rate mattered: no tie decided it

    # The folder's model is the best trial retrained with the same seed: it reproduces the trial's validation loss.
    assert on_disk["eval_loss"] == pytest.approx(best["objective"], rel=1e-5)
    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert resolved["learning_rate"] == pytest.approx(best["learning_rate"])
    assert "model.safetensors" in os.listdir(out) and (out / "hp_search.png").stat().st_size > 0
    assert not [n for n in os.listdir(out) if n.startswith("run-")]  # the trials' own checkpoints are gone
    card = ModelCard.load(out / "README.md").text
    assert "### Hyperparameter search" in card and "compared on the validation split by `eval_loss`" in card
    assert f"| **{best['trial']}** |" in card and "![Hyperparameter search](hp_search.png)" in card
    assert not is_unfinished(out)


def test_shipped_search_spaces_load():
    paths = sorted(glob.glob(os.path.join(REPO, "recipes", "configs", "hp_spaces", "*.yaml")))
    assert paths
    for path in paths:
        assert "learning_rate" in load_hp_space(path)


def test_every_kind_of_range_samples_inside_its_bounds(tmp_path):
    import optuna

    path = tmp_path / "space.yaml"
    path.write_text(
        "learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
        "warmup_steps: {type: float, low: 0.0, high: 0.2, step: 0.05}\n"
        "num_train_epochs: {type: int, low: 2, high: 8, step: 2}\n"
        "per_device_train_batch_size: {type: categorical, choices: [8, 16]}\n"
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    suggest = optuna_space(load_hp_space(str(path)))
    for _ in range(20):
        values = suggest(study.ask())
        assert 1e-5 <= values["learning_rate"] <= 1e-3
        assert round(values["warmup_steps"] / 0.05, 6) in (0, 1, 2, 3, 4)
        assert values["num_train_epochs"] in (2, 4, 6, 8) and values["per_device_train_batch_size"] in (8, 16)


TYPES = (FinetuneArguments, TrainingArguments)


def start(tmp_path, *flags):
    return start_run(TYPES, ["--output_dir", str(tmp_path / "out"), "--do_train", "--use_cpu", "true", *flags])


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("lora_r: {type: int, low: 4, high: 16}", "lora_r is not a TrainingArguments flag"),
        ("learning_rate: {type: float, low: small, high: 1.0e-3}", "needs numeric low and high"),
        ("learning_rate: {type: float, low: 0.0, high: 1.0e-3, log: true}", "low > 0 for log"),
        ("per_device_train_batch_size: {type: categorical}", "non-empty list of choices"),
        ("num_train_epochs: {type: int, low: 2, high: 8, step: 2, log: true}", "log and step exclude each other"),
        ("output_dir: {type: categorical, choices: [a, b]}", "output_dir cannot differ between trials"),
    ],
)
def test_a_bad_search_space_is_refused_naming_the_file_and_the_entry(tmp_path, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(space + "\n")
    with pytest.raises(UserError, match=f"--hp_space {path}: .*{message}"):
        start(tmp_path, "--hp_search", "optuna", "--hp_space", str(path))


def test_sweep_flags_that_cannot_work_are_refused_before_any_data(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n")
    with pytest.raises(UserError, match="--hp_space configures a sweep: add --hp_search"):
        start(tmp_path, "--hp_space", str(path))
    with pytest.raises(UserError, match="--hp_search needs --hp_space"):
        start(tmp_path, "--hp_search", "optuna")
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(UserError, match=r"--hp_search ray needs ray.tune, which is not installed: pip install"):
            start(tmp_path, "--hp_search", "ray", "--hp_space", str(path))
    resume = ["--hp_search", "optuna", "--hp_space", str(path), "--resume_from_checkpoint", "auto"]
    start(tmp_path, *resume)  # nothing to resume yet: a fresh sweep
    mark_unfinished(str(tmp_path / "out"))
    (tmp_path / "out" / "checkpoint-4").mkdir()
    (tmp_path / "out" / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    with pytest.raises(UserError, match="--hp_search cannot resume from .*checkpoint-4"):
        start(tmp_path, *resume)


# Run by the killed sweep: the recipe, killed by SIGKILL as trial KILL_AT_TRIAL starts (its predecessors are done).
KILLED_SWEEP = """
import importlib.util, os, signal, sys
from transformers import Trainer

hp_search_setup = Trainer._hp_search_setup

def killed_at_trial(self, trial):
    if trial is not None and trial.number == int(os.environ["KILL_AT_TRIAL"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return hp_search_setup(self, trial)

Trainer._hp_search_setup = killed_at_trial
spec = importlib.util.spec_from_file_location("recipe", sys.argv[1])
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)
recipe.main(sys.argv[2:])
"""


@pytest.mark.slow  # ~1 min on 2 busy cores: a recipe process killed after its first trial, then the resumed sweep
def test_a_sweep_killed_after_its_first_trial_resumes_from_its_optuna_storage(tiny_vtde, digits_dir, tmp_path):
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}\n")
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path / 'sweep.db'}"
    flags = [
        "--model_name_or_path", str(tiny_vtde), "--output_dir", str(out),
        "--train_dir", str(digits_dir / "train"), "--validation_dir", str(digits_dir / "validation"),
        "--do_train", "--do_eval", "--finetune_strategy", "full", "--head_init", "zeroshot",
        "--prompt_templates", "a photo of the digit {}.", "--max_steps", "2", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "32", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
        "--hp_search", "optuna", "--n_trials", "3", "--hp_space", str(space), "--metric_for_best_model", "loss",
        "--hp_storage", storage,
    ]  # fmt: skip
    env = {**os.environ, "KILL_AT_TRIAL": "1", "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    script = os.path.join(REPO, "recipes", "clip_imagecls.py")
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_SWEEP, script, *flags], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    before = optuna.load_study(study_name=str(out), storage=storage).trials
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"] and is_unfinished(out)

    results = recipe.main([*flags, "--resume_from_checkpoint", "auto"])
    trials = results["hp_search"]["trials"]
    assert [(t["trial"], t["state"]) for t in trials] == [
        (0, "COMPLETE"),
        (1, "FAIL"),
        (2, "COMPLETE"),
        (3, "COMPLETE"),
    ]
    # Trial 0 was kept, not run again; the new trials draw new flags (a re-seeded sampler would repeat trial 0's).
    assert (trials[0]["objective"], trials[0]["learning_rate"]) == (before[0].value, before[0].params["learning_rate"])
    assert len({t["learning_rate"] for t in trials if t["state"] == "COMPLETE"}) == 3
    best = min((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["objective"])
    assert results["hp_search"]["best_trial"] == best["trial"]
    assert results["eval_loss"] == pytest.approx(best["objective"], rel=1e-5) and not is_unfinished(out)
    assert not [n for n in os.listdir(out) if n.startswith("run-")]


def test_a_kept_study_counts_its_finished_trials_and_fails_an_interrupted_one(tmp_path):
    import optuna

    from mm_hf.sweeps import _trials_left

    storage = optuna.storages.get_storage(f"sqlite:///{tmp_path / 'sweep.db'}")
    assert _trials_left(storage, "out", 5) == (5, 0)  # a new study
    study = optuna.create_study(study_name="out", storage=storage)
    for value in (0.5, 0.4):
        study.tell(study.ask(), value)
    study.ask()  # a trial a killed sweep left running
    assert _trials_left(storage, "out", 5) == (3, 3)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert _trials_left(storage, "out", 2) == (0, 3)


def test_hp_storage_or_ray_address_for_the_other_engine_is_refused(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n")
    with pytest.raises(UserError, match="--hp_storage keeps the trials of --hp_search optuna"):
        start(tmp_path, "--hp_storage", f"sqlite:///{tmp_path / 'db'}")
    with pytest.raises(UserError, match="--ray_address names the Ray cluster for the trials of --hp_search ray"):
        start(tmp_path, "--hp_search", "optuna", "--hp_space", str(path), "--ray_address", "auto")
