"""Flags of the image recipes checked where they act, through `main(argv)` and the output folder: each test fails
if its flag were ignored (augmentation switches, loss choice, split sizes, TSV input)."""

import json
import math

import pytest
import torch
from conftest import load_recipe
from PIL import Image
from transformers import AutoModel, AutoProcessor

from mm_hf.errors import UserError
from mm_hf.models import ClipClassifierForImageClassification

imagecls = load_recipe("clip_imagecls")
retrieval = load_recipe("clip_retrieval")
COMMON = ["--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
          "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16"]  # fmt: skip


def classify(model, out, *extra):
    return imagecls.main([
        "--model_name_or_path", str(model), "--output_dir", str(out), "--prompt_templates", "a {} photo.", *COMMON,
        *extra,
    ])  # fmt: skip


def dirs(root, splits=("train", "validation", "test")):
    return [arg for split in splits for arg in (f"--{split}_dir", str(root / split))]


def record_training_inputs(monkeypatch):
    seen = []
    forward = ClipClassifierForImageClassification.forward

    def recording(self, pixel_values=None, **kwargs):
        if self.training:
            seen.extend(pixel_values.detach().clone())
        return forward(self, pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(ClipClassifierForImageClassification, "forward", recording)
    return seen


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--crop_scale_min", "1.0", "--hflip", "false"], "as_is"),
        (["--crop_scale_min", "1.0", "--hflip", "true"], "some_flipped"),
        (["--crop_scale_min", "0.3"], "cropped"),  # --hflip false is the default
    ],
)
def test_augmentation_flags_shape_the_training_inputs(tiny_vtde, colours_dir, tmp_path, monkeypatch, flags, expect):
    seen = record_training_inputs(monkeypatch)
    classify(tiny_vtde, tmp_path / "out", "--do_train", "--finetune_strategy", "full", "--head_init", "random",
             "--max_steps", "5", "--augment", "true", *flags, *dirs(colours_dir, ("train",)))  # fmt: skip
    # The untouched training images as the evaluation transform gives them, and their mirror images.
    processor = AutoProcessor.from_pretrained(tiny_vtde).image_processor
    images = [Image.open(p).convert("RGB") for p in sorted((colours_dir / "train").glob("*/*.png"))]
    plain = processor(images, return_tensors="pt")["pixel_values"]
    mirrored = plain.flip(-1)

    def matches(x, bank):
        return bool(((bank - x).abs().amax(dim=(1, 2, 3)) < 1e-4).any())

    assert len(seen) >= 32
    as_is = [matches(x, plain) for x in seen]
    flipped = [matches(x, mirrored) for x in seen]
    if expect == "as_is":  # a crop of the whole area, never mirrored: exactly the images
        assert all(as_is)
    elif expect == "some_flipped":  # about half mirrored, nothing else changed
        assert all(a or f for a, f in zip(as_is, flipped, strict=True)) and 8 <= sum(flipped) <= 32
    else:  # crops of 30-100 % of the area: almost never the whole image, never a plain mirror
        assert sum(as_is) <= 4 and not any(flipped)


def test_siglip_loss_is_the_one_evaluated(tiny_vtde, colours_dir, tmp_path):
    """eval_loss of the untouched model equals the sigmoid loss computed here by hand, and differs from InfoNCE."""
    losses = {}
    for loss in ("clip", "siglip"):
        results = retrieval.main([
            "--model_name_or_path", str(tiny_vtde), "--output_dir", str(tmp_path / loss), "--do_eval", "--loss", loss,
            "--max_seq_length", "8", *COMMON, "--per_device_eval_batch_size", "4", *dirs(colours_dir),
        ])  # fmt: skip
        losses[loss] = results["eval_loss"]

    model = AutoModel.from_pretrained(tiny_vtde).eval()
    processor = AutoProcessor.from_pretrained(tiny_vtde)
    folder = colours_dir / "validation"
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    pixels = processor.image_processor([Image.open(folder / r["file_name"]).convert("RGB") for r in rows],
                                       return_tensors="pt")["pixel_values"]  # fmt: skip
    tokens = processor.tokenizer([r["caption"][0] for r in rows], padding="max_length", max_length=8,
                                 truncation=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        images = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        texts = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    scale, bias = model.logit_scale.exp().item(), -10.0  # a VisionTextDualEncoder has no bias: the wrapper's start
    expected = {"clip": [], "siglip": []}
    for start in range(0, len(rows), 4):  # evaluation batches of 4, in file order
        logits = scale * images[start : start + 4] @ texts[start : start + 4].T
        labels = torch.arange(4)
        ce = torch.nn.functional.cross_entropy
        expected["clip"].append(((ce(logits, labels) + ce(logits.T, labels)) / 2).item())
        signs = 2 * torch.eye(4) - 1
        expected["siglip"].append((-torch.nn.functional.logsigmoid(signs * (logits + bias)).sum() / 4).item())
    for loss in ("clip", "siglip"):
        assert losses[loss] == pytest.approx(sum(expected[loss]) / len(expected[loss]), rel=1e-4), loss
    assert not math.isclose(losses["clip"], losses["siglip"], rel_tol=0.05)


def test_train_val_split_holds_out_a_stratified_validation_split(tiny_vtde, colours_dir, tmp_path):
    out = tmp_path / "out"
    results = classify(tiny_vtde, out, "--do_train", "--do_eval", "--finetune_strategy", "linear_probe",
                       "--train_val_split", "0.25", *dirs(colours_dir, ("train",)))  # fmt: skip
    assert results["train_samples"] == 27 and results["eval_samples"] == 9
    # Without a test split the validation split is the one reported: 3 images of each colour, as stratified.
    report = json.loads((out / "classification_report.json").read_text())
    assert {name: c["support"] for name, c in report["per_class"].items()} == {"blue": 3, "green": 3, "red": 3}


def test_max_eval_samples_truncates_the_validation_split(tiny_vtde, colours_dir, tmp_path):
    results = classify(tiny_vtde, tmp_path / "out", "--do_train", "--do_eval", "--finetune_strategy",
                       "linear_probe", "--max_eval_samples", "5", *dirs(colours_dir, ("train", "validation")))  # fmt: skip
    assert results["eval_samples"] == 5 and results["train_samples"] == 36


def test_caption_loader_train_val_split_and_max_eval_samples(tiny_vtde, colours_dir, tmp_path):
    def run(*extra):
        return retrieval.main([
            "--model_name_or_path", str(tiny_vtde), "--output_dir", str(tmp_path / str(len(extra))), "--do_train",
            "--do_eval", "--max_steps", "1", "--max_seq_length", "8", *COMMON, *dirs(colours_dir, ("train",)), *extra,
        ])  # fmt: skip

    results = run("--train_val_split", "0.25")
    assert results["train_samples"] == 27 and results["eval_num_items"] == 9 and results["eval_num_texts"] == 18
    results = run("--train_val_split", "0.25", "--max_eval_samples", "4")
    assert results["train_samples"] == 27 and results["eval_num_items"] == 4


def test_tsv_files_are_read_with_tabs(tiny_vtde, colours_dir, tmp_path):
    flags = []
    for split in ("train", "validation", "test"):
        paths = sorted((colours_dir / split).glob("*/*.png"))
        lines = ["label\timage"] + [f"{p.parent.name}\t{p}" for p in paths]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        flags += [f"--{split}_file", str(tmp_path / f"{split}.tsv")]
    results = classify(tiny_vtde, tmp_path / "out", "--do_train", "--do_eval", "--do_predict",
                       "--finetune_strategy", "linear_probe", "--head_init", "random", *flags)  # fmt: skip
    assert results["train_samples"] == 36 and results["test_samples"] == 18 and results["test_accuracy"] >= 0.9


# ---- fusion and video recipes ----


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from mm_hf.models.tiny import build_tiny_encoders

    return build_tiny_encoders(str(tmp_path_factory.mktemp("encoders")))


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    from mm_hf.data.synthetic import write_imagetext_xor

    return write_imagetext_xor(str(tmp_path_factory.mktemp("xor")), sizes=(32, 8, 8), seed=0)


def encoder_changes(out, encoders):
    """{modality: {parameter name: changed?}} of the saved fusion model's encoders against their checkpoints."""
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    changes = {}
    for key in ("vision", "text"):
        base = AutoModel.from_pretrained(encoders[key]).state_dict()
        prefix = f"multimodal.encoders.{key}."
        changes[key] = {n: not torch.equal(saved[prefix + n], t) for n, t in base.items() if prefix + n in saved}
        assert len(changes[key]) > 10, key
    return changes


@pytest.mark.parametrize(
    ("flags", "vision", "text"),
    [
        (["--finetune_strategy", "full", "--text_strategy", "frozen"], "moved", "untouched"),
        (["--finetune_strategy", "linear_probe", "--text_strategy", "top_k", "--unfreeze_last_n_layers", "1"],
         "untouched", "last_layer"),
        (["--finetune_strategy", "full", "--vision_strategy", "frozen"], "untouched", "moved"),
    ],
)  # fmt: skip
def test_per_encoder_strategies_decide_which_saved_weights_moved(encoders, xor, tmp_path, flags, vision, text):
    out = tmp_path / "out"
    load_recipe("fusion_imagetext_cls").main([
        "--train_file", xor["train"], "--validation_file", xor["validation"], "--test_file", xor["test"],
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--image_column", "image", "--text_column", "text", "--output_dir", str(out), "--do_train", "--max_steps",
        "3", "--learning_rate", "1e-2", "--weight_decay", "0", "--hidden_size", "16", "--max_seq_length", "12",
        "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no",
        "--disable_tqdm", "true", *flags,
    ])  # fmt: skip
    changes = encoder_changes(out, encoders)
    for key, expect in (("vision", vision), ("text", text)):
        moved = {n for n, c in changes[key].items() if c}
        if expect == "untouched":
            assert not moved, (key, sorted(moved)[:5])
        elif expect == "moved":
            assert len(moved) > len(changes[key]) // 2, (key, len(moved))
        else:  # BERT's last layer (and its pooler) train, the embeddings and the first layer do not
            assert moved and all(n.startswith(("encoder.layer.1.", "pooler.")) for n in moved), sorted(moved)[:5]


@pytest.mark.parametrize(("pooling", "module"), [("max", "MaxPooling"), ("attention", "AttentionPooling")])
def test_temporal_pooling_flag_builds_an_order_blind_pooling(encoders, tmp_path, pooling, module):
    """video_cls defaults to a temporal transformer, which sees frame order; max and attention pooling do not, so
    the saved model gives the same logits for a clip played backwards."""
    from mm_hf.data.synthetic import write_video_dataset
    from mm_hf.processing import MultimodalProcessor

    videos = write_video_dataset(str(tmp_path / "videos"), sizes=(8, 4, 4), seed=0)
    out = tmp_path / "out"
    load_recipe("video_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--video_column", "video", "--label_column", "label",
        "--train_file", videos["train"], "--test_file", videos["test"], "--output_dir", str(out), "--do_train",
        "--max_steps", "2", "--hidden_size", "16", "--num_frames", "4", "--finetune_strategy", "full",
        "--temporal_pooling", pooling, "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no",
        "--disable_tqdm", "true", "--train_val_split", "0",
    ])  # fmt: skip
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert module in {type(m).__name__ for m in model.modules()}
    processor = MultimodalProcessor.from_pretrained(str(out))
    rows = [json.loads(line) for line in open(videos["test"])]
    root = videos["test"].rsplit("/", 1)[0]
    inputs = processor.transform(train=False)({"video": [f"{root}/{r['video']}" for r in rows]})
    batch = {k: torch.stack(v) for k, v in inputs.items()}
    with torch.no_grad():
        logits = model(**batch).logits
        backwards = model(**{**batch, "pixel_values_videos": batch["pixel_values_videos"].flip(1)}).logits
    torch.testing.assert_close(backwards, logits, rtol=1e-5, atol=1e-5)


def test_torch_compile_reaches_the_model_cheaply(tiny_vtde, colours_dir, tmp_path, monkeypatch):
    """--torch_compile with dynamo's `eager` backend: the forward is traced by dynamo (what the flag decides) without
    inductor's code generation, so it runs in `make test`; tests/test_clip_imagecls.py keeps the inductor run (slow)."""
    seen = []
    forward = ClipClassifierForImageClassification.forward

    def recording(self, *args, **kwargs):
        if self.training:
            seen.append(torch.compiler.is_compiling())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ClipClassifierForImageClassification, "forward", recording)
    results = classify(tiny_vtde, tmp_path / "out", "--do_train", "--finetune_strategy", "full", "--head_init",
                       "random", "--max_steps", "2", "--torch_compile", "true", "--torch_compile_backend", "eager",
                       *dirs(colours_dir, ("train",)))  # fmt: skip
    # Python runs the forward only while dynamo traces it; the compiled graph serves the other steps.
    assert seen and all(seen)
    assert math.isfinite(results["train_loss"])


def test_fusion_pooling_flags_build_the_saved_poolers(encoders, xor, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "out"
    load_recipe("fusion_imagetext_cls").main([
        "--train_file", xor["train"], "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path",
        encoders["text"], "--image_column", "image", "--text_column", "text", "--output_dir", str(out), "--do_train",
        "--max_steps", "1", "--hidden_size", "16", "--max_seq_length", "12", "--finetune_strategy", "full",
        "--image_pooling", "cls", "--text_pooling", "attention", "--test_file", xor["test"], "--report_to", "none",
        "--use_cpu", "true", "--save_strategy", "no", "--disable_tqdm", "true",
    ])  # fmt: skip
    model = AutoModelForSequenceClassification.from_pretrained(out)
    kinds = {m: {type(module).__name__ for module in p.modules()} for m, p in model.multimodal.poolers.items()}
    # The default is mean pooling for both.
    assert "ClsPooling" in kinds["image"] and "MeanPooling" not in kinds["image"], kinds
    assert "AttentionPooling" in kinds["text"] and "MeanPooling" not in kinds["text"], kinds


def test_audio_pooling_attention_is_built_trained_and_saved(tiny_wav2vec2, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForAudioClassification

    from mm_hf.demo import write_tones_audiofolder

    write_tones_audiofolder(str(tmp_path / "tones"), per_class=(2, 1, 1), seed=0)
    out = tmp_path / "out"
    load_recipe("audio_cls").main([
        "--model_name_or_path", tiny_wav2vec2, "--train_dir", str(tmp_path / "tones" / "train"), "--output_dir",
        str(out), "--do_train", "--max_steps", "1", "--warmup_steps", "0", "--finetune_strategy", "linear_probe",
        "--probe_solver", "trainer", "--pooling", "attention", "--max_length_seconds", "0.5", "--learning_rate",
        "1e-2", "--test_dir", str(tmp_path / "tones" / "test"), "--report_to", "none", "--use_cpu", "true",
        "--save_strategy", "no",
        "--disable_tqdm", "true",
    ])  # fmt: skip
    model = AutoModelForAudioClassification.from_pretrained(out)
    kinds = {type(module).__name__ for module in model.modules()}
    assert "AttentionPooling" in kinds and "MeanPooling" not in kinds  # mean pooling (the default) has no parameters
    # Its parameters were trained with the head (a linear probe trains pooler + classifier) and saved.
    assert any(k.startswith("pooler.") for k in load_file(str(out / "model.safetensors")))
    assert json.loads((out / "config.json").read_text())["pooling"] == "attention"


@pytest.mark.parametrize("flag", [("--probe_selection", "validation"), ("--probe_solver", "lbfgs")])
def test_fusion_refuses_the_lbfgs_probe_flags_it_cannot_honour(encoders, xor, tmp_path, flag):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=rf"{flag[0]}: the L-BFGS probe fits a classifier's single linear head"):
        load_recipe("fusion_imagetext_cls").main([
            "--train_file", xor["train"], "--validation_file", xor["validation"],
            "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
            "--image_column", "image", "--text_column", "text", "--output_dir", str(out), "--do_train",
            "--max_steps", "1", "--finetune_strategy", "linear_probe", "--report_to", "none", "--use_cpu", "true",
            *flag,
        ])  # fmt: skip
    assert not (out / "model.safetensors").exists()


def test_probe_selection_is_refused_where_no_lbfgs_probe_runs(tiny_vtde, colours_dir, tmp_path):
    recipe = load_recipe("clip_imagecls")
    for extra in (["--probe_solver", "trainer"], ["--finetune_strategy", "full"]):
        with pytest.raises(UserError, match=r"--probe_selection cross_validation chooses the L2 strength.*drop"):
            recipe.main([
                "--model_name_or_path", tiny_vtde, "--train_dir", str(colours_dir / "train"), "--output_dir",
                str(tmp_path / "out"), "--do_train", "--probe_selection", "cross_validation", *extra,
            ])  # fmt: skip
