"""What training must achieve in the flagship image recipes, judged from their outputs: metrics move past the
untrained start on data a few steps can learn, the saved folder reproduces the reported numbers, and each
strategy changes exactly the weights it claims (compared with the base checkpoint, byte for byte)."""

import json

import pytest
import torch
from conftest import load_recipe
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageClassification, AutoProcessor

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.models import ClipClassifierForImageClassification

imagecls = load_recipe("clip_imagecls")
retrieval = load_recipe("clip_retrieval")
COMMON = ["--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
          "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16"]  # fmt: skip


def data_flags(root, splits=("train", "validation", "test")):
    return [arg for split in splits for arg in (f"--{split}_dir", str(root / split))]


def classify(model_path, out, *extra, data):
    return imagecls.main([
        "--model_name_or_path", str(model_path), "--output_dir", str(out), "--do_train", "--do_eval", "--do_predict",
        "--prompt_templates", "a {} photo.", *COMMON, *data_flags(data), *extra,
    ])  # fmt: skip


def hand_accuracy(out, folder):
    """Accuracy of the saved classifier on class folders, computed here from the reloaded folder."""
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    paths = sorted(folder.glob("*/*.png"))
    label2id = {name: i for i, name in model.config.id2label.items()}
    labels = torch.tensor([label2id[p.parent.name] for p in paths])
    pixels = processor.image_processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    with torch.no_grad():
        return (model(pixel_values=pixels["pixel_values"]).logits.argmax(-1) == labels).float().mean().item()


def test_imagecls_training_beats_the_chance_level_start_and_the_saved_model_reproduces_it(
    tiny_vtde, colours_dir, tmp_path
):
    # The tiny model's random text tower gives every class the same embedding: the zero-shot head is at chance.
    out = tmp_path / "out"
    results = classify(tiny_vtde, out, "--finetune_strategy", "full", "--head_init", "zeroshot", "--max_steps",
                       "12", "--learning_rate", "1e-3", data=colours_dir)  # fmt: skip
    assert results["zeroshot_test_accuracy"] <= 0.5
    assert results["test_accuracy"] >= 0.9 and results["eval_accuracy"] >= 0.9
    assert hand_accuracy(out, colours_dir / "test") == pytest.approx(results["test_accuracy"])


def backbone_changes(out, base_path):
    """{parameter name: changed?} of the saved classifier's backbone against the base dual encoder."""
    saved = load_file(str(out / "model.safetensors"))
    base = AutoModel.from_pretrained(base_path).state_dict()
    changed = {}
    for name, tensor in saved.items():
        if name.startswith("backbone."):
            changed[name.removeprefix("backbone.")] = not torch.equal(tensor, base[name.removeprefix("backbone.")])
    return changed


@pytest.mark.parametrize("cached", [True, False])
def test_linear_probe_leaves_the_backbone_byte_identical_and_learns_the_head(
    tiny_vtde, colours_dir, tmp_path, image_encoder_calls, cached
):
    # Cached features fitted by L-BFGS (the default), or images through the backbone at every step by the Trainer:
    # the case where a backbone left trainable would move.
    calls = image_encoder_calls
    extra = [] if cached else ["--probe_solver", "trainer", "--precompute_features", "false", "--learning_rate",
                               "5e-2", "--num_train_epochs", "4", "--weight_decay", "0"]  # fmt: skip
    out = tmp_path / "probe"
    results = classify(tiny_vtde, out, "--finetune_strategy", "linear_probe", "--head_init", "random", *extra,
                       data=colours_dir)  # fmt: skip
    changed = backbone_changes(out, tiny_vtde)
    assert len(changed) > 20 and not any(changed.values()), [n for n, c in changed.items() if c]
    assert results["test_accuracy"] >= 0.9 > results["zeroshot_test_accuracy"]
    # 36 train + 12 validation + 18 test images: once each when cached, every epoch's 36 more when not.
    assert sum(calls) == 66 if cached else sum(calls) >= 66 + 3 * 36


def test_top_k_trains_the_last_layers_only(tiny_vtde, colours_dir, tmp_path):
    out = tmp_path / "top1"
    results = classify(tiny_vtde, out, "--finetune_strategy", "top_k", "--unfreeze_last_n_layers", "1",
                       "--head_init", "random", "--max_steps", "12", "--learning_rate", "1e-3",
                       "--weight_decay", "0", data=colours_dir)  # fmt: skip
    changed = backbone_changes(out, tiny_vtde)
    early = {n: c for n, c in changed.items() if n.startswith(("vision_model.embeddings.", "vision_model.layers.0."))}
    last = {n: c for n, c in changed.items() if n.startswith("vision_model.layers.1.")}
    assert early and not any(early.values()), [n for n, c in early.items() if c]
    assert last and all(last.values()), [n for n, c in last.items() if not c]
    assert not any(c for n, c in changed.items() if n.startswith("text_model."))
    assert results["test_accuracy"] > results["zeroshot_test_accuracy"]


def retrieve(model_path, out, *extra, data):
    return retrieval.main([
        "--model_name_or_path", str(model_path), "--output_dir", str(out), "--do_train", "--do_eval",
        "--max_seq_length", "24", *COMMON, *data_flags(data), *extra,
    ])  # fmt: skip


def hand_recalls(model_path, folder, max_length=24):
    """Image->text recall@1 (a tie with a wrong caption counts as a hit) and text->image recall@10 of the dual
    encoder saved in `model_path`, computed here from scratch on `folder`'s metadata.jsonl."""
    model = AutoModel.from_pretrained(model_path).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    images = [Image.open(folder / row["file_name"]).convert("RGB") for row in rows]
    texts = [caption for row in rows for caption in row["caption"]]
    owners = torch.tensor([i for i, row in enumerate(rows) for _ in row["caption"]])
    tokens = processor.tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                                 return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        image_embeds = model.get_image_features(**processor.image_processor(images, return_tensors="pt"))
        text_embeds = model.get_text_features(**tokens)
    image_embeds = torch.nn.functional.normalize(getattr(image_embeds, "pooler_output", image_embeds), dim=-1)
    text_embeds = torch.nn.functional.normalize(getattr(text_embeds, "pooler_output", text_embeds), dim=-1)
    scores = image_embeds @ text_embeds.T  # items x texts
    own = owners.unsqueeze(0) == torch.arange(len(rows)).unsqueeze(1)
    best_own = scores.masked_fill(~own, -2).amax(1, keepdim=True)
    image_to_text_rank = 1 + (scores > best_own).sum(1)
    text_to_image_rank = 1 + (scores > scores[owners, torch.arange(len(texts))]).sum(0)
    return (image_to_text_rank <= 1).float().mean().item(), (text_to_image_rank <= 10).float().mean().item()


def test_retrieval_training_raises_recall_and_the_saved_model_reproduces_it(tiny_clip, colours_dir, tmp_path):
    out = tmp_path / "out"
    results = retrieve(tiny_clip, out, "--finetune_strategy", "full", "--max_steps", "12", "--learning_rate", "1e-3",
                       data=colours_dir)  # fmt: skip
    before = (results["zeroshot_test_image_to_text_recall@1"], results["zeroshot_test_text_to_image_recall@10"])
    after = (results["test_image_to_text_recall@1"], results["test_text_to_image_recall@10"])
    assert after[0] >= before[0] + 0.2 and after[1] >= before[1] + 0.2, (before, after)
    # The numbers the recipe reported (and wrote) are those of the folder it saved, and the base model's are not.
    assert json.loads((out / "all_results.json").read_text())["test_image_to_text_recall@1"] == after[0]
    assert hand_recalls(out, colours_dir / "test") == pytest.approx(after)
    assert hand_recalls(tiny_clip, colours_dir / "test") == pytest.approx(before)


# Scripted validation metrics, one value per distinct set of weights in the order they are first evaluated:
# the untouched model (the before-training test evaluation), then the weights after epoch 1, 2, ...
ACCURACY = [0.30, 0.40, 0.90, 0.60, 0.50, 0.45, 0.40, 0.35, 0.30, 0.25, 0.20]
MACRO_F1 = [0.20, 0.30, 0.50, 0.80, 0.60, 0.55, 0.50, 0.45, 0.40, 0.35, 0.30]


def script_metrics_by_weights(monkeypatch):
    """Make accuracy and macro-F1 a function of the model's weights (see ACCURACY / MACRO_F1), so the best epoch is
    known in advance and evaluating restored weights again gives back exactly the value those weights had."""
    from mm_hf.metrics.streaming import ClassificationMetrics

    models, seen = [], {}
    forward, compute = ClipClassifierForImageClassification.forward, ClassificationMetrics.compute

    def recording_forward(self, *args, **kwargs):
        models[:] = [self]
        return forward(self, *args, **kwargs)

    def scripted_compute(self, *args, **kwargs):
        metrics = compute(self, *args, **kwargs)
        weights = b"".join(p.detach().cpu().numpy().tobytes() for p in models[0].parameters())
        index = seen.setdefault(weights, len(seen))
        return {**metrics, "accuracy": ACCURACY[index], "macro_f1": MACRO_F1[index]}

    monkeypatch.setattr(ClipClassifierForImageClassification, "forward", recording_forward)
    monkeypatch.setattr(ClassificationMetrics, "compute", scripted_compute)


@pytest.mark.parametrize(
    ("extra", "best_epoch", "last_epoch"), [([], 2, 4), (["--metric_for_best_model", "macro_f1"], 3, 5)]
)
def test_early_stopping_restores_the_best_checkpoint_by_the_chosen_metric(
    tiny_vtde, colours_dir, tmp_path, monkeypatch, extra, best_epoch, last_epoch
):
    script_metrics_by_weights(monkeypatch)
    out = tmp_path / "out"
    results = classify(tiny_vtde, out, "--finetune_strategy", "linear_probe", "--probe_solver", "trainer",
                       "--head_init", "random", "--learning_rate", "1e-2", "--num_train_epochs", "10",
                       "--early_stopping_patience", "2", "--save_strategy", "epoch", "--save_total_limit", "10", *extra,
                       data=colours_dir)  # fmt: skip
    # Patience 2: two evaluations without improvement after the best one, then stop.
    assert results["epoch"] == last_epoch
    # The restored weights are the best epoch's: evaluated again they score what that epoch scored...
    assert results["eval_accuracy"] == ACCURACY[best_epoch] and results["eval_macro_f1"] == MACRO_F1[best_epoch]
    assert results["test_accuracy"] == ACCURACY[best_epoch]
    # ... and the saved model is that epoch's checkpoint, not the last one (36 images / 8 per batch: 5 steps).
    saved = load_file(str(out / "model.safetensors"))
    best = load_file(str(out / f"checkpoint-{5 * best_epoch}" / "model.safetensors"))
    last = load_file(str(out / f"checkpoint-{5 * last_epoch}" / "model.safetensors"))
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)
    assert not all(torch.equal(saved[k], last[k]) for k in saved)
