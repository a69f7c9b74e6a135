"""ClipClassifier: Auto* round trips (also as remote code without mm_hf), zero-shot head, LoRA reloads."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoProcessor,
    CLIPModel,
    ViTConfig,
    ViTModel,
)

from mm_hf.args import FinetuneArguments
from mm_hf.models import (
    ClipClassifierConfig,
    ClipClassifierForImageClassification,
    build_dual_encoder_classifier,
    class_text_embeddings,
    load_finetuned,
)
from mm_hf.training import apply_strategy

# Words both tiny tokenizers know: tiny_vtde's word vocabulary, tiny_clip's letters.
ID2LABEL = {0: "zero", 1: "one", 2: "two"}
# backbone fixture -> head initialisation (tiny_siglip ships no tokenizer, so no zero-shot head)
HEAD_INIT = {"tiny_clip": "zeroshot", "tiny_vtde": "zeroshot", "tiny_siglip": "random"}
CODE_FILES = ("configuration_clip_classifier.py", "modeling_clip_classifier.py")


def build(path, head_init="zeroshot", **kwargs):
    tokenizer = AutoProcessor.from_pretrained(path).tokenizer if head_init == "zeroshot" else None
    model = build_dual_encoder_classifier(
        path, ID2LABEL, tokenizer=tokenizer, head_init=head_init, prompt_templates=["a photo of a {}."], **kwargs
    )
    return model.eval()


def pixel_values(model, batch=2):
    size = model.config.backbone_config.vision_config.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def text_features(out):
    # transformers v5 returns a ModelOutput whose pooler_output is the projected embedding.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize("backbone", ["tiny_clip", "tiny_siglip", "tiny_vtde"])
def test_save_pretrained_round_trips_through_auto_classes(backbone, request, tmp_path):
    path = request.getfixturevalue(backbone)
    model = build(path, HEAD_INIT[backbone])
    x = pixel_values(model)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)

    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", *CODE_FILES} <= files
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_clip_classifier.ClipClassifierConfig",
        "AutoModelForImageClassification": "modeling_clip_classifier.ClipClassifierForImageClassification",
    }
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, ClipClassifierConfig)
    assert config.id2label == ID2LABEL
    assert config.label2id == {v: k for k, v in ID2LABEL.items()}
    assert config.backbone_name_or_path == path

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, ClipClassifierForImageClassification)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=x).logits, expected)


# Runs where mm_hf cannot be imported: the checkpoint must bring its own code.
REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["mm_hf"] = None  # a failing import, as if mm_hf were not installed
    try:
        import mm_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("mm_hf is importable: the test would prove nothing")
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    folder, work = sys.argv[1], sys.argv[2]
    inputs = torch.load(work + "/inputs.pt")
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(pixel_values=inputs["pixel_values"]).logits
    pipe = pipeline("image-classification", model=folder, trust_remote_code=True, device="cpu")
    predictions = pipe(Image.open(work + "/image.png"), top_k=None)
    torch.save({"logits": logits, "predictions": predictions, "module": type(model).__module__,
                "pipeline_model": type(pipe.model).__name__,
                "image_processor": type(pipe.image_processor).__name__}, work + "/remote.pt")
    """
)


@pytest.mark.parametrize("backbone", ["tiny_clip", "tiny_vtde"])
def test_remote_code_loads_and_pipeline_runs_without_mm_hf(backbone, request, tmp_path):
    path = request.getfixturevalue(backbone)
    folder, work = tmp_path / "model", tmp_path / "work"
    work.mkdir()
    model = build(path)
    model.save_pretrained(folder)
    processor = AutoProcessor.from_pretrained(path)
    # As the recipe does; transformers v5 writes the image processor into processor_config.json only.
    processor.save_pretrained(folder)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    image.save(work / "image.png")
    x = pixel_values(model)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        image_pixels = processor(images=Image.open(work / "image.png"), return_tensors="pt")["pixel_values"]
        expected_probs = model(pixel_values=image_pixels).logits.softmax(-1)[0]
    torch.save({"pixel_values": x}, work / "inputs.pt")

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(folder), str(work)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    remote = torch.load(work / "remote.pt")

    assert not remote["module"].startswith("mm_hf"), remote["module"]
    assert remote["pipeline_model"] == "ClipClassifierForImageClassification"
    assert remote["image_processor"] == type(processor.image_processor).__name__
    torch.testing.assert_close(remote["logits"], expected, rtol=0, atol=1e-6)
    predictions = remote["predictions"]
    assert sorted(p["label"] for p in predictions) == sorted(ID2LABEL.values())
    label2id = {v: k for k, v in ID2LABEL.items()}
    for p in predictions:
        assert p["score"] == pytest.approx(expected_probs[label2id[p["label"]]].item(), abs=1e-5)
    assert predictions[0]["label"] == ID2LABEL[int(expected_probs.argmax())]


def test_zeroshot_head_is_clips_own_zeroshot_classifier(tiny_clip):
    processor = AutoProcessor.from_pretrained(tiny_clip)
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    model = build(tiny_clip)
    x = pixel_values(model, batch=6)
    prompts = [f"a photo of a {name}." for name in ID2LABEL.values()]
    text = processor.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = clip(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=x)
        logits = model(pixel_values=x).logits
    torch.testing.assert_close(logits, expected.logits_per_image, rtol=1e-5, atol=1e-5)
    assert torch.equal(logits.argmax(-1), expected.logits_per_image.argmax(-1))
    assert model.classifier.logit_scale.item() == pytest.approx(clip.logit_scale.item())


def test_prompt_ensemble_rows_are_normalised_mean_of_normalised_prompt_embeddings(tiny_clip):
    tokenizer = AutoProcessor.from_pretrained(tiny_clip).tokenizer
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    templates = ["a photo of a {}.", "art of the {}.", "a bad photo of the {}."]
    model = build_dual_encoder_classifier(tiny_clip, ID2LABEL, tokenizer=tokenizer, prompt_templates=templates)
    rows = []
    with torch.no_grad():
        for name in ID2LABEL.values():
            text = tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
            emb = text_features(
                clip.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
            )
            rows.append(torch.nn.functional.normalize(torch.nn.functional.normalize(emb, dim=-1).mean(0), dim=0))
    expected = torch.stack(rows)
    torch.testing.assert_close(model.classifier.weight.detach(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(class_text_embeddings(clip, tokenizer, list(ID2LABEL.values()), templates), expected)
    assert torch.count_nonzero(model.classifier.bias) == 0


class RecordingTokenizer:
    """Stands in for a tokenizer: records the call's keyword arguments, maps characters to ids."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, **kwargs):
        self.calls.append(kwargs)
        length = kwargs["max_length"] if kwargs.get("padding") == "max_length" else max(map(len, texts))
        ids = [[ord(c) % 60 + 2 for c in text[:length]] + [1] * (length - len(text)) for text in texts]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), length, dtype=torch.long)}


def test_class_text_embeddings_pads_to_max_length_for_siglip_only(tiny_siglip, tiny_clip):
    from transformers import AutoModel

    names, templates = ["cat", "dog"], ["a {}.", "the {}!"]
    for path, padding in ((tiny_siglip, "max_length"), (tiny_clip, True)):
        tokenizer = RecordingTokenizer()
        emb = class_text_embeddings(AutoModel.from_pretrained(path), tokenizer, names, templates)
        assert [call["padding"] for call in tokenizer.calls] == [padding]
        assert emb.shape[0] == len(names)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(names)))


@pytest.mark.parametrize("backbone", ["tiny_clip", "tiny_vtde"])
def test_lora_adapter_folder_and_merged_checkpoint_reload_identically(backbone, request, tmp_path):
    path = request.getfixturevalue(backbone)
    ft_args = FinetuneArguments(finetune_strategy="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    model = apply_strategy(build(path), ft_args)
    with torch.no_grad():  # a trained adapter: LoRA deltas (lora_B starts at zero) and a changed head
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.eval()
    x = pixel_values(model)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        with model.disable_adapter():
            assert not torch.allclose(model(pixel_values=x).logits, expected, atol=1e-3)

    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)  # what the recipe saves for a LoRA run (mm_hf.outputs.save_model)
    model.get_base_model().config.save_pretrained(adapter_dir)
    assert "adapter_model.safetensors" in os.listdir(adapter_dir)
    loaded = load_finetuned(str(adapter_dir)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, expected)

    merged_dir = tmp_path / "merged"
    loaded.merge_and_unload().save_pretrained(merged_dir)
    assert not os.path.exists(merged_dir / "adapter_config.json")
    reloaded = AutoModelForImageClassification.from_pretrained(merged_dir).eval()
    assert isinstance(reloaded, ClipClassifierForImageClassification)
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-5)


def test_non_dual_encoder_backbone_is_a_clear_error(tmp_path):
    path = str(tmp_path / "vit")
    ViTModel(
        ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(path)
    with pytest.raises(ValueError, match="dual image-text or audio-text encoder") as info:
        build_dual_encoder_classifier(path, ID2LABEL, head_init="random")
    assert path in str(info.value) and "ViTModel" in str(info.value)


def test_bad_head_options_are_errors(tiny_clip):
    with pytest.raises(ValueError, match="head_init"):
        build_dual_encoder_classifier(tiny_clip, ID2LABEL, head_init="text")
    with pytest.raises(ValueError, match="tokenizer"):
        build_dual_encoder_classifier(tiny_clip, ID2LABEL, head_init="zeroshot")


# Trainer's --gradient_checkpointing calls activation_checkpointing_enable; the old name is a deprecated alias.
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("enable", ["gradient_checkpointing_enable", "activation_checkpointing_enable"])
def test_gradient_checkpointing_recomputes_layers_and_backpropagates(enable, tiny_clip):
    model = build(tiny_clip).train()
    layer = model.backbone.vision_model.encoder.layers[0]
    calls = []
    # Module hooks sit outside the checkpoint in transformers v5, so count calls of a block inside the layer.
    layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
    labels = torch.tensor([0, 2])

    model(pixel_values=pixel_values(model), labels=labels).loss.backward()
    assert len(calls) == 1  # plain backward: no recomputation
    model.zero_grad()
    calls.clear()

    getattr(model, enable)()
    assert layer.gradient_checkpointing
    model(pixel_values=pixel_values(model), labels=labels).loss.backward()
    assert len(calls) == 2  # forward + recomputation in backward
    assert layer.self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0
