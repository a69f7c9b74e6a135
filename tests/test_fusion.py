"""Multimodal fusion: the model (Auto* and remote-code round trips, missing modalities, every fusion), the
processor, and recipes/fusion_imagetext_cls.py on synthetic data whose label needs both modalities."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import load_recipe
from transformers import AutoModelForSequenceClassification

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.args import DataArguments, FinetuneArguments
from mm_hf.data.multimodal import MultimodalColumns, load_multimodal_splits
from mm_hf.data.synthetic import write_click_dataset, write_imagetext_xor
from mm_hf.data.validation import BadSampleError
from mm_hf.models import MultimodalFusionForClassification, build_fusion_classifier
from mm_hf.models.tiny import build_tiny_encoders
from mm_hf.processing import MultimodalProcessor, ProcessorSettings
from mm_hf.training import apply_strategy

recipe = load_recipe("fusion_imagetext_cls")
TASK = [{"name": "label", "problem_type": "single_label_classification", "labels": ["no", "yes"]}]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return build_tiny_encoders(str(tmp_path_factory.mktemp("encoders")))


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    return write_imagetext_xor(str(tmp_path_factory.mktemp("xor")), sizes=(200, 40, 100), seed=0)


def build(encoders, fusion="concat", tasks=TASK, **kwargs):
    torch.manual_seed(0)
    return build_fusion_classifier(
        {"image": encoders["vision"], "text": encoders["text"]}, tasks, fusion=fusion, hidden_size=16, **kwargs
    )


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(n, 3, 32, 32, generator=g),
        "input_ids": torch.randint(5, 20, (n, 8), generator=g),
        "attention_mask": torch.ones(n, 8, dtype=torch.long),
    }


@pytest.mark.parametrize("fusion", ["concat", "late", "gated", "cross_attention", "tensor"])
def test_every_fusion_round_trips_through_auto_class_and_handles_missing_modalities(encoders, tmp_path, fusion):
    model = build(encoders, fusion).eval()
    inputs = batch()
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]])
    with torch.no_grad():
        logits = model(**inputs, modality_mask=mask).logits
        # A missing modality's input does not matter: the placeholder stands in for it.
        changed = {**inputs, "pixel_values": inputs["pixel_values"].clone()}
        changed["pixel_values"][2] += 5.0
        changed["input_ids"] = inputs["input_ids"].clone()
        changed["input_ids"][1] = 7
        same = model(**changed, modality_mask=mask).logits
        assert torch.allclose(logits, same, atol=1e-6)
        # ...whereas the same changes move rows 1 and 2 once those modalities are present.
        everything = torch.ones(4, 2)
        before, after = (
            model(**inputs, modality_mask=everything).logits,
            model(**changed, modality_mask=everything).logits,
        )
        for row in (1, 2):
            assert not torch.allclose(before[row], after[row], atol=1e-6), row
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert isinstance(reloaded, MultimodalFusionForClassification)
    assert reloaded.config.fusion == fusion and reloaded.config.tasks[0]["labels"] == ["no", "yes"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs, modality_mask=mask).logits, logits, rtol=0, atol=1e-6)


def test_late_fusion_averages_the_present_modalities_heads(encoders):
    model = build(encoders, "late").eval()
    inputs = batch()
    with torch.no_grad():
        out = model.multimodal(**inputs)
        head = model.heads["label"]
        per_modality = torch.stack([h(out.tokens[:, m]) for m, h in enumerate(head.heads)], dim=1)
        both = model(**inputs).logits
        image_only = model(**inputs, modality_mask=torch.tensor([[1, 0]] * 4)).logits
    torch.testing.assert_close(both, per_modality.mean(dim=1))
    torch.testing.assert_close(image_only, per_modality[:, 0])


REMOTE = r"""
import json, sys
sys.modules["mm_hf"] = None  # the checkpoint must bring its own code
import torch
from transformers import AutoModelForSequenceClassification
folder = sys.argv[1]
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**torch.load(folder + "/inputs.pt")).logits
print(json.dumps({"logits": logits.tolist(), "module": type(model).__module__}))
"""


def test_remote_code_loads_without_mm_hf(encoders, tmp_path):
    model = build(encoders, "cross_attention", modality_dropout=0.3).eval()
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    assert {"modeling_multimodal_fusion.py", "fusion_modules.py", "configuration_multimodal_fusion.py"} <= set(
        os.listdir(folder)
    )
    for code in ("modeling_multimodal_fusion.py", "fusion_modules.py", "configuration_multimodal_fusion.py"):
        text = (folder / code).read_text()
        assert "import mm_hf" not in text and "from mm_hf" not in text
    inputs = {**batch(), "modality_mask": torch.tensor([[1, 1], [0, 1], [1, 0], [1, 1]])}
    torch.save(inputs, folder / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs).logits
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", REMOTE, str(folder)], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    assert remote["module"].startswith("transformers_modules")
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, rtol=0, atol=1e-6)


def test_processor_marks_missing_modalities_and_round_trips(encoders, xor, tmp_path):
    splits, _ = load_multimodal_splits(
        DataArguments(train_file=xor["train"]),
        MultimodalColumns(image="image", text="text", labels=["label"]),
        "single_label_classification",
    )
    settings = ProcessorSettings(modalities=["image", "text"], max_length=12)
    processor = MultimodalProcessor.from_encoders({"image": encoders["vision"], "text": encoders["text"]}, settings)
    rows = splits["train"][:3]
    rows["image"][1], rows["text"][2] = None, None
    out = processor.transform(train=False)(dict(rows))
    assert [m.tolist() for m in out["modality_mask"]] == [[1, 1], [0, 1], [1, 0]]
    assert torch.count_nonzero(out["pixel_values"][1]) == 0 and out["pixel_values"][0].shape == (3, 32, 32)
    assert out["input_ids"][0].shape == (12,) and out["labels"] == rows["labels"]
    processor.save_pretrained(tmp_path / "p")
    assert {"multimodal_processor.json", "image_processor", "tokenizer"} <= set(os.listdir(tmp_path / "p"))
    again = MultimodalProcessor.from_pretrained(str(tmp_path / "p")).transform(train=False)(dict(rows))
    for key in ("pixel_values", "input_ids", "modality_mask"):
        assert all(torch.equal(a, b) for a, b in zip(out[key], again[key], strict=True))


def run(encoders, data, out, *extra, modalities=("image", "text"), epochs=15):
    args = [
        "--train_file", data["train"], "--validation_file", data["validation"], "--test_file", data["test"],
        "--output_dir", str(out), "--do_train", "--do_eval", "--do_predict", "--finetune_strategy", "full",
        "--num_train_epochs", str(epochs), "--per_device_train_batch_size", "16", "--learning_rate", "1e-3",
        "--hidden_size", "32", "--max_seq_length", "16", "--augment", "false", "--report_to", "none",
        "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no", "--logging_steps", "5",
    ]  # fmt: skip
    if "image" in modalities:
        args += ["--vision_model_name_or_path", encoders["vision"], "--image_column", "image"]
    if "text" in modalities:
        args += ["--text_model_name_or_path", encoders["text"], "--text_column", "text"]
    return recipe.main(args + list(extra))


@pytest.fixture(scope="module")
def single_modality_accuracy(encoders, xor, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return {m: run(encoders, xor, out / m, modalities=(m,))["test_accuracy"] for m in ("image", "text")}


@pytest.mark.parametrize("fusion", ["concat", "gated", "cross_attention", "tensor"])
def test_fusion_beats_either_modality_alone(encoders, xor, tmp_path, fusion, single_modality_accuracy):
    results = run(encoders, xor, tmp_path / "out", "--fusion", fusion)
    # The label is (image is red) XOR (text says large): one modality alone is at chance.
    # At chance means near 0.5 from both sides (measured 0.52 / 0.55): far below would be a broken pipeline.
    assert all(0.35 <= a <= 0.65 for a in single_modality_accuracy.values()), single_modality_accuracy
    assert results["test_accuracy"] >= 0.9, results
    # Removing either modality at test time brings the fused model back to chance.
    for modality in ("image", "text"):
        assert 0.35 <= results[f"test_without_{modality}_accuracy"] <= 0.65  # measured 0.46-0.54
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["test_accuracy"] == results["test_accuracy"] and "test_without_text_accuracy" in saved
    assert "without_text_accuracy" in (tmp_path / "out" / "before_after.md").read_text()


def test_late_fusion_cannot_model_the_interaction(encoders, xor, tmp_path):
    # Averaged per-modality decisions cannot express XOR: the reason early/attention/tensor fusion exist.
    results = run(encoders, xor, tmp_path / "out", "--fusion", "late")
    assert 0.35 <= results["test_accuracy"] <= 0.7, results  # measured 0.55: chance, not worse


def test_saved_folder_reproduces_the_reported_metrics(encoders, xor, tmp_path, fusion_pixel_dtypes):
    """The Trainer's uint8 image batches (normalised by the model) and the saved folder's float pixels agree."""
    out = tmp_path / "out"
    results = run(encoders, xor, out, "--fusion", "gated", epochs=6)
    assert len(fusion_pixel_dtypes) > 6 and set(fusion_pixel_dtypes) == {torch.uint8}  # every batch, train and eval
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    processor = MultimodalProcessor.from_pretrained(str(out))
    splits, _ = load_multimodal_splits(
        DataArguments(train_file=xor["train"], test_file=xor["test"]),
        MultimodalColumns(image="image", text="text", labels=["label"]),
        "single_label_classification",
    )
    inputs = processor.transform(train=False)(dict(splits["test"][:]))
    labels = torch.tensor(inputs.pop("labels"))
    with torch.no_grad():
        logits = model(**{k: torch.stack(v) for k, v in inputs.items()}).logits
    assert (logits.argmax(-1) == labels).float().mean().item() == pytest.approx(results["test_accuracy"])
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and "without_image_accuracy" in card
    assert "multimodal-classification" in card


def test_multi_task_and_multi_label_heads(encoders, xor, tmp_path):
    results = run(
        encoders, xor, tmp_path / "mt", "--label_column", "label", "red", "large",
        "--problem_type", "single_label_classification", "binary_classification", "regression",
        "--loss_weights", "1", "0.25", "2", epochs=4,
    )  # fmt: skip
    for key in ("test_label_accuracy", "test_red_roc_auc", "test_red_log_loss", "test_large_mae", "test_large_pearson"):
        assert key in results, sorted(results)
    # The loss is the weighted sum of each task's own loss (cross-entropy, binary log loss, mean squared error),
    # before training and after, in the order the tasks were given.
    for prefix in ("zeroshot_test", "eval", "test"):
        weighted = sum(w * results[f"{prefix}_{t}"] for w, t in ((1, "label_log_loss"), (0.25, "red_log_loss"),
                                                                  (2, "large_mse")))  # fmt: skip
        assert results[f"{prefix}_loss"] == pytest.approx(weighted, rel=1e-4), prefix
    config = json.loads((tmp_path / "mt" / "config.json").read_text())
    assert [(t["name"], t["loss_weight"]) for t in config["tasks"]] == [("label", 1.0), ("red", 0.25), ("large", 2.0)]
    report = json.loads((tmp_path / "mt" / "task_report.json").read_text())
    assert set(report) == {"label", "red", "large"} and "yes_f1" in report["label"]

    results = run(
        encoders, xor, tmp_path / "ml", "--label_column", "red", "large",
        "--problem_type", "multi_label_classification", epochs=12,
    )  # fmt: skip
    for key in ("test_micro_f1", "test_macro_f1", "test_mAP", "test_macro_roc_auc", "test_subset_accuracy"):
        assert key in results
    # Each label needs one modality only: multi-label BCE learns both.
    assert results["test_macro_f1"] >= 0.9, results
    report = json.loads((tmp_path / "ml" / "task_report.json").read_text())["red+large"]
    assert {"red_f1", "large_f1", "red_roc_auc", "large_average_precision"} <= set(report)


@pytest.mark.parametrize(
    ("strategy", "per_encoder", "vision_moves", "text_moves"),
    [("linear_probe", {}, False, False), ("full", {"text": "frozen"}, True, False), ("lora", {}, True, True)],
)
def test_strategies_train_what_they_say(encoders, strategy, per_encoder, vision_moves, text_moves):
    model = build(encoders)
    args = FinetuneArguments(finetune_strategy=strategy, lora_r=4)
    model = apply_strategy(model, args, per_encoder)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("heads." in n for n in trainable) and any("poolers." in n or "projections." in n for n in trainable)
    assert any("missing_tokens" in n for n in trainable) and any("projections." in n for n in trainable)
    assert any("encoders.vision." in n for n in trainable) == vision_moves
    assert any("encoders.text." in n for n in trainable) == text_moves
    if strategy == "lora":
        assert all("lora_" in n for n in trainable if "encoders." in n)


def test_click_example_with_tabular_features(encoders, tmp_path):
    data = write_click_dataset(str(tmp_path / "data"), sizes=(160, 40, 80), seed=0)
    out = tmp_path / "out"
    args = [
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--image_column", "image", "--text_column", "title", "--numeric_columns", "age", "price",
        "--categorical_columns", "segment", "--label_column", "click", "--problem_type", "binary_classification",
        "--train_file", data["train"], "--validation_file", data["validation"], "--test_file", data["test"],
        "--output_dir", str(out), "--do_train", "--do_eval", "--do_predict", "--finetune_strategy", "full",
        "--num_train_epochs", "6", "--per_device_train_batch_size", "16", "--learning_rate", "3e-3",
        "--hidden_size", "32", "--max_seq_length", "8", "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true", "--save_strategy", "no",
    ]  # fmt: skip
    results = recipe.main(args)
    for key in ("test_roc_auc", "test_log_loss", "test_without_tabular_roc_auc", "zeroshot_test_roc_auc"):
        assert key in results
    assert results["test_roc_auc"] > results["zeroshot_test_roc_auc"] + 0.1, results
    assert os.path.exists(out / "tabular_processor.json")
    config = json.loads((out / "config.json").read_text())
    assert config["modalities"] == ["image", "text", "tabular"] and config["tabular_num_numeric"] == 2
    assert config["tabular_cardinalities"] == [3]


def test_corrupt_image_is_named_before_training(encoders, xor, tmp_path, monkeypatch):
    from transformers import Trainer

    data_dir = tmp_path / "data"
    files = write_imagetext_xor(str(data_dir), sizes=(12, 4, 4), seed=1)
    bad = data_dir / "images" / "train_00003.png"
    bad.write_bytes(bad.read_bytes()[:40])
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("training started before the check"))
    monkeypatch.setattr(Trainer, "evaluate", lambda *a, **k: pytest.fail("evaluation started before the check"))
    with pytest.raises(BadSampleError, match=r"train_00003\.png"):
        run(encoders, files, tmp_path / "out", epochs=1)


def test_xor_data_is_balanced_and_needs_both(xor):
    rows = [json.loads(line) for line in open(xor["train"])]
    labels = np.array([r["label"] == "yes" for r in rows])
    red, large = np.array([r["red"] for r in rows]), np.array([r["large"] for r in rows])
    assert 0.4 < labels.mean() < 0.6
    # Neither factor alone predicts the label better than chance.
    for factor in (red, large):
        assert abs((labels == factor.astype(bool)).mean() - 0.5) < 0.1


def test_push_to_hub_publishes_model_code_and_processor_subfolders(encoders, xor, tmp_path, monkeypatch):
    from hub_server import HubTestServer, use_hub_server
    from huggingface_hub import metadata_load, snapshot_download

    import mm_hf.publish as publish_module

    monkeypatch.setattr(publish_module, "RETRY_BACKOFF_SECONDS", 0.01)
    with HubTestServer() as hub:
        use_hub_server(monkeypatch, hub, token=None, cache_dir=tmp_path / "hf-cache")
        out = tmp_path / "out"
        results = run(
            encoders, xor, out, "--push_to_hub", "true", "--hub_model_id", "test-user/xor-fusion",
            "--hub_token", "hf_test_token", "--fusion", "tensor", epochs=1,
        )  # fmt: skip
        files = set(hub.repos["test-user/xor-fusion"]["files"])
        assert {
            "tokenizer/tokenizer.json",
            "image_processor/preprocessor_config.json",
            "multimodal_processor.json",
        } <= files
        assert {"fusion_modules.py", "modeling_multimodal_fusion.py", "model.safetensors"} <= files
        assert not any(name.endswith(".bin") for name in files)
        local = snapshot_download("test-user/xor-fusion", token="hf_test_token", cache_dir=tmp_path / "dl")
    model = AutoModelForSequenceClassification.from_pretrained(local, trust_remote_code=True).eval()
    processor = MultimodalProcessor.from_pretrained(local)
    rows = [json.loads(line) for line in open(xor["test"])][:4]
    root = os.path.dirname(xor["test"])
    inputs = processor.transform(train=False)(
        {"image": [os.path.join(root, r["image"]) for r in rows], "text": [r["text"] for r in rows]}
    )
    local_model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        batch = {k: torch.stack(v) for k, v in inputs.items()}
        torch.testing.assert_close(model(**batch).logits, local_model(**batch).logits)
    metadata = metadata_load(os.path.join(local, "README.md"))
    metrics = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(results["test_accuracy"])
    assert metrics["without_text_accuracy"] == pytest.approx(results["test_without_text_accuracy"])


def _whisper(path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=50, max_target_positions=16,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    WhisperModel(config).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=16, n_samples=16000, chunk_length=1).save_pretrained(path)
    return str(path)


def _dinov2(path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(
        Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    ).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    ("sources", "tower_of"),
    [
        ({"image": "tiny_clip", "text": "tiny_clip"}, {"vision": "vision_model", "text": "text_model"}),
        ({"image": "tiny_siglip", "audio": "tiny_clap"}, {"vision": "vision_model", "audio": "audio_model"}),
        ({"image": "dinov2", "audio": "whisper"}, {}),
    ],
)
def test_encoders_come_from_any_checkpoint_family(sources, tower_of, request, tmp_path):
    """CLIP/SigLIP/CLAP checkpoints contribute the matching tower (its pretrained weights), Whisper its encoder,
    plain encoders themselves; the fusion model round-trips whatever they are."""
    from transformers import AutoModel

    paths = {}
    for modality, name in sources.items():
        if name == "whisper":
            paths[modality] = _whisper(tmp_path / "whisper")
        elif name == "dinov2":
            paths[modality] = _dinov2(tmp_path / "dinov2")
        else:
            paths[modality] = request.getfixturevalue(name)
    model = build_fusion_classifier(paths, TASK, fusion="gated", hidden_size=16).eval()
    for key, tower in tower_of.items():
        source = AutoModel.from_pretrained(paths["image" if key == "vision" else key])
        expected = getattr(source, tower).state_dict()
        got = model.multimodal.encoders[key].state_dict()
        # The standalone tower model may nest the tower under a prefix (ClapAudioModel.audio_model...).
        prefix = next((k[: -len(name)] for k in got for name in expected if k.endswith(name)), "")
        assert all(torch.equal(expected[name], got[prefix + name]) for name in expected), key
    if "audio" in sources and sources["audio"] == "whisper":
        assert type(model.multimodal.encoders["audio"]).__name__ == "WhisperEncoder"
    inputs = {"pixel_values": torch.randn(2, 3, *((30, 30) if sources["image"] == "tiny_clip" else (32, 32)))}
    if "text" in sources:
        inputs.update(input_ids=torch.randint(2, 20, (2, 8)), attention_mask=torch.ones(2, 8, dtype=torch.long))
    if sources.get("audio") == "whisper":
        inputs["input_features"] = torch.randn(2, 16, 100)
    elif sources.get("audio") == "tiny_clap":
        inputs["input_features"] = torch.randn(2, 1, 101, 32)
    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, logits)


def test_top_k_trains_the_last_layers_of_each_encoder(encoders):
    model = apply_strategy(build(encoders), FinetuneArguments(finetune_strategy="top_k", unfreeze_last_n_layers=1))
    from mm_hf.models.towers import encoder_layers

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for key in ("vision", "text"):
        layers, _ = encoder_layers(model.multimodal.encoders[key])  # ViT (v5): layers; BERT: encoder.layer
        assert any(n.startswith(f"multimodal.encoders.{key}.{layers}.1.") for n in trainable)
        assert not any(n.startswith(f"multimodal.encoders.{key}.{layers}.0.") for n in trainable)
        assert not any(n.startswith(f"multimodal.encoders.{key}.embeddings.") for n in trainable)


def test_hub_format_dataset_with_image_feature(encoders, xor, tmp_path):
    """--dataset_name: Hub-style parquet splits with an Image feature (embedded bytes) and missing cells."""
    import datasets

    root = tmp_path / "hub"
    base = os.path.dirname(xor["train"])
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in open(xor[split])][:24]
        ds = datasets.Dataset.from_dict(
            {
                "photo": [os.path.join(base, r["image"]) if i % 7 else None for i, r in enumerate(rows)],
                "caption": [r["text"] for r in rows],
                "answer": [r["label"] for r in rows],
            }
        ).cast_column("photo", datasets.Image())
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    out = tmp_path / "out"
    results = recipe.main(
        [
            "--dataset_name", str(root), "--image_column", "photo", "--text_column", "caption",
            "--label_column", "answer", "--vision_model_name_or_path", encoders["vision"],
            "--text_model_name_or_path", encoders["text"], "--output_dir", str(out), "--do_train", "--do_eval",
            "--do_predict", "--max_steps", "2", "--per_device_train_batch_size", "8", "--hidden_size", "16",
            "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
        ]
    )  # fmt: skip
    assert results["test_samples"] == 24 and "test_without_image_accuracy" in results
    assert json.loads((out / "run_info.json").read_text())["dataset"] == str(root)


AUTO_PROCESSOR = """
import json, sys
sys.modules["mm_hf"] = None
import torch
from PIL import Image
from transformers import AutoModelForSequenceClassification, AutoProcessor
folder, rows = sys.argv[1], json.loads(sys.argv[2])
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
images = [Image.open(r["image"]) if r["image"] else None for r in rows]
tabular = [{"age": r["age"], "price": r["price"], "segment": r["segment"]} for r in rows]
batch = processor(images=images, text=[r["title"] for r in rows], tabular=tabular)
with torch.no_grad():
    logits = model(**batch).logits
print(json.dumps({"logits": logits.tolist(), "mask": batch["modality_mask"].tolist(),
                  "processor": type(processor).__module__}))
"""


def test_auto_processor_rebuilds_the_evaluation_inputs_without_mm_hf(encoders, tmp_path):
    """A fusion output folder loads with AutoProcessor + trust_remote_code in a process without mm_hf; fed decoded
    inputs (PIL images, texts, tabular dicts, some missing), its inputs give the recipe's evaluation logits."""
    data = write_click_dataset(str(tmp_path / "data"), sizes=(40, 16, 16), seed=0)
    out = tmp_path / "out"
    recipe.main([
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--image_column", "image", "--text_column", "title", "--numeric_columns", "age", "price",
        "--categorical_columns", "segment", "--label_column", "click", "--problem_type", "binary_classification",
        "--train_file", data["train"], "--validation_file", data["validation"], "--output_dir", str(out),
        "--do_train", "--max_steps", "2", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
        "--hidden_size", "16", "--max_seq_length", "8", "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true", "--save_strategy", "no",
    ])  # fmt: skip
    assert {"processor_config.json", "processing_multimodal_fusion.py"} <= set(os.listdir(out))
    assert "AutoProcessor.from_pretrained(" in (out / "README.md").read_text()  # the card shows this use
    code = (out / "processing_multimodal_fusion.py").read_text()
    assert "import mm_hf" not in code and "from mm_hf" not in code
    root = os.path.dirname(data["test"])
    rows = [json.loads(line) for line in open(data["test"])][:6]
    for row in rows:
        row["image"] = os.path.join(root, row["image"])
    rows[1]["image"], rows[2]["title"] = None, None  # missing modalities
    rows[3]["segment"], rows[3]["price"], rows[4]["segment"] = None, None, "never-seen"
    # In process: what the recipe's evaluation feeds the model (mm_hf decodes the files itself).
    processor = MultimodalProcessor.from_pretrained(str(out))
    columns = {"image": "image", "text": "title", "age": "age", "price": "price", "segment": "segment"}
    inputs = processor.transform(train=False)({k: [r[c] for r in rows] for k, c in columns.items()})
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = model(**{k: torch.stack(v) for k, v in inputs.items() if not k.startswith("labels")}).logits
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run(
        [sys.executable, "-c", AUTO_PROCESSOR, str(out), json.dumps(rows)], capture_output=True, text=True, env=env,
        cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    assert remote["processor"].startswith("transformers_modules")
    assert remote["mask"] == [[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]]
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, rtol=0, atol=1e-5)


def test_shipped_processor_gives_the_evaluation_inputs_of_every_modality(encoders, xor, tiny_wav2vec2, tmp_path):
    """The saved processor_config.json + MultimodalFusionProcessor (decoded inputs) give exactly the tensors of
    MultimodalProcessor's evaluation transform (files): images, text, audio cut to its window, tabular, masks."""
    from PIL import Image

    from mm_hf.data.tabular import TabularProcessor
    from mm_hf.models.processing_multimodal_fusion import MultimodalFusionProcessor

    rows = [json.loads(line) for line in open(xor["test"])][:4]
    images = [os.path.join(os.path.dirname(xor["test"]), r["image"]) for r in rows]
    rng = np.random.default_rng(0)
    # 0.7 s and 0.3 s clips: the first is cut to the 0.5 s window, the batch is padded to the longest.
    waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (11200, 4800, 8000)] + [None]
    table = {"age": [31, None, "40", 25.5], "city": ["Oslo", "Oslo", None, "Atlantis"]}
    tabular = TabularProcessor().fit({"age": [30, 50, 20], "city": ["Oslo", "Bergen", "Oslo"]}, ["age"], ["city"])
    settings = ProcessorSettings(["image", "text", "audio", "tabular"], max_length=12, max_length_seconds=0.5)
    processor = MultimodalProcessor.from_encoders(
        {"image": encoders["vision"], "text": encoders["text"], "audio": tiny_wav2vec2}, settings, tabular
    )
    processor.save_pretrained(tmp_path / "p")
    sources = {
        "image": [images[0], None, images[2], images[3]],
        "text": [r["text"] for r in rows[:3]] + [None],
        "audio": [{"array": w, "sampling_rate": 16000} if w is not None else None for w in waves],
        **table,
    }
    expected = processor.transform(train=False)(sources)
    shipped = MultimodalFusionProcessor.from_pretrained(str(tmp_path / "p"))
    got = shipped(
        images=[Image.open(p) if p else None for p in sources["image"]],
        text=sources["text"],
        audio=waves,
        tabular=[{"age": a, "city": c} for a, c in zip(table["age"], table["city"], strict=True)],
    )
    assert set(got) == set(expected) and "audio_attention_mask" in got and got["input_values"].shape[1] == 8000
    for key, values in expected.items():
        torch.testing.assert_close(got[key], torch.stack(values), rtol=0, atol=0, equal_nan=True, msg=key)
    assert got["modality_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 1]]
    assert got["categorical_ids"].tolist() == [[2], [2], [0], [0]]  # Bergen=1, Oslo=2; missing and unseen: 0
    with pytest.raises(ValueError, match="same length"):
        shipped(images=[None], text=["a", "b"])
