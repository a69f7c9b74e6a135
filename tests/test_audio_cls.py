"""recipes/audio_cls.py end to end on a tiny wav2vec2: outputs, strategies, inputs, sample rates, and bad data."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import REPO, load_recipe
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, Wav2Vec2Model

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.args import parse_args
from mm_hf.data.audio import AudioTransform, BadSampleError
from mm_hf.demo import write_tones_audiofolder

recipe = load_recipe("audio_cls")
CLASSES = ["high", "low", "mid", "noise"]


@pytest.fixture(scope="module")
def tones_dir(tmp_path_factory):
    """Tone class folders high/low/mid/noise: 6 train / 2 validation / 4 test clips per class."""
    root = tmp_path_factory.mktemp("tones")
    write_tones_audiofolder(str(root), per_class=(6, 2, 4), seed=0)
    return root


def run(model, out, *extra, data, steps=3):
    args = [
        "--model_name_or_path", str(model), "--output_dir", str(out),
        "--do_train", "--do_eval", "--do_predict", "--max_steps", str(steps),
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
        "--save_strategy", "no", "--max_length_seconds", "0.5",
    ]  # fmt: skip
    for split, source in data.items():
        args += [f"--{split}_{'file' if str(source).endswith(('.csv', '.jsonl')) else 'dir'}", str(source)]
    return recipe.main(args + list(extra))


def folders(root):
    return {split: root / split for split in ("train", "validation", "test")}


def test_full_run_writes_complete_output_folder(tiny_wav2vec2, tones_dir, tmp_path):
    out = tmp_path / "out"
    results = run(tiny_wav2vec2, out, "--finetune_strategy", "full", data=folders(tones_dir))
    expected = {
        "model.safetensors", "config.json", "preprocessor_config.json", "run_config.yaml", "all_results.json",
        "classification_report.json", "classification_report.txt", "confusion_matrix.json", "confusion_matrix.png",
        "training_curves.png", "README.md", "before_after.md", "zeroshot_classification_report.json",
    }  # fmt: skip
    files = set(os.listdir(out))
    assert expected <= files, expected - files
    on_disk = json.loads((out / "all_results.json").read_text())
    for key in ("zeroshot_test_accuracy", "test_accuracy", "eval_accuracy", "test_macro_f1", "train_runtime"):
        assert key in on_disk and on_disk[key] == results[key]
    assert on_disk["test_samples"] == 16 and on_disk["train_samples"] == 24 and on_disk["eval_samples"] == 8

    report = json.loads((out / "classification_report.json").read_text())
    assert sorted(report["per_class"]) == CLASSES
    assert sum(c["support"] for c in report["per_class"].values()) == 16
    assert report["accuracy"] == pytest.approx(results["test_accuracy"])
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(CLASSES)}
    assert json.loads((out / "preprocessor_config.json").read_text())["sampling_rate"] == 16000

    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "audio-classification"
    assert "before (untrained head)" in card.text and "accelerate launch recipes/audio_cls.py" in card.text
    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert resolved["finetune_strategy"] == "full" and resolved["max_length_seconds"] == 0.5

    # The folder reloads with plain Auto classes and reproduces the reported test accuracy.
    model = AutoModelForAudioClassification.from_pretrained(out).eval()
    assert accuracy(model, out, tones_dir / "test") == pytest.approx(on_disk["test_accuracy"])


def accuracy(model, extractor_dir, folder, batch_size=16):
    transform = AudioTransform(AutoFeatureExtractor.from_pretrained(extractor_dir), max_length_seconds=0.5)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    paths = sorted(str(p) for p in folder.glob("*/*.wav"))
    correct = 0
    for start in range(0, len(paths), batch_size):  # the eval batches of the run: padding is per batch
        chunk = paths[start : start + batch_size]
        batch = transform(
            {"audio": chunk, "labels": [names.index(os.path.basename(os.path.dirname(p))) for p in chunk]}
        )
        inputs = {k: torch.stack(v) for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            correct += (model(**inputs).logits.argmax(-1) == torch.tensor(batch["labels"])).sum().item()
    return correct / len(paths)


@pytest.mark.parametrize("strategy", ["linear_probe", "top_k", "lora"])
def test_every_strategy_trains_and_saves(tiny_wav2vec2, tones_dir, tmp_path, strategy):
    out = tmp_path / strategy
    extra = {"top_k": ["--unfreeze_last_n_layers", "1"], "lora": ["--lora_r", "4"]}.get(strategy, [])
    # No warmup: its first step has a learning rate of 0, and one step must move what the strategy trains.
    flags = ["--finetune_strategy", strategy, "--weight_decay", "0", "--warmup_steps", "0", *extra]
    results = run(tiny_wav2vec2, out, *flags, data=folders(tones_dir), steps=1)
    assert np.isfinite(results["train_loss"]) and results["test_samples"] == 16
    files = set(os.listdir(out))
    if strategy == "lora":
        assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= files
        assert "model.safetensors" not in files
        # The adapter trained (LoRA's B starts at zero) and carries the trained head along.
        adapter = load_file(str(out / "adapter_model.safetensors"))
        lora_b = [t for k, t in adapter.items() if "lora_B" in k]
        assert lora_b and any(t.abs().sum() > 0 for t in lora_b)
        assert any("classifier" in k for k in adapter)
        return
    # The saved backbone against the base checkpoint, tensor by tensor.
    saved = load_file(str(out / "model.safetensors"))
    base = Wav2Vec2Model.from_pretrained(tiny_wav2vec2).state_dict()
    changed = {n: not torch.equal(saved[f"backbone.{n}"], t) for n, t in base.items() if f"backbone.{n}" in saved}
    assert len(changed) == len(base)
    moved = {n for n, c in changed.items() if c}
    if strategy == "linear_probe":
        assert not moved, sorted(moved)[:5]
    else:  # top_k 1: the last encoder layer (and the final norm) train; the conv stem and the first layer do not
        assert any(n.startswith("encoder.layers.1.") for n in moved)
        assert all(n.startswith(("encoder.layers.1.", "encoder.layer_norm.")) for n in moved), sorted(moved)[:5]
    head = {k for k in saved if k.startswith(("classifier.", "pooler."))}
    assert head  # the trained head is in the checkpoint, next to the backbone


def test_csv_input_with_relative_paths_and_custom_columns(tiny_wav2vec2, tones_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tones_dir, data / "clips")
    splits = {}
    for split in ("train", "validation", "test"):
        rows = [(os.path.relpath(p, data), p.parent.name) for p in sorted((data / "clips" / split).glob("*/*.wav"))]
        with open(data / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("file", "sound"), *rows])
        splits[split] = data / f"{split}.csv"
    results = run(
        tiny_wav2vec2,
        tmp_path / "out",
        "--finetune_strategy",
        "linear_probe",
        "--audio_column_name",
        "file",
        "--label_column_name",
        "sound",
        data=splits,
        steps=2,
    )
    assert results["test_samples"] == 16 and results["train_samples"] == 24


def test_other_rates_channels_and_bit_depths_train(tiny_wav2vec2, tones_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tones_dir, data)
    formats = [(44100, 2, "PCM_24"), (8000, 1, "PCM_16"), (22050, 2, "FLOAT"), (48000, 1, "PCM_32")]
    for path, (rate, channels, subtype) in zip(sorted((data / "train").glob("*/*.wav")), formats, strict=False):
        t = np.arange(int(0.8 * rate)) / rate
        clip = 0.5 * np.sin(2 * np.pi * 440 * t)
        sf.write(path, np.stack([clip] * channels, axis=1) if channels > 1 else clip, rate, subtype=subtype)
        assert sf.info(path).samplerate == rate and sf.info(path).channels == channels
    results = run(tiny_wav2vec2, tmp_path / "out", "--finetune_strategy", "full", data=folders(data), steps=2)
    assert results["train_samples"] == 24 and np.isfinite(results["train_loss"])


def test_corrupt_and_non_audio_files_are_named_or_skipped(tiny_wav2vec2, tones_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tones_dir, data)
    bad = sorted((data / "train" / "mid").glob("*.wav"))[0]
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated inside the audio data
    (data / "train" / "low" / "notes.txt").write_text("not audio")
    with pytest.raises(BadSampleError, match=bad.name):
        run(tiny_wav2vec2, tmp_path / "out", "--finetune_strategy", "linear_probe", data=folders(data))
    assert not (tmp_path / "out" / "model.safetensors").exists()
    results = run(
        tiny_wav2vec2,
        tmp_path / "out2",
        "--finetune_strategy",
        "linear_probe",
        "--skip_bad_samples",
        "true",
        data=folders(data),
        steps=1,
    )
    assert results["skipped_bad_samples"] == 2 and results["train_samples"] == 23


def test_long_clips_are_cropped(tiny_wav2vec2, tones_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tones_dir, data)
    long_clip = data / "train" / "noise" / "long.wav"
    sf.write(long_clip, np.random.default_rng(0).uniform(-0.5, 0.5, 10 * 16000), 16000)
    extractor = AutoFeatureExtractor.from_pretrained(tiny_wav2vec2)
    batch = {"audio": [str(long_clip)], "labels": [3]}
    train = AudioTransform(extractor, max_length_seconds=0.5, train=True)(batch)
    first = AudioTransform(extractor, max_length_seconds=0.5)(batch)
    assert train["input_values"][0].shape == first["input_values"][0].shape == (8000,)
    expected = extractor(sf.read(long_clip, dtype="float32")[0][:8000], sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(first["input_values"][0], expected["input_values"][0])  # eval: the first window
    results = run(tiny_wav2vec2, tmp_path / "out", "--finetune_strategy", "full", data=folders(data), steps=2)
    assert results["train_samples"] == 25


def test_short_full_training_beats_the_untrained_head(tiny_wav2vec2, tmp_path):
    # 60 steps on 0.25 s windows, no validation split: about 7 s; margins over 4 seeds were +0.31 to +0.56.
    data = tmp_path / "tones"
    write_tones_audiofolder(str(data), per_class=(16, 0, 8), seed=1)
    results = run(
        tiny_wav2vec2,
        tmp_path / "out",
        "--finetune_strategy",
        "full",
        "--max_length_seconds",
        "0.25",
        "--augment",
        "false",
        "--train_val_split",
        "0",
        "--per_device_eval_batch_size",
        "32",
        data={"train": data / "train", "test": data / "test"},
        steps=60,
    )
    assert results["test_accuracy"] > results["zeroshot_test_accuracy"] + 0.2, results


def test_shipped_yaml_parses():
    path = os.path.join(REPO, "recipes", "configs", "audio_cls_demo.yaml")
    _, data_args, ft_args, audio_args, _, training_args = parse_args(recipe.ARGUMENT_TYPES, ["--config", path])
    assert data_args.train_dir and training_args.output_dir and audio_args.max_length_seconds > 0
    assert ft_args.finetune_strategy in ("linear_probe", "top_k", "full", "lora")


def test_lora_adapter_reloads_and_publishes_merged(tiny_wav2vec2, tones_dir, tmp_path):
    """An audio adapter folder reloads through mm_hf.models.load_finetuned and merges to a plain checkpoint."""
    from transformers import AutoModelForAudioClassification

    from mm_hf.models import load_finetuned
    from mm_hf.publish import _save_merged

    out = tmp_path / "lora"
    run(tiny_wav2vec2, out, "--finetune_strategy", "lora", "--lora_r", "4", "--learning_rate", "5e-2",
        data=folders(tones_dir), steps=2)  # fmt: skip
    adapter = load_finetuned(str(out)).eval()
    assert type(adapter.get_base_model()).__name__ == "AudioClassifierForAudioClassification"
    waves = torch.randn(2, 8000)
    with torch.no_grad():
        expected = adapter(input_values=waves).logits
        with adapter.disable_adapter():
            untrained = adapter(input_values=waves).logits
    assert not torch.allclose(expected, untrained)  # the adapter and its trained head were really applied
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    _save_merged(str(out), str(merged_dir))  # what `python -m mm_hf.publish --merged` uploads
    merged = AutoModelForAudioClassification.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_values=waves).logits, expected, rtol=1e-4, atol=1e-5)
