"""Memory of the CLIP classifier: no text tower carried after the zero-shot head is built, no random backbone
copy, LoRA + gradient checkpointing training the same adapters, checkpoints reloading (README "Memory")."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageClassification, AutoProcessor, CLIPModel

from mm_hf.args import FinetuneArguments
from mm_hf.models import build_dual_encoder_classifier, load_finetuned
from mm_hf.training import apply_strategy, trainable_parameters

ID2LABEL = {0: "zero", 1: "one", 2: "two"}
TEXT = ("text_model.", "text_projection.")


def zero_shot(path, **kwargs):
    tokenizer = AutoProcessor.from_pretrained(path).tokenizer
    return build_dual_encoder_classifier(
        path, ID2LABEL, tokenizer=tokenizer, prompt_templates=["a photo of a {}."], **kwargs
    )


def pixels(model, batch=4):
    size = model.config.backbone_config.vision_config.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_classifier_drops_the_text_tower_and_keeps_clips_zero_shot_logits(tiny_clip):
    model = zero_shot(tiny_clip).eval()
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not any(n.startswith(tuple("backbone." + p for p in TEXT)) for n in names), names
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])  # built on meta, all replaced
    assert model.config.text_tower is False
    # Fewer parameters than the dual encoder by exactly its text tower and projection.
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    text = sum(p.numel() for n, p in clip.named_parameters() if n.startswith(TEXT))
    head = sum(p.numel() for p in model.classifier.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in clip.parameters()) - text + head

    # Still CLIP's zero-shot classifier: the same logits as the full model's image-text similarities.
    tokenizer = AutoProcessor.from_pretrained(tiny_clip).tokenizer
    prompts = tokenizer([f"a photo of a {n}." for n in ID2LABEL.values()], padding=True, return_tensors="pt")
    x = pixels(model)
    with torch.no_grad():
        expected = clip(pixel_values=x, **prompts).logits_per_image
        logits = model(pixel_values=x).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_a_given_dual_encoder_is_wrapped_whole_and_round_trips(tiny_clip, tmp_path):
    # A live backbone (clip_retrieval's retention check on the model being trained) is not changed under its owner.
    clip = CLIPModel.from_pretrained(tiny_clip)
    model = build_dual_encoder_classifier(clip, ID2LABEL, head_init="random").eval()
    assert model.backbone is clip and model.config.text_tower is True
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert any(n.startswith("backbone.text_model.") for n, _ in reloaded.named_parameters())
    x = pixels(model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)


def test_checkpoint_without_text_tower_reloads_with_the_same_logits(tiny_clip, tmp_path):
    model = zero_shot(tiny_clip).eval()
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = list(f.keys())
    assert saved and not any(k.startswith(tuple("backbone." + p for p in TEXT)) for k in saved)
    x = pixels(model)
    for reloaded in (AutoModelForImageClassification.from_pretrained(tmp_path), load_finetuned(str(tmp_path))):
        assert reloaded.config.text_tower is False
        with torch.no_grad():
            torch.testing.assert_close(reloaded.eval()(pixel_values=x).logits, model(pixel_values=x).logits)


def lora(path, checkpointing: bool):
    args = FinetuneArguments(finetune_strategy="lora", lora_r=4, lora_dropout=0.0)
    torch.manual_seed(0)  # the same LoRA initialisation for both runs
    model = apply_strategy(zero_shot(path), args)
    if checkpointing:
        model.activation_checkpointing_enable()  # what Trainer calls for --gradient_checkpointing, through peft
    return model.train()


def test_lora_with_gradient_checkpointing_trains_the_same_adapters(tiny_clip):
    plain, checkpointed = lora(tiny_clip, False), lora(tiny_clip, True)
    trainable = {n for n, p in plain.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in checkpointed.named_parameters() if p.requires_grad}
    assert trainable_parameters(plain) == trainable_parameters(checkpointed)
    assert any("vision_model" in n and "lora_A" in n for n in trainable)

    calls = []  # the checkpointed layers run again in backward: checkpointing reaches the tower under peft
    layer = checkpointed.get_base_model().backbone.vision_model.encoder.layers[0]
    layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
    labels = torch.tensor([0, 1, 2, 0])
    losses = []
    for model in (plain, checkpointed):
        loss = model(pixel_values=pixels(model.get_base_model()), labels=labels).loss
        loss.backward()
        losses.append(loss.detach())
    assert len(calls) == 2
    torch.testing.assert_close(losses[0], losses[1])
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    for name, param in checkpointed.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6)
    # Every LoRA matrix B gets a gradient (A's is zero at initialisation, where B is zero).
    assert all(grads[n].abs().sum() > 0 for n in trainable if "lora_B" in n)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_glibc_threshold_is_set_unless_the_environment_tunes_malloc():
    code = "from mm_hf.host_memory import return_freed_tensors_to_os; print(return_freed_tensors_to_os())"

    def run(env):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    assert run(base) == "True"
    assert run({**base, "MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"
