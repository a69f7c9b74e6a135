"""recipes/clip_retrieval.py end to end on tiny dual encoders: captions, strategies, outputs, bad input."""

import json
import os
import shutil

import pytest
import torch
from conftest import load_recipe
from transformers import AutoModel, AutoProcessor

from mm_hf.data.loading import DataError
from mm_hf.data.pairs import clean_captions

recipe = load_recipe("clip_retrieval")


@pytest.fixture(scope="module")
def pairs_dir(digits_dir, tmp_path_factory):
    """The digits folders with a metadata.jsonl of several captions per image."""
    from mm_hf.demo import write_digit_captions

    root = tmp_path_factory.mktemp("pairs") / "digits"
    shutil.copytree(digits_dir, root)
    write_digit_captions(str(root))
    return root


def run(model, out, data, *extra, steps=3):
    args = ["--model_name_or_path", str(model), "--output_dir", str(out), "--do_train", "--do_eval",
            "--train_dir", str(data / "train"), "--validation_dir", str(data / "validation"),
            "--test_dir", str(data / "test"), "--max_steps", str(steps), "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
            "--max_seq_length", "12"]  # fmt: skip
    return recipe.main(args + list(extra))


@pytest.mark.parametrize(
    ("strategy", "changes", "frozen"),
    [("full", ("vision_model", "text_model"), ()), ("lock_text", ("vision_model",), ("text_model", "text_projection")),
     ("lock_image", ("text_model",), ("vision_model", "visual_projection")), ("lora", ("vision_model", "text_model"), ())],
)  # fmt: skip
def test_strategies_train_the_right_towers_and_save_a_plain_dual_encoder(
    tiny_vtde, pairs_dir, tmp_path, strategy, changes, frozen
):
    out = tmp_path / strategy
    results = run(tiny_vtde, out, pairs_dir, "--finetune_strategy", strategy, "--learning_rate", "1e-2")
    for key in ("zeroshot_test_image_to_text_recall@1", "test_image_to_text_recall@1", "test_text_to_image_recall@5",
                "test_text_to_image_median_rank", "eval_loss", "train_loss"):  # fmt: skip
        assert key in results, key
    on_disk = json.loads((out / "all_results.json").read_text())
    assert on_disk["test_image_to_text_recall@1"] == results["test_image_to_text_recall@1"]
    # A plain dual encoder + processor: what the classification recipe and any user load with AutoModel.
    trained, base = AutoModel.from_pretrained(out), AutoModel.from_pretrained(tiny_vtde)
    assert type(trained).__name__ == "VisionTextDualEncoderModel"
    AutoProcessor.from_pretrained(out)
    base_params = dict(base.named_parameters())
    for prefix in changes:
        moved = [
            n for n, p in trained.named_parameters() if n.startswith(prefix) and not torch.equal(p, base_params[n])
        ]
        assert moved, f"{strategy}: nothing in {prefix} changed"
    for prefix in frozen:
        assert all(torch.equal(p, base_params[n]) for n, p in trained.named_parameters() if n.startswith(prefix))
    assert {"README.md", "before_after.md", "run_config.yaml", "training_curves.png"} <= set(os.listdir(out))
    assert "Per-class report" not in (out / "README.md").read_text()


def test_siglip_loss_and_zeroshot_classification_retention(tiny_vtde, pairs_dir, digits_dir, tmp_path):
    results = run(
        tiny_vtde,
        tmp_path / "out",
        pairs_dir,
        "--finetune_strategy",
        "full",
        "--loss",
        "siglip",
        "--zeroshot_eval_dir",
        str(digits_dir / "test"),
        "--prompt_templates",
        "a photo of the digit {}.",
    )
    assert 0.0 <= results["zeroshot_test_zeroshot_cls_accuracy"] <= 1.0
    assert "test_zeroshot_cls_accuracy" in results and torch.isfinite(torch.tensor(results["train_loss"]))


def test_assembled_dual_encoder_from_separate_encoders(tiny_vtde, pairs_dir, tmp_path):
    """--vision_model_name_or_path + --text_model_name_or_path build a new VisionTextDualEncoderModel."""
    source = AutoModel.from_pretrained(tiny_vtde)
    processor = AutoProcessor.from_pretrained(tiny_vtde)
    source.vision_model.save_pretrained(tmp_path / "vit")
    processor.image_processor.save_pretrained(tmp_path / "vit")
    source.text_model.save_pretrained(tmp_path / "bert")
    processor.tokenizer.save_pretrained(tmp_path / "bert")
    out = tmp_path / "out"
    run(
        tiny_vtde,
        out,
        pairs_dir,
        "--vision_model_name_or_path",
        str(tmp_path / "vit"),
        "--text_model_name_or_path",
        str(tmp_path / "bert"),
        "--projection_dim",
        "24",
        "--finetune_strategy",
        "full",
    )
    model = AutoModel.from_pretrained(out)
    assert model.config.projection_dim == 24 and model.visual_projection.out_features == 24


def test_bad_captions_are_dropped_reported_or_refused(tiny_vtde, pairs_dir, tmp_path):
    assert clean_captions(["a cat", None, "", " NA ", 3, "n/a", "x" * 5000]) == (["a cat", "x" * 5000], 5)
    assert clean_captions(None) == ([], 1)
    data = tmp_path / "data"
    shutil.copytree(pairs_dir, data)
    lines = (data / "train" / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[0]["caption"] = [None, "NA", ""]  # nothing usable
    rows[1]["caption"] = 42  # not a string
    rows[2]["caption"] = ["word " * 500, None]  # over-long: truncated by the tokenizer, the None ignored
    (data / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"metadata\.jsonl: 2 row\(s\) of the train split have no usable caption"):
        run(tiny_vtde, tmp_path / "out", data)
    results = run(tiny_vtde, tmp_path / "out2", data, "--skip_bad_samples", "true")
    assert results["train_samples"] == 48 - 2


def test_missing_caption_column_names_the_file(tiny_vtde, pairs_dir, tmp_path):
    with pytest.raises(DataError, match=r"metadata\.jsonl: missing column\(s\) 'text'"):
        run(tiny_vtde, tmp_path / "out", pairs_dir, "--caption_column", "text")


def test_contrastive_wrapper_round_trips_through_automodel(tiny_vtde, tmp_path):
    import mm_hf.models  # noqa: F401
    from mm_hf.models import ContrastiveDualEncoderModel

    model = ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(tiny_vtde), loss="siglip").eval()
    model.save_pretrained(tmp_path / "wrapper")
    reloaded = AutoModel.from_pretrained(tmp_path / "wrapper").eval()
    assert isinstance(reloaded, ContrastiveDualEncoderModel) and reloaded.config.loss == "siglip"
    pixels, ids = torch.randn(3, 3, 32, 32), torch.randint(5, 40, (3, 7))
    with torch.no_grad():
        a, b = model(pixel_values=pixels, input_ids=ids), reloaded(pixel_values=pixels, input_ids=ids)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.image_embeds, b.image_embeds)


@pytest.mark.parametrize("backbone", ["tiny_clip", "tiny_siglip", "tiny_vtde"])
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_wrapper_and_strategies_on_every_dual_encoder(backbone, loss, request):
    """Each strategy trains exactly its towers on CLIP, SigLIP and VisionTextDualEncoder backbones."""
    from types import SimpleNamespace

    from mm_hf.models import ContrastiveDualEncoderModel
    from mm_hf.training import apply_strategy

    path = request.getfixturevalue(backbone)
    size = 30 if backbone == "tiny_clip" else 32
    for strategy in ("full", "lock_image", "lock_text", "lora"):
        model = ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(path), loss=loss)
        args = SimpleNamespace(
            finetune_strategy=strategy, lora_r=2, lora_alpha=4, lora_dropout=0.0, lora_target_modules=None
        )
        model = apply_strategy(model, args)
        out = model(pixel_values=torch.randn(4, 3, size, size), input_ids=torch.randint(2, 40, (4, 6)))
        out.loss.backward()
        grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert grads <= trainable and grads, strategy
        vision = any("vision_model" in n for n in grads)
        text = any("text_model" in n for n in grads)
        assert (vision, text) == {"full": (True, True), "lock_image": (False, True), "lock_text": (True, False),
                                  "lora": (True, True)}[strategy], strategy  # fmt: skip
        if strategy == "lora":
            assert all("lora_" in n for n in trainable)


def test_hub_format_dataset_with_image_feature_and_caption_lists(tiny_vtde, digits_dir, tmp_path):
    """--dataset_name on a Hub-format dataset (parquet with an Image feature and list captions)."""
    from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value

    features = Features({"image": Image(), "caption": Sequence(Value("string"))})
    splits = {}
    for split in ("train", "validation", "test"):
        paths = sorted((digits_dir / split).glob("*/*.png"))
        captions = [[f"a handwritten {p.parent.name}.", "NA"] for p in paths]
        splits[split] = Dataset.from_dict({"image": [str(p) for p in paths], "caption": captions}, features=features)
    root = tmp_path / "hub_dataset"
    for split, ds in DatasetDict(splits).items():
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    out = tmp_path / "out"
    results = recipe.main([
        "--model_name_or_path", str(tiny_vtde), "--dataset_name", str(root), "--output_dir", str(out),
        "--do_train", "--max_steps", "2", "--per_device_train_batch_size", "8", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--max_seq_length", "12",
        "--finetune_strategy", "lock_text",
    ])  # fmt: skip
    assert results["test_num_items"] == 20 and results["test_num_texts"] == 20  # the "NA" captions were dropped


def test_unreadable_images_are_skipped_and_reported_like_the_classifiers(tiny_vtde, pairs_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(pairs_dir, data)
    bad = sorted((data / "test").rglob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    results = run(tiny_vtde, tmp_path / "out", data, "--skip_bad_samples", "true", steps=1)
    assert results["skipped_bad_samples"] == 1
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["skipped_bad_samples"] == 1
    assert results["test_samples"] == len(list((data / "test").rglob("*.png"))) - 1
    printed = capsys.readouterr().out
    assert f"Skipped 1 unreadable samples: {bad}" in printed
