"""--hp_search ray: a 2-trial Ray Tune sweep on a tiny model in a local Ray instance, whose best trial is retrained
into a normal output folder (slow: Ray starts ~8 helper processes and each trial's actor imports torch), and the
search space's Ray Tune distributions. Skipped without ray[tune] (`pip install 'mm-hf[sweeps-ray]'`), which the dev
requirements leave out: a 79 MB wheel, for a test that runs only with -m slow."""

import json
import os

import pytest
from conftest import load_recipe, sweep_argv
from huggingface_hub import ModelCard

from mm_hf.errors import UserError
from mm_hf.run_folder import is_unfinished
from mm_hf.sweeps import load_hp_space, ray_space

pytest.importorskip("ray.tune")
recipe = load_recipe("clip_imagecls")


@pytest.mark.slow  # 2-3 min on 2 cores busy with other work (Ray's start ~25 s, the trial actor's imports ~45 s)
def test_ray_tune_sweep_runs_trials_as_actors_and_retrains_the_best(tiny_vtde, digits_dir, tmp_path, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local instance for this sweep, stopped after it
    # A 1-CPU instance runs the trials one after the other in one reused actor: one actor's imports, not two
    # at once (pending 47 s instead of 98 s at load 9).
    monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", '{"CPU": 1}')
    out = tmp_path / "out"
    results = recipe.main(sweep_argv(tiny_vtde, digits_dir, tmp_path, "ray", 2))

    assert not ray.is_initialized()  # the sweep's own Ray instance is stopped
    on_disk = json.loads((out / "all_results.json").read_text())
    sweep = on_disk["hp_search"]
    assert sweep == results["hp_search"]
    assert (sweep["backend"], sweep["objective"], sweep["direction"]) == ("ray", "eval_loss", "minimize")
    trials = sweep["trials"]
    assert len(trials) == 2 and {t["state"] for t in trials} == {"TERMINATED"}
    assert len({t["learning_rate"] for t in trials}) == 2 and all(1e-4 <= t["learning_rate"] <= 3e-2 for t in trials)
    best = min(trials, key=lambda t: t["objective"])
    assert sweep["best_trial"] == best["trial"] and sweep["best_params"] == {"learning_rate": best["learning_rate"]}
    assert trials[0]["objective"] != trials[1]["objective"]  # the learning rate mattered: no tie decided it

    # The folder's model is the best trial retrained with the same seed: it reproduces the trial's validation loss,
    # computed in the trial's Ray actor.
    assert on_disk["eval_loss"] == pytest.approx(best["objective"], rel=1e-5)
    names = os.listdir(out)
    assert "model.safetensors" in names and "hp_search.png" in names and not is_unfinished(out)
    assert "ray_tune" not in names and not [n for n in names if n.startswith("run-")]  # the trials' folders
    card = ModelCard.load(out / "README.md").text
    assert "2 trials with ray, compared on the validation split by `eval_loss`" in card
    assert f"| **{best['trial']}** |" in card and "![Hyperparameter search](hp_search.png)" in card


def test_every_kind_of_range_becomes_a_ray_tune_distribution_inside_its_bounds(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
        "warmup_steps: {type: float, low: 0.0, high: 0.2, step: 0.05}\n"
        "num_train_epochs: {type: int, low: 2, high: 8, step: 2}\n"
        "seed: {type: int, low: 1, high: 1000, log: true}\n"
        "per_device_train_batch_size: {type: categorical, choices: [8, 16]}\n"
    )
    distributions = ray_space(load_hp_space(str(path)))(None)
    samples = [{name: d.sample() for name, d in distributions.items()} for _ in range(50)]
    for values in samples:
        assert 1e-5 <= values["learning_rate"] <= 1e-3
        assert round(values["warmup_steps"] / 0.05, 6) in (0, 1, 2, 3, 4)
        assert values["num_train_epochs"] in (2, 4, 6, 8) and 1 <= values["seed"] <= 1000
        assert values["per_device_train_batch_size"] in (8, 16)
    assert {v["num_train_epochs"] for v in samples} == {2, 4, 6, 8}  # both ends of an int range are reachable


def test_ray_address_without_a_ray_sweep_is_refused(tmp_path):
    from transformers import TrainingArguments

    from mm_hf.args import FinetuneArguments
    from mm_hf.run import start_run

    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n")
    base = ["--output_dir", str(tmp_path / "out"), "--do_train", "--use_cpu", "true", "--ray_address", "auto"]
    for extra in ([], ["--hp_search", "optuna", "--hp_space", str(path)]):
        with pytest.raises(UserError, match="--ray_address names the Ray cluster for the trials of --hp_search ray"):
            start_run((FinetuneArguments, TrainingArguments), [*base, *extra])


@pytest.mark.parametrize(
    ("flag", "env", "connected", "expected"),
    [
        (None, None, False, [("init", "local"), "shutdown"]),  # a local instance for the sweep, stopped after it
        (None, "10.0.0.1:6379", False, [("init", "10.0.0.1:6379"), "shutdown"]),  # RAY_ADDRESS
        ("auto", "10.0.0.1:6379", False, [("init", "auto"), "shutdown"]),  # the flag wins over RAY_ADDRESS
        ("auto", None, True, []),  # the caller's connection, used as it is and left open
    ],
)
def test_the_sweep_joins_the_cluster_it_is_given(monkeypatch, flag, env, connected, expected):
    import ray

    from mm_hf.sweeps import _ray_cluster

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: connected)
    monkeypatch.setattr(ray, "init", lambda address=None, **kwargs: calls.append(("init", address)))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with _ray_cluster(flag):
        assert calls == expected[:1] if expected else calls == []
    assert calls == expected


def test_a_local_ray_that_fails_to_start_is_started_once_more_then_the_error_is_raised(monkeypatch, caplog):
    import ray

    from mm_hf.sweeps import _start_local_ray

    attempts = []

    def init(**kwargs):
        attempts.append(kwargs)
        if len(attempts) < failures + 1:
            raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    failures = 1
    with caplog.at_level("WARNING", logger="mm_hf.sweeps"):
        _start_local_ray()
    assert len(attempts) == 2 and "did not start (The current node timed out" in caplog.text
    assert attempts[0] == {"address": "local", "include_dashboard": False}
    attempts.clear()
    failures = 2
    with pytest.raises(Exception, match="timed out during startup"):
        _start_local_ray()
    assert len(attempts) == 2
