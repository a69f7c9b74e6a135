"""CLAP zero-shot audio classification: the head is CLAP's own zero-shot classifier, round trips (also as
remote code), and recipes/audio_cls.py from zero-shot to fine-tuned with every strategy."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import load_recipe
from transformers import AutoModelForAudioClassification, AutoProcessor, ClapModel

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.demo import write_tones_audiofolder
from mm_hf.models import ClapClassifierForAudioClassification, build_dual_encoder_classifier, load_finetuned

recipe = load_recipe("audio_cls")
ID2LABEL = {0: "dog barking", 1: "rain", 2: "a siren"}


def clips(n=3, seconds=0.6, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return [(0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
            for i in range(n)]  # fmt: skip


def features(processor, waves):
    return processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt")


def test_zero_shot_head_is_claps_own_zero_shot_classifier(tiny_clap):
    processor = AutoProcessor.from_pretrained(tiny_clap)
    model = build_dual_encoder_classifier(
        tiny_clap, ID2LABEL, tokenizer=processor.tokenizer, prompt_templates=["{}"]
    ).eval()
    assert isinstance(model, ClapClassifierForAudioClassification)
    clap = ClapModel.from_pretrained(tiny_clap).eval()
    inputs = features(processor, clips())
    text = processor.tokenizer(list(ID2LABEL.values()), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = clap(**text, input_features=inputs["input_features"]).logits_per_audio
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    # The temperature is CLAP's audio->text one, and the head rows are unit-norm text embeddings.
    assert model.classifier.logit_scale.item() == pytest.approx(clap.logit_scale_a.item())
    torch.testing.assert_close(model.classifier.weight.norm(dim=-1), torch.ones(3))


def test_default_prompts_are_audio_prompts_and_ensembled(tiny_clap):
    processor = AutoProcessor.from_pretrained(tiny_clap)
    default = build_dual_encoder_classifier(tiny_clap, ID2LABEL, tokenizer=processor.tokenizer)
    single = build_dual_encoder_classifier(
        tiny_clap, ID2LABEL, tokenizer=processor.tokenizer, prompt_templates=["This is a sound of {}."]
    )
    assert not torch.allclose(default.classifier.weight, single.classifier.weight)  # three prompts averaged


REMOTE = r"""
import json, sys
sys.modules["mm_hf"] = None  # the checkpoint must bring its own code
import numpy as np, torch
from transformers import AutoModelForAudioClassification, pipeline
folder = sys.argv[1]
model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**torch.load(folder + "/inputs.pt")).logits
t = np.arange(9600) / 16000
wave = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
top = pipeline("audio-classification", model=folder, trust_remote_code=True, device="cpu")(wave, top_k=1)[0]
print(json.dumps({"logits": logits.tolist(), "module": type(model).__module__, "top": top["label"]}))
"""


def test_round_trip_auto_class_and_remote_code_without_mm_hf(tiny_clap, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_clap)
    model = build_dual_encoder_classifier(tiny_clap, ID2LABEL, tokenizer=processor.tokenizer).eval()
    folder = tmp_path / "clap_cls"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mm_hf_clap_classifier"
    assert config["auto_map"]["AutoModelForAudioClassification"] == (
        "modeling_clip_classifier.ClapClassifierForAudioClassification"
    )
    inputs = dict(features(processor, clips(seconds=0.6)[:1]))
    torch.save(inputs, folder / "inputs.pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    reloaded = AutoModelForAudioClassification.from_pretrained(folder).eval()
    assert isinstance(reloaded, ClapClassifierForAudioClassification)
    with torch.no_grad():  # equal up to float rounding: another instance may get other CPU kernels (AMD EPYC)
        torch.testing.assert_close(reloaded(**inputs).logits, logits, rtol=1e-5, atol=1e-6)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", REMOTE, str(folder)], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    assert remote["module"].startswith("transformers_modules")
    torch.testing.assert_close(torch.tensor(remote["logits"]), logits, rtol=1e-5, atol=1e-6)
    assert remote["top"] == ID2LABEL[int(logits.argmax())]  # the pipeline's clip is the one in inputs.pt


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    write_tones_audiofolder(str(root), per_class=(10, 2, 6), seed=1)
    return root


def run(model, out, *extra, data, steps):
    args = [
        "--model_name_or_path", str(model), "--output_dir", str(out),
        "--do_train", "--do_eval", "--do_predict", "--max_steps", str(steps),
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "24",
        "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
        "--save_strategy", "no", "--max_length_seconds", "1.0",
    ]  # fmt: skip
    for split in ("train", "validation", "test"):
        args += [f"--{split}_dir", str(data / split)]
    return recipe.main(args + list(extra))


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [("linear_probe", []), ("top_k", ["--unfreeze_last_n_layers", "1"]), ("lora", ["--lora_r", "4"])],
)
def test_recipe_trains_claps_audio_path_from_zero_shot(tiny_clap, tones, tmp_path, strategy, extra):
    out = tmp_path / "out"
    before = state(ClapModel.from_pretrained(tiny_clap))
    results = run(
        tiny_clap, out, "--finetune_strategy", strategy, "--learning_rate", "1e-2", *extra, data=tones, steps=4
    )
    table = (out / "before_after.md").read_text()
    assert "zero-shot" in table and "untrained head" not in table
    for key in ("zeroshot_test_accuracy", "test_accuracy", "test_macro_f1"):
        assert key in results
    assert json.loads((out / "all_results.json").read_text())["test_accuracy"] == results["test_accuracy"]
    # The processor (feature extractor + tokenizer, to re-initialise the head for new classes) ships along.
    assert (out / "tokenizer.json").exists() and (out / "processor_config.json").exists()

    model = load_finetuned(str(out)).eval()
    backbone = (model.merge_and_unload() if hasattr(model, "peft_config") else model).backbone
    after = {k: v for k, v in backbone.state_dict().items()}
    # The text tower never runs in classification: the classifier does not even carry it.
    assert not any(k.startswith(("text_model.", "text_projection.")) for k in after), sorted(after)[:5]
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    if strategy == "linear_probe":
        assert not changed
    else:
        assert any(k.startswith("audio_model.") for k in changed)
    if strategy == "top_k":  # the first stage stays frozen, and so do the statistics of its frozen BatchNorm stem
        assert not any(k.startswith("audio_model.audio_encoder.layers.0.") for k in changed)
        assert "audio_model.audio_encoder.batch_norm.running_mean" in before
        assert not any(k.startswith("audio_model.audio_encoder.batch_norm.") for k in changed)

    # The saved folder reproduces the reported test accuracy.
    processor = AutoProcessor.from_pretrained(out)
    waves, labels = [], []
    names = sorted(os.listdir(tones / "test"))
    import soundfile as sf

    for i, name in enumerate(names):
        for file in sorted(os.listdir(tones / "test" / name)):
            wave, _ = sf.read(tones / "test" / name / file, dtype="float32")
            waves.append(wave[:16000])
            labels.append(i)
    with torch.no_grad():
        predictions = model(**features(processor, waves)).logits.argmax(-1)
    assert (predictions == torch.tensor(labels)).float().mean().item() == pytest.approx(results["test_accuracy"])


def test_fine_tuning_learns_tones_from_zero_shot_chance(tiny_clap, tones, tmp_path):
    results = run(
        tiny_clap, tmp_path / "out", "--finetune_strategy", "full", "--learning_rate", "3e-3",
        "--num_train_epochs", "1", "--augment", "false", "--head_dropout", "0", data=tones, steps=100,
    )  # fmt: skip
    # Random towers: the class prompts mean nothing (chance is 0.25); 100 full fine-tuning steps separate the tones.
    assert results["zeroshot_test_accuracy"] <= 0.5
    assert results["test_accuracy"] >= results["zeroshot_test_accuracy"] + 0.3, results


def test_linear_probe_embeds_each_clip_once_whatever_the_epochs(tiny_clap, tones, tmp_path, monkeypatch):
    calls = []
    original = ClapClassifierForAudioClassification.get_audio_features

    def counting(self, input_features, is_longer=None):
        calls.append(len(input_features))
        return original(self, input_features, is_longer)

    monkeypatch.setattr(ClapClassifierForAudioClassification, "get_audio_features", counting)
    counts, zero_shot = [], []
    for epochs in (1, 3):
        calls.clear()
        results = run(
            tiny_clap, tmp_path / f"probe{epochs}", "--finetune_strategy", "linear_probe", "--probe_solver", "trainer",
            "--num_train_epochs", str(epochs), "--learning_rate", "1e-2", data=tones, steps=-1,
        )  # fmt: skip
        counts.append(sum(calls))
        zero_shot.append(results["zeroshot_test_accuracy"])
        assert results["epoch"] == epochs
    # 40 train + 8 validation + 24 test clips went through the audio tower exactly once per run.
    assert counts == [72, 72]
    # Without the cache the backbone runs every step; the zero-shot numbers are the same either way.
    calls.clear()
    uncached = run(
        tiny_clap, tmp_path / "uncached", "--finetune_strategy", "linear_probe", "--precompute_features", "false",
        "--probe_solver", "trainer", "--num_train_epochs", "1", "--augment", "false", data=tones, steps=-1,
    )  # fmt: skip
    assert sum(calls) > 72 and uncached["zeroshot_test_accuracy"] == pytest.approx(zero_shot[0])
