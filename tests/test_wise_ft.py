"""WiSE-FT weight interpolation (mm_hf.wise_ft) on a tiny dual-encoder classifier, fully fine-tuned and with LoRA."""

import copy
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer

from mm_hf.models import ClipClassifierForImageClassification, build_dual_encoder_classifier, load_finetuned
from mm_hf.training import apply_strategy
from mm_hf.wise_ft import interpolate, snapshot, wise_ft_sweep

ID2LABEL = {0: "zero", 1: "one", 2: "two"}


def strategy_args(strategy: str) -> SimpleNamespace:
    return SimpleNamespace(
        finetune_strategy=strategy,
        unfreeze_last_n_layers=1,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        lora_target_modules=None,
    )


def build(tiny_vtde, strategy: str):
    model = build_dual_encoder_classifier(
        tiny_vtde, ID2LABEL, tokenizer=AutoTokenizer.from_pretrained(tiny_vtde), head_init="zeroshot"
    )
    return apply_strategy(model, strategy_args(strategy))


def train(model, steps: int = 4) -> None:
    """A few Adam steps on random images: enough to move every trainable weight."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        pixel_values = torch.randn(8, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 3, (8,), generator=generator)
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@torch.no_grad()
def logits(model, pixel_values):
    model.eval()
    return model(pixel_values=pixel_values).logits


@pytest.fixture
def pixels():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_full_endpoints_exact_and_midpoint_is_averaged_state_dict(tiny_vtde, pixels):
    model = build(tiny_vtde, "full")
    start_model = copy.deepcopy(model)
    start = snapshot(model)
    before = logits(model, pixels)
    train(model)
    after = logits(model, pixels)
    assert not torch.allclose(before, after, atol=1e-3), "training did not move the logits"
    # Only what trains is copied (the classifier carries no text tower: it is dropped when built); the frozen
    # parameters are only fingerprinted.
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert frozen and set(start.fingerprints) == frozen and not frozen & set(start.tensors)
    assert "classifier.weight" in start.tensors and "backbone.vision_model.embeddings.cls_token" in start.tensors

    finetuned = snapshot(model)
    tuned_state = copy.deepcopy(model.state_dict())
    assert torch.equal(logits(interpolate(model, start, finetuned, 0.0), pixels), before)
    assert torch.equal(logits(interpolate(model, start, finetuned, 1.0), pixels), after)

    averaged = copy.deepcopy(start_model)
    start_state = start_model.state_dict()
    averaged.load_state_dict(
        {k: (v + tuned_state[k]) / 2 if v.is_floating_point() else v for k, v in start_state.items()}
    )
    mid = logits(interpolate(model, start, finetuned, 0.5), pixels)
    torch.testing.assert_close(mid, logits(averaged, pixels), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mid, before, atol=1e-3) and not torch.allclose(mid, after, atol=1e-3)


def test_lora_scales_the_adapter_delta_and_interpolates_the_head(tiny_vtde, pixels):
    model = build(tiny_vtde, "lora")
    assert isinstance(model, PeftModel)
    start = snapshot(model)
    # Only the adapters and the head's trainable copy are copied, none of the frozen base weights.
    assert start.tensors and all(".lora_" in n or ".modules_to_save." in n for n in start.tensors)
    assert any(".lora_B." in n for n in start.tensors) and any(".modules_to_save." in n for n in start.tensors)
    before = logits(model, pixels)
    train(model)
    after = logits(model, pixels)
    finetuned = snapshot(model)
    # The merged weights at alpha: W + 0.5 * ΔW through peft's own runtime scaling, and the mean of the head's
    # starting (its frozen original_module) and trained copies.
    expected = copy.deepcopy(model)
    for module in expected.modules():
        if hasattr(module, "set_scale") and "default" in getattr(module, "scaling", {}):
            module.set_scale("default", 0.5)
    head = expected.base_model.model.classifier
    with torch.no_grad():
        for name, param in head.modules_to_save["default"].named_parameters():
            param.copy_((param + head.original_module.get_parameter(name)) / 2)
    want = logits(expected, pixels)

    assert torch.equal(logits(interpolate(model, start, finetuned, 0.0), pixels), before)
    mid = logits(interpolate(model, start, finetuned, 0.5), pixels)
    torch.testing.assert_close(mid, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mid, before, atol=1e-3) and not torch.allclose(mid, after, atol=1e-3)
    # The same as a merged plain model whose delta was halved.
    merged = copy.deepcopy(model).merge_and_unload()
    torch.testing.assert_close(logits(merged, pixels), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(logits(interpolate(model, start, finetuned, 1.0), pixels), after)


def head_distance_measure(model, target: torch.Tensor, calls: list):
    """A synthetic metric: minus the head's distance to `target` (best where the head equals it)."""

    def measure():
        calls.append(1)
        weight = model.get_submodule("classifier").weight if hasattr(model, "classifier") else None
        if weight is None:
            weight = model.base_model.model.classifier.modules_to_save["default"].weight
        return {"eval_validation_accuracy": -(weight - target).norm().item(), "eval_ood_accuracy": 0.0}

    return measure


def test_sweep_picks_the_best_alpha_leaves_the_model_there_and_the_checkpoint_reloads(tiny_vtde, pixels, tmp_path):
    model = build(tiny_vtde, "full")
    start = snapshot(model)
    head_start = model.classifier.weight.detach().clone()
    train(model)
    head_tuned = model.classifier.weight.detach().clone()
    finetuned = snapshot(model)
    target = torch.lerp(head_start, head_tuned, 0.3)
    calls = []
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    sweep = wise_ft_sweep(
        model, start, alphas, head_distance_measure(model, target, calls), select="eval_validation_accuracy"
    )
    assert len(calls) == len(alphas)  # one measure() per alpha, nothing more
    assert sweep.alpha == 0.25
    assert [r["alpha"] for r in sweep.curve] == alphas and "eval_ood_accuracy" in sweep.curve[0]
    scores = [r["eval_validation_accuracy"] for r in sweep.curve]
    assert scores.index(max(scores)) == 1
    torch.testing.assert_close(model.classifier.weight, torch.lerp(head_start, head_tuned, 0.25))
    chosen = logits(model, pixels)

    model.save_pretrained(tmp_path / "wise")
    reloaded = ClipClassifierForImageClassification.from_pretrained(tmp_path / "wise")
    torch.testing.assert_close(logits(reloaded, pixels), chosen, rtol=0, atol=0)

    # The model now holds alpha=0.25, so a second sweep needs the fine-tuned weights passed in. A loss is
    # minimised (greater_is_better=False) and a nested dict is selected by "set/metric".
    nested = wise_ft_sweep(
        model,
        start,
        alphas,
        lambda: {"validation": {"loss": -head_distance_measure(model, target, [])()["eval_validation_accuracy"]}},
        select="validation/loss",
        greater_is_better=False,
        finetuned=finetuned,
    )
    assert nested.alpha == 0.25
    with pytest.raises(KeyError, match="eval_nope"):
        wise_ft_sweep(model, start, [0.5], lambda: {"eval_loss": 1.0}, select="eval_nope")


def test_lora_checkpoint_at_chosen_alpha_reloads_as_adapter_and_merged(tiny_vtde, pixels, tmp_path):
    model = build(tiny_vtde, "lora")
    start = snapshot(model)
    head_start = model.base_model.model.classifier.original_module.weight.detach().clone()
    train(model)
    head_tuned = model.base_model.model.classifier.modules_to_save["default"].weight.detach().clone()
    calls = []
    measure = head_distance_measure(model, torch.lerp(head_start, head_tuned, 0.7), calls)
    sweep = wise_ft_sweep(model, start, [0.0, 0.5, 0.75, 1.0], measure, select="eval_validation_accuracy")
    assert sweep.alpha == 0.75 and len(calls) == 4
    chosen = logits(model, pixels)

    model.save_pretrained(tmp_path / "adapter")  # lora_B scaled by 0.75 is what the adapter file holds
    model.base_model.model.config.save_pretrained(tmp_path / "adapter")
    adapter = load_finetuned(str(tmp_path / "adapter"), base_model_name_or_path=tiny_vtde)
    torch.testing.assert_close(logits(adapter, pixels), chosen, rtol=1e-5, atol=1e-5)

    copy.deepcopy(model).merge_and_unload().save_pretrained(tmp_path / "merged")
    merged = ClipClassifierForImageClassification.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(merged, pixels), chosen, rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_interpolate_and_counters_stay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    start = snapshot(model)
    model.train()
    model(torch.randn(16, 4) * 3 + 2)
    finetuned = snapshot(model)
    bn = model[1]
    interpolate(model, start, finetuned, 0.5)
    torch.testing.assert_close(bn.running_mean, finetuned.tensors["1.running_mean"] / 2)
    torch.testing.assert_close(bn.running_var, (1 + finetuned.tensors["1.running_var"]) / 2)
    assert bn.num_batches_tracked.item() == 1


def test_refuses_weights_that_changed_outside_the_snapshot(tiny_vtde):
    model = build(tiny_vtde, "linear_probe")
    start = snapshot(model)
    assert set(start.tensors) == {"classifier.weight", "classifier.bias", "classifier.logit_scale"}
    # A later stage unfreezes and trains the media tower: its start was never copied.
    for param in model.backbone.vision_model.parameters():
        param.requires_grad = True
    train(model, steps=1)
    with pytest.raises(ValueError, match="backbone.vision_model.*trainable_only=False"):
        wise_ft_sweep(model, start, [0.5], lambda: {"eval_accuracy": 0.0})
    with pytest.raises(ValueError, match=r"alphas must lie in \[0, 1\]"):
        wise_ft_sweep(model, snapshot(model, trainable_only=False), [1.5], lambda: {"eval_accuracy": 0.0})
