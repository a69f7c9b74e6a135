"""mm_hf.publish options and safeguards against the loopback test Hub (tests/hub_server.py): --private, the
token refusal, the base model's license, and retries of transient HTTP errors."""

import json
import shutil

import pytest
from conftest import load_recipe
from hub_server import HubTestServer, use_hub_server
from huggingface_hub import ModelCard

import mm_hf.publish as publish_module
from mm_hf.publish import main as publish_main

TOKEN = "hf_test_token"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setattr(publish_module, "RETRY_BACKOFF_SECONDS", 0.01)
    with HubTestServer() as server:
        use_hub_server(monkeypatch, server, token=None, cache_dir=tmp_path / "hf-cache")
        yield server


@pytest.fixture(scope="module")
def run_dir(tiny_vtde, colours_dir, tmp_path_factory):
    """A finished linear-probe run on the colour tiles (full model saved)."""
    out = tmp_path_factory.mktemp("run") / "out"
    load_recipe("clip_imagecls").main([
        "--model_name_or_path", str(tiny_vtde), "--output_dir", str(out), "--do_train", "--finetune_strategy",
        "linear_probe", "--train_dir", str(colours_dir / "train"), "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true", "--save_strategy", "no", "--prompt_templates", "a {} photo.",
    ])  # fmt: skip
    return out


@pytest.fixture
def run_copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "copy")


def publish(folder, repo, *extra):
    return publish_main([str(folder), "--hub_model_id", repo, "--hub_token", TOKEN, *extra])


def test_private_flag_makes_new_and_existing_repos_private(hub, run_dir):
    assert publish(run_dir, "test-user/public") == 0
    assert hub.repos["test-user/public"]["private"] is False
    assert publish(run_dir, "test-user/secret", "--private") == 0
    assert hub.repos["test-user/secret"]["private"] is True
    # create_repo leaves an existing repo's visibility alone: --private must still make it private.
    assert publish(run_dir, "test-user/public", "--private") == 0
    assert hub.repos["test-user/public"]["private"] is True


def test_a_folder_holding_the_token_is_refused_before_anything_is_sent(hub, run_copy, capsys):
    (run_copy / "notes.txt").write_text(f"login with {TOKEN} first\n")
    hub.clear_requests()
    assert publish(run_copy, "test-user/leak") == 1
    err = capsys.readouterr().err
    assert "notes.txt contains the Hub token" in err and TOKEN not in err
    assert "test-user/leak" not in hub.repos
    assert not hub.find_requests("POST")  # no repo created, nothing uploaded


@pytest.mark.parametrize(("license_", "expected"), [("mit", "mit"), (None, None)])
def test_the_base_models_license_is_copied_to_the_card(hub, run_copy, license_, expected):
    card = f"---\nlicense: {license_}\n---\n# Base\n" if license_ else "# Base, no metadata\n"
    hub.add_repo("base-org/tiny-base", files={"README.md": card.encode(), "config.json": b"{}"})
    info = json.loads((run_copy / "run_info.json").read_text())
    (run_copy / "run_info.json").write_text(json.dumps({**info, "base_model": "base-org/tiny-base"}))
    assert publish(run_copy, "test-user/licensed") == 0
    data = ModelCard(hub.repos["test-user/licensed"]["files"]["README.md"].decode()).data.to_dict()
    assert data.get("license") == expected
    assert data["base_model"] == "base-org/tiny-base"


@pytest.mark.parametrize("status", [408, 429])
def test_timeouts_and_rate_limits_are_retried_with_backoff(hub, run_dir, monkeypatch, status):
    sleeps = []
    monkeypatch.setattr(publish_module.time, "sleep", sleeps.append)
    hub.fail_next(2, status=status, path_contains="/commit/")
    assert publish(run_dir, "test-user/retried") == 0
    assert [c.status for c in hub.find_requests("POST", "/commit/")] == [status, status, 200]
    assert sleeps == [0.01, 0.02]
    assert "model.safetensors" in hub.repos["test-user/retried"]["files"]


def test_a_client_error_is_not_retried(hub, run_dir, monkeypatch):
    sleeps = []
    monkeypatch.setattr(publish_module.time, "sleep", sleeps.append)
    hub.fail_next(1, status=400, path_contains="/commit/")
    assert publish(run_dir, "test-user/bad-request") == 1
    assert [c.status for c in hub.find_requests("POST", "/commit/")] == [400] and sleeps == []
