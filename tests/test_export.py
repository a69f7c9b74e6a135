"""python -m mm_hf.export: every ONNX graph gives PyTorch's outputs (fp32, 1e-4) at batch 1 and 5 from one export,
on longer/shorter token ids and waveforms too; LoRA adapters are merged; the README example runs; bad folders are
refused naming the folder."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import REPO, load_recipe
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoProcessor,
    BertConfig,
    BertForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from mm_hf.errors import UserError
from mm_hf.export import main as export_main
from mm_hf.export.cli import ExportMismatchError
from mm_hf.export.onnx import ExportSpec, NamedInputs, max_abs_diff, session_for, tower_embedding
from mm_hf.export.onnx import export as export_spec
from mm_hf.models import build_audio_classifier, build_dual_encoder_classifier, load_finetuned

TOL = 1e-4  # the issue's bar for fp32 logits


def export(checkpoint, out, *extra) -> dict:
    args = [str(checkpoint), "--output_dir", str(out), "--batch_sizes", "1", "5", "--latency_repeats", "2"]
    report = export_main(args + list(extra))
    assert report == json.loads((out / "export_report.json").read_text())
    for name, file in report["files"].items():
        assert set(file["max_abs_diff"]) == {"1", "5"}, name
        assert max(file["max_abs_diff"].values()) <= TOL, (name, file["max_abs_diff"])
        assert all(t["pytorch_ms"] > 0 and t["onnxruntime_ms"] > 0 for t in file["latency"].values())
        assert file["inputs"][next(iter(file["inputs"]))][0] == "batch"  # dynamic batch axis
    return report


def run_onnx(path, inputs: dict) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in inputs.items() if k in names})[0]


def run_readme_example(out, input_file, capsys) -> str:
    """Execute the README's python block as written, with INPUT pointing at `input_file`; returns what it printed."""
    readme = (out / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    code, n = re.subn(r"^INPUT = .*$", f"INPUT = {str(input_file)!r}", code, flags=re.M)
    assert n == 1 and len(code.splitlines()) <= 25
    capsys.readouterr()
    exec(compile(code, "README example", "exec"), {"__name__": "__main__"})
    return capsys.readouterr().out


def image_file(tmp_path, seed=0):
    path = tmp_path / f"photo{seed}.png"
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (37, 45, 3), dtype=np.uint8)).save(path)
    return path


# --- image classifiers ---------------------------------------------------------------------------------------


def test_image_classifier_export_matches_pytorch_and_readme_runs(tiny_vtde, tmp_path, capsys):
    model = build_dual_encoder_classifier(tiny_vtde, {0: "cat", 1: "dog", 2: "bird"}, head_init="random")
    model.config.calibration_temperature = 1.7  # inside the graph: the exported logits are the calibrated ones
    checkpoint, out = tmp_path / "run", tmp_path / "onnx"
    model.save_pretrained(checkpoint)
    AutoProcessor.from_pretrained(tiny_vtde).save_pretrained(checkpoint)
    report = export(checkpoint, out)

    assert report["kind"] == "mm-hf" and list(report["files"]) == ["model"]
    assert {"model.onnx", "labels.json", "README.md", "export_report.json", "processor_config.json"} <= set(
        os.listdir(out)
    )
    assert json.loads((out / "labels.json").read_text())["id2label"] == {"0": "cat", "1": "dog", "2": "bird"}
    model = model.eval()
    pixels = torch.randn(3, 3, 32, 32)  # a batch size the export never saw
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    assert np.abs(run_onnx(out / "model.onnx", {"pixel_values": pixels}) - expected).max() <= TOL

    photo = image_file(tmp_path)
    with torch.no_grad():
        inputs = AutoProcessor.from_pretrained(out)(images=[Image.open(photo).convert("RGB")], return_tensors="pt")
        top = model(pixel_values=inputs["pixel_values"]).logits[0]
    printed = run_readme_example(out, photo, capsys).split()
    assert printed[0] == model.config.id2label[int(top.argmax())]
    assert float(printed[1]) == pytest.approx(float(top.max()), abs=TOL)


@pytest.fixture(scope="module")
def lora_run(tiny_vtde, digits_dir, tmp_path_factory):
    """A 2-step clip_imagecls LoRA run saved as an adapter (the recipe's own output folder)."""
    out = tmp_path_factory.mktemp("lora_run")
    args = ["--model_name_or_path", tiny_vtde, "--output_dir", str(out), "--do_train", "--max_steps", "2",
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--report_to", "none",
            "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no", "--finetune_strategy", "lora",
            "--lora_r", "4", "--head_init", "random", "--train_dir", str(digits_dir / "train"),
            "--validation_dir", str(digits_dir / "validation")]  # fmt: skip
    load_recipe("clip_imagecls").main(args)
    return out


def test_lora_adapter_is_merged_into_one_graph(lora_run, tmp_path):
    assert "adapter_config.json" in os.listdir(lora_run)
    lora_b = [v for k, v in load_file(str(lora_run / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b), "the run must have moved LoRA off the identity"
    report = export(lora_run, tmp_path / "onnx")
    assert report["merged_adapter"] is True
    # The merged graph gives the unmerged adapter's logits (base + B A computed separately by peft).
    adapter = load_finetuned(str(lora_run)).eval()
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = adapter(pixel_values=pixels).logits.numpy()
    assert np.abs(run_onnx(tmp_path / "onnx" / "model.onnx", {"pixel_values": pixels}) - expected).max() <= TOL


def test_adapter_without_its_base_is_refused_then_found_with_base_model(lora_run, tiny_vtde, tmp_path):
    moved = tmp_path / "adapter"
    shutil.copytree(lora_run, moved)
    adapter_config = json.loads((moved / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (moved / "adapter_config.json").write_text(json.dumps(adapter_config))
    with pytest.raises(UserError, match=r"LoRA adapter whose base model .*deleted-base.*--base_model"):
        export_main([str(moved), "--output_dir", str(tmp_path / "onnx")])
    export(moved, tmp_path / "onnx", "--base_model", tiny_vtde)


def test_plain_transformers_image_classifier(tmp_path):
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    report = export(tmp_path / "vit", tmp_path / "onnx")
    assert report["kind"] == "transformers" and report["files"]["model"]["output_shape"] == ["batch", 2]
    # A graph off by more than --tolerance fails the export (after writing the report that shows by how much).
    with pytest.raises(ExportMismatchError, match=r"differs from PyTorch by up to .*> --tolerance 1e-12"):
        export_main([str(tmp_path / "vit"), "--output_dir", str(tmp_path / "strict"), "--tolerance", "1e-12",
                     "--batch_sizes", "1", "--latency_repeats", "1"])  # fmt: skip
    assert (tmp_path / "strict" / "export_report.json").exists()


# --- audio classifiers ---------------------------------------------------------------------------------------


def test_wav2vec2_classifier_has_dynamic_batch_and_length(tiny_wav2vec2, tmp_path, capsys):
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(tiny_wav2vec2)
    model = build_audio_classifier(
        tiny_wav2vec2, {0: "low", 1: "high"}, pooling="attention", feature_extractor=extractor
    )
    torch.nn.init.normal_(model.pooler.score.weight)  # a trained pooling: padding must not leak into the weights
    checkpoint, out = tmp_path / "run", tmp_path / "onnx"
    model.save_pretrained(checkpoint)
    extractor.save_pretrained(checkpoint)
    report = export(checkpoint, out, "--audio_seconds", "0.4")
    assert report["files"]["model"]["inputs"]["input_values"] == ["batch", "sequence"]

    rng = np.random.default_rng(1)
    clips = [rng.normal(0, 0.1, n).astype(np.float32) for n in (12000, 3000, 9000)]  # none of the traced lengths
    inputs = extractor(clips, sampling_rate=16000, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model.eval()(**inputs).logits.numpy()
    assert np.abs(run_onnx(out / "model.onnx", dict(inputs)) - expected).max() <= TOL

    wav = tmp_path / "clip.wav"  # 8 kHz stereo: the example resamples and downmixes
    sf.write(wav, rng.normal(0, 0.1, (4000, 2)).astype(np.float32), 8000)
    assert run_readme_example(out, wav, capsys).split()[0] in {"low", "high"}


def test_whisper_encoder_classifier(tmp_path, capsys):
    config = WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=100,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    WhisperModel(config).save_pretrained(tmp_path / "whisper")
    extractor = WhisperFeatureExtractor()
    model = build_audio_classifier(
        str(tmp_path / "whisper"), {0: "a", 1: "b"}, feature_extractor=extractor, max_length_seconds=1.0
    )
    model.save_pretrained(tmp_path / "run")
    extractor.save_pretrained(tmp_path / "run")
    report = export(tmp_path / "run", tmp_path / "onnx", "--audio_seconds", "0.5")  # clips shorter than the window
    assert report["files"]["model"]["inputs"]["input_features"] == ["batch", 80, 100]  # the 1 s window it was fit to
    wav = tmp_path / "clip.wav"
    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 5000).astype(np.float32), 16000)
    assert run_readme_example(tmp_path / "onnx", wav, capsys).split()[0] in {"a", "b"}


def test_clap_classifier(tiny_clap, tmp_path):
    model = build_dual_encoder_classifier(tiny_clap, {0: "bark", 1: "meow", 2: "hum"}, head_init="random")
    model.save_pretrained(tmp_path / "run")
    AutoProcessor.from_pretrained(tiny_clap).save_pretrained(tmp_path / "run")
    report = export(tmp_path / "run", tmp_path / "onnx", "--audio_seconds", "1")
    assert report["modality"] == "audio" and report["files"]["model"]["output_shape"] == ["batch", 3]


# --- dual encoder towers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_vtde", "tiny_clip", "tiny_clap"])
def test_dual_encoder_towers(fixture, request, tmp_path, capsys):
    path = request.getfixturevalue(fixture)
    out = tmp_path / "onnx"
    report = export(path, out)
    media = "audio" if fixture == "tiny_clap" else "image"
    assert report["kind"] == "dual-encoder" and list(report["files"]) == [f"{media}_tower", "text_tower"]
    assert "labels.json" not in os.listdir(out)

    model, processor = AutoModel.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)
    texts = ["a", "the small red circle in a photo of a cat, close up."]  # other lengths than the traced ones
    tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
    got = run_onnx(out / "text_tower.onnx", dict(tokens))
    with torch.no_grad():
        names = ("input_ids", "attention_mask", "token_type_ids")
        expected = model.get_text_features(**{k: v for k, v in tokens.items() if k in names}).pooler_output
    assert np.abs(got - F.normalize(expected, dim=-1).numpy()).max() <= TOL
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)

    if media == "image":
        sample = image_file(tmp_path)
    else:
        sample = tmp_path / "clip.wav"
        sf.write(sample, np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    similarities = re.findall(r"np\.float32\(([-0-9.e]+)\)", run_readme_example(out, sample, capsys))
    assert len(similarities) == 2 and all(-1 <= float(s) <= 1 for s in similarities)


# --- refused folders -----------------------------------------------------------------------------------------


def test_unfinished_run_is_refused_naming_its_newest_checkpoint(tmp_path):
    for step in (2, 10):
        (tmp_path / "run" / f"checkpoint-{step}").mkdir(parents=True)
    with pytest.raises(UserError, match=r"run is the folder of an unfinished run.*checkpoint-10"):
        export_main([str(tmp_path / "run"), "--output_dir", str(tmp_path / "onnx")])
    (tmp_path / "run" / "checkpoint-10" / "trainer_state.json").write_text("{}")  # a LoRA checkpoint: adapter only
    (tmp_path / "run" / "checkpoint-10" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match=r"checkpoint-10 is a Trainer checkpoint of an unfinished run"):
        export_main([str(tmp_path / "run" / "checkpoint-10"), "--output_dir", str(tmp_path / "onnx")])
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "config.json").write_text(json.dumps(ViTConfig().to_dict()))
    with pytest.raises(UserError, match=r"saved has a config.json but no weights"):
        export_main([str(tmp_path / "saved"), "--output_dir", str(tmp_path / "onnx")])


def test_unsupported_architecture_is_refused_from_the_command_line(tmp_path):
    config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    result = subprocess.run(
        [sys.executable, "-m", "mm_hf.export", str(tmp_path / "bert"), "--output_dir", str(tmp_path / "onnx")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert result.returncode == 2, result.stderr
    assert "bert (BertForSequenceClassification) is not supported by export" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "onnx").exists()


def test_siglip_towers(tiny_siglip, tmp_path):
    # The fixture has no processor (export refuses such a folder), so the towers are traced from the module's parts.
    model = AutoModel.from_pretrained(tiny_siglip).eval()
    with pytest.raises(UserError, match=r"tiny_siglip.* has no processor config"):
        export_main([tiny_siglip, "--output_dir", str(tmp_path / "refused")])
    image = ExportSpec("image_tower", NamedInputs(model, tower_embedding("get_image_features"), ["pixel_values"]),
                       "image_embeds", {"pixel_values": torch.randn(2, 3, 32, 32)})  # fmt: skip
    text = ExportSpec("text_tower", NamedInputs(model, tower_embedding("get_text_features"), ["input_ids"]),
                      "text_embeds", {"input_ids": torch.randint(0, 64, (2, 7))}, ("input_ids",))  # fmt: skip
    for spec in (image, text):
        export_spec(spec, str(tmp_path / f"{spec.name}.onnx"))
        session = session_for(str(tmp_path / f"{spec.name}.onnx"))
        assert max_abs_diff(spec, session, 1) <= TOL and max_abs_diff(spec, session, 5) <= TOL
    ids = torch.randint(0, 64, (3, 12))  # another length than traced
    with torch.no_grad():
        expected = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1).numpy()
    assert np.abs(run_onnx(tmp_path / "text_tower.onnx", {"input_ids": ids}) - expected).max() <= TOL
