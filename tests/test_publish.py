"""Publishing with the real huggingface_hub client against the loopback test Hub (tests/hub_server.py)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import load_recipe
from hub_server import HubTestServer, use_hub_server
from huggingface_hub import HfApi, ModelCard, metadata_load, snapshot_download
from transformers import AutoModelForImageClassification

import mm_hf.publish as publish_module
from mm_hf.models import load_finetuned
from mm_hf.publish import main as publish_main
from mm_hf.publish import publishable_files

TOKEN = "hf_test_token"
recipe = load_recipe("clip_imagecls")


def train(model, out, digits, *extra):
    args = [
        "--model_name_or_path",
        str(model),
        "--output_dir",
        str(out),
        "--do_train",
        "--do_predict",
        "--train_dir",
        str(digits / "train"),
        "--validation_dir",
        str(digits / "validation"),
        "--test_dir",
        str(digits / "test"),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "1e-2",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
        "--save_steps",
        "1",
        "--prompt_templates",
        "a photo of the digit {}.",
    ]
    return recipe.main(args + list(extra))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setattr(publish_module, "RETRY_BACKOFF_SECONDS", 0.01)
    with HubTestServer(read_only_tokens={"hf_read_only"}) as server:
        use_hub_server(monkeypatch, server, token=None, cache_dir=tmp_path / "hf-cache")
        yield server


@pytest.fixture(scope="module")
def lora_run(tiny_vtde, digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "out"
    train(tiny_vtde, out, digits_dir, "--finetune_strategy", "lora", "--lora_r", "4")
    return out


def logits(model, pixels):
    with torch.no_grad():
        return model.eval()(pixel_values=pixels).logits


def folder_digest(folder):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(path.encode() + open(path, "rb").read())
    return digest.hexdigest()


def assert_clean(files: dict, *secrets):
    for name, content in files.items():
        for secret in secrets:
            assert secret.encode() not in content, f"{secret!r} leaked into {name}"


def test_push_to_hub_during_training_uploads_a_loadable_private_model(hub, tiny_vtde, digits_dir, tmp_path):
    out = tmp_path / "run"
    results = train(
        tiny_vtde,
        out,
        digits_dir,
        "--finetune_strategy",
        "full",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "test-user/digits-clf",
        "--hub_private_repo",
        "true",
        "--hub_token",
        TOKEN,
    )
    repo = hub.repos["test-user/digits-clf"]
    assert repo["private"] is True
    creates = hub.find_requests("POST", "/api/repos/create")
    assert creates and creates[0].headers["authorization"] == f"Bearer {TOKEN}"

    # Exactly the publishable files: no pickles, no checkpoint folders, no trainer state.
    assert any(name.startswith("checkpoint-") for name in os.listdir(out))
    assert set(repo["files"]) - {".gitattributes"} == set(publishable_files(out))
    assert not any(n.endswith((".bin", ".pt")) or n.startswith("checkpoint-") for n in repo["files"])
    assert hub.is_lfs("test-user/digits-clf", "model.safetensors")
    assert_clean(repo["files"], TOKEN, str(tmp_path), str(tiny_vtde))

    # Download with the real client: the model gives the local logits; the card parses to all_results.json.
    local_dir = snapshot_download("test-user/digits-clf", token=TOKEN, cache_dir=tmp_path / "dl")
    pixels = torch.randn(3, 3, 32, 32)
    remote = AutoModelForImageClassification.from_pretrained(local_dir, trust_remote_code=True)
    torch.testing.assert_close(
        logits(remote, pixels), logits(AutoModelForImageClassification.from_pretrained(out), pixels)
    )
    metadata = metadata_load(os.path.join(local_dir, "README.md"))
    metrics = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(results["test_accuracy"])
    assert metrics["macro_f1"] == pytest.approx(results["test_macro_f1"])
    assert metadata["pipeline_tag"] == "image-classification" and metadata["library_name"] == "transformers"
    card = ModelCard.load(os.path.join(local_dir, "README.md"))
    assert 'pipeline("image-classification", model="test-user/digits-clf", trust_remote_code=True)' in card.text
    assert "![Confusion matrix](confusion_matrix.png)" in card.text and "confusion_matrix.png" in repo["files"]


def test_publish_adapter_and_merged_variants_give_the_local_logits(hub, lora_run, tiny_vtde, tmp_path):
    pixels = torch.randn(4, 3, 32, 32)
    expected = logits(load_finetuned(str(lora_run)), pixels)

    assert (
        publish_main([str(lora_run), "--hub_model_id", "test-user/adapter", "--adapter_only", "--hub_token", TOKEN])
        == 0
    )
    files = hub.repos["test-user/adapter"]["files"]
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "README.md"} <= set(files)
    assert "model.safetensors" not in files
    assert_clean(files, TOKEN, str(tmp_path), str(tiny_vtde))
    assert metadata_load_bytes(files["README.md"])["library_name"] == "peft"
    adapter_dir = snapshot_download("test-user/adapter", token=TOKEN, cache_dir=tmp_path / "dl")
    reloaded = load_finetuned(adapter_dir, base_model_name_or_path=tiny_vtde)
    torch.testing.assert_close(logits(reloaded, pixels), expected)

    # What the card tells users: plain transformers + peft, in a process where mm_hf cannot be imported.
    card_text = ModelCard(files["README.md"].decode()).text
    assert 'PeftModel.from_pretrained(model, "test-user/adapter")' in card_text
    torch.save({"pixel_values": pixels}, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_PEFT_SCRIPT, adapter_dir, str(tiny_vtde), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    torch.testing.assert_close(torch.load(tmp_path / "plain.pt"), expected)

    assert publish_main([str(lora_run), "--hub_model_id", "test-user/merged", "--merged", "--hub_token", TOKEN]) == 0
    files = hub.repos["test-user/merged"]["files"]
    assert "model.safetensors" in files and "adapter_config.json" not in files
    assert metadata_load_bytes(files["README.md"])["library_name"] == "transformers"
    merged_dir = snapshot_download("test-user/merged", token=TOKEN, cache_dir=tmp_path / "dl")
    merged = AutoModelForImageClassification.from_pretrained(merged_dir, trust_remote_code=True)
    torch.testing.assert_close(logits(merged, pixels), expected, rtol=1e-4, atol=1e-5)


# The model card's adapter snippet, run where mm_hf is not importable.
PLAIN_PEFT_SCRIPT = """
import sys
sys.modules["mm_hf"] = None
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

repo, base, work = sys.argv[1:]
config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForImageClassification.from_config(config, trust_remote_code=True)
model.backbone = AutoModel.from_pretrained(base)
model = PeftModel.from_pretrained(model, repo).eval()
assert not type(model.get_base_model()).__module__.startswith("mm_hf")
with torch.no_grad():
    torch.save(model(pixel_values=torch.load(work + "/inputs.pt")["pixel_values"]).logits, work + "/plain.pt")
"""


def metadata_load_bytes(content: bytes) -> dict:
    from huggingface_hub import ModelCard

    return ModelCard(content.decode()).data.to_dict()


def test_server_error_is_retried_and_republishing_is_idempotent(hub, lora_run, capsys):
    hub.fail_next(1, status=500, path_contains="/commit/")
    assert publish_main([str(lora_run), "--hub_model_id", "test-user/retry", "--hub_token", TOKEN]) == 0
    commits = hub.find_requests("POST", "/commit/")
    assert [c.status for c in commits] == [500, 200]
    n_commits = len(hub.repos["test-user/retry"]["commits"])
    assert publish_main([str(lora_run), "--hub_model_id", "test-user/retry", "--hub_token", TOKEN]) == 0
    assert len(hub.repos["test-user/retry"]["commits"]) == n_commits  # nothing changed, nothing committed


@pytest.mark.parametrize(
    ("token", "message"),
    [("hf_wrong", "rejected the token (HTTP 401)"), ("hf_read_only", "may not write to test-user/denied (HTTP 403)")],
)
def test_auth_failures_explain_and_leave_the_folder_intact(hub, lora_run, capsys, token, message):
    before = folder_digest(lora_run)
    assert publish_main([str(lora_run), "--hub_model_id", "test-user/denied", "--hub_token", token]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert f"python -m mm_hf.publish {lora_run} --hub_model_id test-user/denied" in err
    assert token not in err
    assert folder_digest(lora_run) == before
    assert "test-user/denied" not in hub.repos


def test_unreachable_hub_is_retried_then_reported(monkeypatch, lora_run, capsys):
    monkeypatch.setattr(publish_module, "RETRY_BACKOFF_SECONDS", 0.01)
    server = HubTestServer()
    server.start()
    use_hub_server(monkeypatch, server, token=None)
    server.stop()  # the endpoint now refuses connections
    sleeps = []
    monkeypatch.setattr(publish_module.time, "sleep", sleeps.append)
    assert (
        publish_main([str(lora_run), "--hub_model_id", "test-user/x", "--hub_token", TOKEN, "--max_retries", "2"]) == 1
    )
    assert "could not be reached" in capsys.readouterr().err
    assert sleeps == [0.01, 0.02]  # exponential backoff


def test_push_failure_during_training_keeps_outputs_and_exits_nonzero(hub, tiny_vtde, digits_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train(
            tiny_vtde,
            out,
            digits_dir,
            "--finetune_strategy",
            "linear_probe",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "test-user/nope",
            "--hub_token",
            "hf_wrong",
        )
    assert exit_info.value.code == 1
    assert "python -m mm_hf.publish" in capsys.readouterr().err
    assert {"model.safetensors", "README.md", "all_results.json"} <= set(os.listdir(out))


def test_adapter_only_needs_an_adapter(hub, tiny_vtde, digits_dir, tmp_path, capsys):
    out = tmp_path / "full"
    train(tiny_vtde, out, digits_dir, "--finetune_strategy", "linear_probe")
    assert publish_main([str(out), "--hub_model_id", "test-user/y", "--adapter_only", "--hub_token", TOKEN]) == 1
    assert "holds no LoRA adapter" in capsys.readouterr().err
    assert json.loads((out / "run_info.json").read_text())["saved_as"] == "full"


def test_republishing_another_variant_removes_the_files_it_does_not_contain(hub, lora_run, tmp_path):
    """A repo that held the adapter and then gets the merged model (or back) holds exactly the new variant: a stale
    adapter_config.json would make transformers load base + adapter and ignore the merged weights."""
    repo_id, pixels = "test-user/variants", torch.randn(2, 3, 32, 32)
    expected = logits(load_finetuned(str(lora_run)), pixels)
    publish = [str(lora_run), "--hub_model_id", repo_id, "--hub_token", TOKEN]
    assert publish_main(publish + ["--adapter_only"]) == 0
    # A file mm-hf never publishes (someone's notebook) is not ours to delete.
    HfApi(endpoint=hub.endpoint, token=TOKEN).upload_file(
        path_or_fileobj=b"{}", path_in_repo="notes.ipynb", repo_id=repo_id
    )

    assert publish_main(publish + ["--merged"]) == 0
    files = set(hub.repos[repo_id]["files"])
    assert not files & {"adapter_config.json", "adapter_model.safetensors"}
    assert {"model.safetensors", "notes.ipynb"} <= files
    merged_dir = snapshot_download(repo_id, token=TOKEN, cache_dir=tmp_path / "dl")
    merged = AutoModelForImageClassification.from_pretrained(merged_dir, trust_remote_code=True)
    torch.testing.assert_close(logits(merged, pixels), expected, rtol=1e-4, atol=1e-5)

    assert publish_main(publish + ["--adapter_only"]) == 0
    files = set(hub.repos[repo_id]["files"])
    assert "model.safetensors" not in files and {"adapter_config.json", "notes.ipynb"} <= files
    assert metadata_load_bytes(hub.repos[repo_id]["files"]["README.md"])["library_name"] == "peft"
