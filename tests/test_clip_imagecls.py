"""recipes/clip_imagecls.py end to end on tiny models: outputs, strategies, inputs, and bad data."""

import contextlib
import csv
import json
import os
import shutil

import pytest
import torch
import yaml
from conftest import load_recipe
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageClassification, AutoProcessor, Trainer

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.args import STRATEGY_DEFAULTS
from mm_hf.data.images import BadSampleError
from mm_hf.data.loading import DataError
from mm_hf.data.transforms import build_image_transform
from mm_hf.models import ClipClassifierForImageClassification, load_finetuned

recipe = load_recipe("clip_imagecls")
CLASSES = ["one", "three", "two", "zero"]


def run(model, out, *extra, data=None, steps=3):
    data = data or {}
    args = [
        "--model_name_or_path",
        str(model),
        "--output_dir",
        str(out),
        "--do_train",
        "--do_eval",
        "--do_predict",
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "16",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
        "--save_strategy",
        "no",
        "--prompt_templates",
        "a photo of the digit {}.",
    ]
    for split in ("train", "validation", "test"):
        if split in data:
            args += [
                f"--{split}_{'file' if str(data[split]).endswith(('.csv', '.jsonl')) else 'dir'}",
                str(data[split]),
            ]
    return recipe.main(args + list(extra))


def folders(root):
    return {split: root / split for split in ("train", "validation", "test")}


def test_full_run_writes_complete_output_folder(tiny_vtde, digits_dir, tmp_path):
    out = tmp_path / "out"
    results = run(tiny_vtde, out, "--finetune_strategy", "full", "--head_init", "zeroshot", data=folders(digits_dir))
    files = set(os.listdir(out))
    expected = {
        "model.safetensors",
        "config.json",
        "configuration_clip_classifier.py",
        "modeling_clip_classifier.py",
        "processor_config.json",
        "run_config.yaml",
        "all_results.json",
        "classification_report.json",
        "classification_report.txt",
        "confusion_matrix.json",
        "confusion_matrix.png",
        "training_curves.png",
        "README.md",
        "before_after.md",
        "zeroshot_classification_report.json",
    }
    assert expected <= files, expected - files
    on_disk = json.loads((out / "all_results.json").read_text())
    for key in ("zeroshot_test_accuracy", "test_accuracy", "eval_accuracy", "test_macro_f1", "train_runtime"):
        assert key in on_disk and on_disk[key] == results[key]
    assert on_disk["test_samples"] == 20 and on_disk["train_samples"] == 48

    report = json.loads((out / "classification_report.json").read_text())
    assert sorted(report["per_class"]) == CLASSES
    assert sum(c["support"] for c in report["per_class"].values()) == 20
    assert report["accuracy"] == pytest.approx(results["test_accuracy"])

    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(CLASSES)}
    assert config["auto_map"]["AutoModelForImageClassification"].endswith("ClipClassifierForImageClassification")

    # Trainable weights moved; the text tower, which never runs, is not saved (the head holds what it gave).
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    base = AutoModel.from_pretrained(tiny_vtde)
    trained = dict(model.backbone.named_parameters())
    vision = [n for n, _ in base.named_parameters() if n.startswith("vision_model.")]
    base_params = dict(base.named_parameters())
    assert sum(not torch.equal(trained[n], base_params[n]) for n in vision) > len(vision) // 2
    assert not any(n.startswith(("text_model.", "text_projection.")) for n in trained)
    assert config["text_tower"] is False

    # The card's model-index carries exactly the numbers of all_results.json.
    card = ModelCard.load(out / "README.md")
    index = {m["type"]: m["value"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    assert index["accuracy"] == pytest.approx(on_disk["test_accuracy"])
    assert "before (zero-shot)" in card.text and "| accuracy" in card.text and "three" in card.text
    assert "accelerate launch recipes/clip_imagecls.py" in card.text

    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert resolved["finetune_strategy"] == "full" and resolved["learning_rate"] == 1e-3

    # The folder reloads and reproduces the reported test accuracy.
    assert accuracy(model, out, digits_dir / "test") == pytest.approx(on_disk["test_accuracy"])


def accuracy(model, processor_dir, folder):
    processor = AutoProcessor.from_pretrained(processor_dir)
    transform = build_image_transform(processor.image_processor, train=False)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    paths = sorted(str(p) for p in folder.glob("*/*.png"))
    labels = torch.tensor([names.index(os.path.basename(os.path.dirname(p))) for p in paths])
    pixels = torch.stack(transform({"image": paths})["pixel_values"])
    with torch.no_grad():
        return (model(pixel_values=pixels).logits.argmax(-1) == labels).float().mean().item()


def test_csv_and_jsonl_inputs_with_relative_paths_and_custom_columns(tiny_vtde, digits_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_dir, data / "images")
    for split in ("train", "validation", "test"):
        rows = [(os.path.relpath(p, data), p.parent.name) for p in sorted((data / "images" / split).glob("*/*.png"))]
        if split == "test":
            with open(data / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps({"file": p, "digit": label}) + "\n" for p, label in rows)
        else:
            with open(data / f"{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows([("file", "digit"), *rows])
    splits = {"train": data / "train.csv", "validation": data / "validation.csv", "test": data / "test.jsonl"}
    results = run(
        tiny_vtde,
        tmp_path / "out",
        "--finetune_strategy",
        "top_k",
        "--unfreeze_last_n_layers",
        "1",
        "--image_column_name",
        "file",
        "--label_column_name",
        "digit",
        data=splits,
    )
    assert results["test_samples"] == 20 and results["train_samples"] == 48
    # The labels came from the custom column: the digit names, 5 test images each.
    report = json.loads((tmp_path / "out" / "classification_report.json").read_text())
    assert {name: c["support"] for name, c in report["per_class"].items()} == dict.fromkeys(CLASSES, 5)


def test_lora_adapter_reload_and_merge_give_identical_logits(tiny_vtde, digits_dir, tmp_path):
    adapter_out, merged_out = tmp_path / "adapter", tmp_path / "merged"
    run(tiny_vtde, adapter_out, "--finetune_strategy", "lora", "--lora_r", "4", data=folders(digits_dir))
    run(
        tiny_vtde,
        merged_out,
        "--finetune_strategy",
        "lora",
        "--lora_r",
        "4",
        "--merge_lora",
        "true",
        data=folders(digits_dir),
    )
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= set(os.listdir(adapter_out))
    assert "model.safetensors" not in os.listdir(adapter_out)
    assert "adapter_config.json" not in os.listdir(merged_out) and "model.safetensors" in os.listdir(merged_out)
    adapter_weights = load_file(str(adapter_out / "adapter_model.safetensors"))
    assert any("classifier" in k for k in adapter_weights), "the trained head must travel with the adapter"

    pixels = torch.randn(5, 3, 32, 32)
    adapter = load_finetuned(str(adapter_out)).eval()
    merged = AutoModelForImageClassification.from_pretrained(merged_out).eval()
    base = load_finetuned(str(merged_out)).eval()  # plain checkpoint path of the loader
    with torch.no_grad():
        expected = adapter(pixel_values=pixels).logits
        torch.testing.assert_close(merged(pixel_values=pixels).logits, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(base(pixel_values=pixels).logits, expected, rtol=1e-4, atol=1e-5)
    # And training did something: the adapter differs from the untouched zero-shot start.
    assert not torch.allclose(
        adapter.get_base_model().classifier.weight, adapter.base_model.model.classifier.original_module.weight
    )


def test_linear_probe_runs_backbone_once_not_every_epoch(tiny_vtde, digits_dir, tmp_path, image_encoder_calls):
    calls = image_encoder_calls
    counts = []
    for epochs in (1, 4):
        calls.clear()
        results = run(
            tiny_vtde,
            tmp_path / f"probe{epochs}",
            "--finetune_strategy",
            "linear_probe",
            "--probe_solver",
            "trainer",
            "--num_train_epochs",
            str(epochs),
            data=folders(digits_dir),
            steps=-1,
        )
        counts.append(sum(calls))
        assert results["epoch"] == epochs
    # Every image of every split went through the backbone exactly once, however many epochs.
    assert counts == [48 + 16 + 20, 48 + 16 + 20]
    weights = load_file(str(tmp_path / "probe4" / "model.safetensors"))
    assert any(k.startswith("backbone.vision_model") for k in weights)  # the full model is saved


def test_random_head_is_labelled_as_such(tiny_vtde, digits_dir, tmp_path):
    run(
        tiny_vtde,
        tmp_path / "out",
        "--finetune_strategy",
        "linear_probe",
        "--head_init",
        "random",
        data=folders(digits_dir),
    )
    assert "before (random head)" in (tmp_path / "out" / "before_after.md").read_text()


def test_head_init_auto_keeps_an_informed_zero_shot_head_only(tiny_vtde):
    from datasets import Dataset

    from mm_hf.models import build_dual_encoder_classifier, choose_head

    model = build_dual_encoder_classifier(tiny_vtde, dict(enumerate(CLASSES)), head_init="random")
    classes = torch.nn.functional.normalize(torch.randn(4, model.config.embed_dim), dim=-1)
    labels = torch.arange(40) % 4
    informed = Dataset.from_dict({"image_embeds": (classes[labels] + 0.3 * torch.randn(40, 32)).tolist(),
                                  "labels": labels.tolist()}).with_format("torch")  # fmt: skip
    with torch.no_grad():
        model.classifier.weight.copy_(classes)
    kept = choose_head(model, informed, batch_size=16)
    assert kept["head_init"] == "zeroshot" and kept["zero_shot_accuracy"] > 0.9 and kept["chance"] == 0.25
    assert torch.equal(model.classifier.weight, classes)
    # The same head on embeddings that carry no class information: back to a random head, re-initialised.
    noise = informed.map(lambda row: {"image_embeds": torch.randn(32).tolist()}).with_format("torch")
    dropped = choose_head(model, noise, batch_size=16)
    assert dropped["head_init"] == "random" and dropped["zero_shot_accuracy"] < dropped["threshold"]
    assert not torch.equal(model.classifier.weight, classes)


def test_auto_head_strategy_defaults_retention_and_logging(tiny_vtde, digits_dir, tmp_path):
    def train(out, *extra):
        args = [
            "--model_name_or_path",
            str(tiny_vtde),
            "--output_dir",
            str(out),
            "--do_train",
            "--num_train_epochs",
            "7",
            "--per_device_train_batch_size",
            "8",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--use_cpu",
            "true",
            "--prompt_templates",
            "a photo of the digit {}.",
            "--finetune_strategy",
            "full",
        ]
        args += [f"--{s}_dir={digits_dir / s}" for s in ("train", "validation", "test")]
        results = recipe.main(args + list(extra))
        checkpoints = sorted(p for p in os.listdir(out) if p.startswith("checkpoint-"))
        state = json.loads((out / checkpoints[-1] / "trainer_state.json").read_text())
        losses = [h for h in state["log_history"] if "loss" in h]
        return results, checkpoints, losses, yaml.safe_load((out / "run_config.yaml").read_text())

    # Defaults: 42 steps, 7 evaluations and saves; at most the best and the last checkpoint stay, the loss is
    # logged about every 2% of the steps, and the strategy's defaults fill the flags left unset.
    results, checkpoints, losses, config = train(tmp_path / "a")
    assert results["epoch"] == 7 and len(checkpoints) <= 2 and len(losses) >= 10
    assert config["learning_rate"] == STRATEGY_DEFAULTS["full"]["learning_rate"]
    assert config["lr_scheduler_type"] == "cosine" and config["warmup_steps"] == 0.1 and config["weight_decay"] == 0.05
    # The tiny random text tower knows nothing of the digits: auto measured it and chose a random head.
    assert results["head_init"] == "random" and results["head_zero_shot_accuracy"] < results["head_threshold"]
    on_disk = json.loads((tmp_path / "a" / "all_results.json").read_text())
    assert (
        on_disk["head_init"] == "random" and "before (random head)" in (tmp_path / "a" / "before_after.md").read_text()
    )
    run_info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert run_info["head"]["head_init"] == "random"

    # A user's flags win, on the command line or in the YAML.
    (tmp_path / "c.yaml").write_text("head_dropout: 0.3\nlogging_steps: 20\n")
    results, checkpoints, losses, config = train(
        tmp_path / "b", "--config", str(tmp_path / "c.yaml"), "--save_total_limit", "3", "--learning_rate", "5e-4"
    )
    assert len(checkpoints) == 3 and len(losses) == 2  # steps 20 and 40
    assert config["learning_rate"] == 5e-4 and config["head_dropout"] == 0.3


def test_odd_image_modes_train(tiny_vtde, digits_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    images = sorted((data / "train").glob("*/*.png"))
    for path, mode in zip(images, ["LA", "P", "RGBA", "CMYK", "I;16", "1", "RGB"], strict=False):
        image = Image.open(path).convert("L")
        if mode == "I;16":
            image = image.point(lambda v: v * 256, "I").convert("I;16")
        else:
            image = image.convert(mode)
        if mode == "CMYK":  # PNG has no CMYK: store it as a JPEG, as print workflows do
            path.unlink()
            path = path.with_suffix(".jpg")
        image.save(path)
        assert Image.open(path).mode == mode
    results = run(tiny_vtde, tmp_path / "out", "--finetune_strategy", "linear_probe", data=folders(data))
    assert results["train_samples"] == 48


# ---- bad input: a clear error naming the culprit, raised before any training or writing ----


def assert_nothing_trained(out):
    assert not os.path.exists(out) or "model.safetensors" not in os.listdir(out)


@contextlib.contextmanager
def refused_before_training():
    """Fail the test if the recipe reaches the Trainer (evaluation before training included) inside the block."""
    with pytest.MonkeyPatch.context() as patch:
        for method in ("train", "evaluate", "predict"):
            patch.setattr(Trainer, method, lambda *a, **k: pytest.fail("the Trainer ran before the error was raised"))
        yield


def test_corrupt_image_is_named_or_skipped(tiny_vtde, digits_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    bad = next((data / "train" / "two").glob("*.png"))
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    (data / "train" / "one" / "notes.txt").write_text("not an image")
    with refused_before_training(), pytest.raises(BadSampleError, match=bad.name):
        run(tiny_vtde, tmp_path / "out", "--finetune_strategy", "linear_probe", data=folders(data))
    assert_nothing_trained(tmp_path / "out")
    results = run(
        tiny_vtde,
        tmp_path / "out2",
        "--finetune_strategy",
        "linear_probe",
        "--skip_bad_samples",
        "true",
        data=folders(data),
    )
    assert results["skipped_bad_samples"] == 2 and results["train_samples"] == 47


def test_missing_column_names_file_and_columns(tiny_vtde, digits_dir, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("path,label\nx.png,one\n")
    with (
        refused_before_training(),
        pytest.raises(DataError, match=r"train\.csv: missing column\(s\) 'image'; available: path, label"),
    ):
        run(tiny_vtde, tmp_path / "out", data={"train": path})


def test_empty_split_and_unseen_labels(tiny_vtde, digits_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    shutil.copytree(data / "test" / "one", data / "test" / "nine")
    with (
        refused_before_training(),
        pytest.raises(DataError, match=r"label\(s\) \['nine'\] in the test split never occur in the training data"),
    ):
        run(tiny_vtde, tmp_path / "out", data=folders(data))
    shutil.rmtree(data / "test" / "nine")
    for f in (data / "validation").glob("*/*.png"):
        f.unlink()
    with refused_before_training(), pytest.raises(DataError, match="validation split is empty"):
        run(tiny_vtde, tmp_path / "out", data=folders(data))
    assert_nothing_trained(tmp_path / "out")


def test_non_empty_output_dir_needs_overwrite(tiny_vtde, digits_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        run(tiny_vtde, out, data=folders(digits_dir))
    assert os.listdir(out) == ["keep.txt"]
    run(
        tiny_vtde,
        out,
        "--overwrite_output_dir",
        "true",
        "--finetune_strategy",
        "linear_probe",
        data=folders(digits_dir),
    )
    assert "model.safetensors" in os.listdir(out)


def record_forward_context(monkeypatch):
    """Patch the classifier's forward to record the conditions each training call runs under."""
    seen = []
    original = ClipClassifierForImageClassification.forward

    def forward(self, *args, **kwargs):
        if self.training:
            seen.append(
                {
                    "autocast_bf16": torch.is_autocast_enabled("cpu")
                    and torch.get_autocast_dtype("cpu") == torch.bfloat16,
                    "checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in self.modules()),
                    "compiling": torch.compiler.is_compiling(),
                }
            )
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ClipClassifierForImageClassification, "forward", forward)
    return seen


def test_bf16_and_gradient_checkpointing_reach_the_model(tiny_vtde, digits_dir, tmp_path, monkeypatch):
    seen = record_forward_context(monkeypatch)
    results = run(
        tiny_vtde,
        tmp_path / "out",
        "--finetune_strategy",
        "full",
        "--bf16",
        "true",
        "--gradient_checkpointing",
        "true",
        data=folders(digits_dir),
    )
    assert seen and all(s["autocast_bf16"] and s["checkpointing"] for s in seen)
    assert torch.isfinite(torch.tensor(results["train_loss"]))


@pytest.mark.slow  # compiling takes about a minute on 2 CPU cores
def test_torch_compile_reaches_the_model(tiny_vtde, digits_dir, tmp_path, monkeypatch):
    seen = record_forward_context(monkeypatch)
    run(
        tiny_vtde,
        tmp_path / "out",
        "--finetune_strategy",
        "full",
        "--torch_compile",
        "true",
        data=folders(digits_dir),
        steps=2,
    )
    assert seen and all(s["compiling"] for s in seen)


def test_hub_format_dataset_with_image_feature_and_classlabel(tiny_vtde, digits_dir, tmp_path):
    """--dataset_name on a Hub-format dataset: parquet shards, an Image feature, a ClassLabel, a 'valid' split."""
    from datasets import ClassLabel, Dataset, Features, Image, Value

    names = ["zero", "one", "two", "three"]
    features = Features({"img": Image(), "digit": ClassLabel(names=names), "extra": Value("int32")})
    root = tmp_path / "hub_dataset"
    for split, folder in (("train", "train"), ("valid", "validation"), ("test", "test")):
        paths = sorted((digits_dir / folder).glob("*/*.png"))
        rows = {"img": [str(p) for p in paths], "digit": [names.index(p.parent.name) for p in paths],
                "extra": list(range(len(paths)))}  # fmt: skip
        Dataset.from_dict(rows, features=features).to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    out = tmp_path / "out"
    results = recipe.main([
        "--model_name_or_path", str(tiny_vtde), "--dataset_name", str(root), "--output_dir", str(out),
        "--image_column_name", "img", "--label_column_name", "digit", "--do_train", "--max_steps", "2",
        "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
        "--finetune_strategy", "linear_probe",
    ])  # fmt: skip
    assert results["test_samples"] == 20 and "eval_accuracy" in results
    report = json.loads((out / "classification_report.json").read_text())
    assert list(report["per_class"]) == names  # ClassLabel order kept, not re-sorted


def test_without_a_test_split_the_validation_split_is_reported_as_eval(tiny_vtde, digits_dir, tmp_path):
    out = tmp_path / "out"
    results = run(
        tiny_vtde,
        out,
        "--finetune_strategy",
        "linear_probe",
        data={"train": digits_dir / "train", "validation": digits_dir / "validation"},
    )
    assert {"zeroshot_eval_accuracy", "eval_accuracy", "eval_samples"} <= set(results)
    assert not any(k.startswith(("test_", "validation_")) for k in results)
    card = ModelCard.load(out / "README.md")
    index = {m["type"]: m["value"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    assert index["accuracy"] == pytest.approx(results["eval_accuracy"])
