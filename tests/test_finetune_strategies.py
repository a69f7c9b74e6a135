"""Fine-tuning strategies × backbones through one contract: what is trainable, and that exactly that trains."""

import re

import pytest
import torch
from peft.utils import ModulesToSaveWrapper

from mm_hf.args import FinetuneArguments
from mm_hf.models import build_dual_encoder_classifier
from mm_hf.training import CLASSIFIER_STRATEGIES as STRATEGIES
from mm_hf.training import apply_strategy, trainable_parameters

BACKBONES = ("tiny_clip", "tiny_vtde", "tiny_siglip")
ID2LABEL = {0: "zero", 1: "one", 2: "two"}

# What each strategy may train, as module-name prefixes, written out by hand per architecture
# (transformers v5 names: ViT has no `encoder` wrapper, SigLIP pools with an attention `head`).
TOP_1 = {
    "tiny_clip": [
        "backbone.vision_model.encoder.layers.1",
        "backbone.vision_model.post_layernorm",
        "backbone.visual_projection",
    ],
    "tiny_vtde": [
        "backbone.vision_model.layers.1",
        "backbone.vision_model.layernorm",
        "backbone.vision_model.pooler",
        "backbone.visual_projection",
    ],
    "tiny_siglip": [
        "backbone.vision_model.encoder.layers.1",
        "backbone.vision_model.post_layernorm",
        "backbone.vision_model.head",
    ],
}
IMAGE_PATH = {
    "tiny_clip": ["backbone.vision_model", "backbone.visual_projection"],
    "tiny_vtde": ["backbone.vision_model", "backbone.visual_projection"],
    "tiny_siglip": ["backbone.vision_model"],
}
# The attention projections of every vision encoder layer (ViT calls its output projection o_proj).
LORA_TARGETS = {
    "tiny_clip": r"backbone\.vision_model\.encoder\.layers\.[01]\.self_attn\.(q|k|v|out)_proj",
    "tiny_vtde": r"backbone\.vision_model\.layers\.[01]\.attention\.(q|k|v|o)_proj",
    "tiny_siglip": r"backbone\.vision_model\.encoder\.layers\.[01]\.self_attn\.(q|k|v|out)_proj",
}
CASES = [(strategy, backbone) for strategy in STRATEGIES for backbone in BACKBONES]


def ft_args(strategy, **kwargs):
    defaults = dict(unfreeze_last_n_layers=1, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    return FinetuneArguments(finetune_strategy=strategy, **{**defaults, **kwargs})


def build(path, **kwargs):
    return build_dual_encoder_classifier(path, ID2LABEL, head_init="random", **kwargs)


def base_name(name):
    """Parameter name relative to the classifier, also inside a PeftModel."""
    return name.removeprefix("base_model.model.")


def under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def expected_trainable(name, strategy, backbone):
    name = base_name(name)
    if strategy == "lora":
        lora = re.fullmatch(rf"{LORA_TARGETS[backbone]}\.lora_[AB]\.default\.weight", name)
        return bool(lora) or name.startswith("classifier.modules_to_save.default.")
    prefixes = {"linear_probe": [], "top_k": TOP_1[backbone], "full": IMAGE_PATH[backbone]}[strategy]
    return under(name, ["classifier", *prefixes])


def train_steps(model, steps=3):
    """`steps` AdamW steps (lr 1e-2, no weight decay: only a gradient moves a weight) on random data."""
    size = model.config.backbone_config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(4, 3, size, size, generator=generator)
    labels = torch.randint(0, len(ID2LABEL), (4,), generator=generator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def assert_exactly_trainable_params_change(model):
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_steps(model)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param, before[name]), f"{name} is trainable but did not change"
        else:
            assert torch.equal(param, before[name]), f"{name} is frozen but changed"


@pytest.mark.parametrize("strategy,backbone", CASES)
def test_strategy_contract(strategy, backbone, request):
    model = build(request.getfixturevalue(backbone))
    lora_targets = {n for n, _ in model.named_modules() if re.fullmatch(LORA_TARGETS[backbone], n)}
    assert len(lora_targets) == 8  # 4 projections x 2 layers

    model = apply_strategy(model, ft_args(strategy))

    names = [name for name, _ in model.named_parameters()]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name in names if expected_trainable(name, strategy, backbone)}
    assert not any(".text_model." in n or "text_projection" in n for n in trainable)
    assert not any(base_name(n) in ("backbone.logit_scale", "backbone.logit_bias") for n in trainable)
    if strategy == "lora":
        wrapped = {base_name(n) for n, m in model.named_modules() if hasattr(m, "lora_A")}
        assert wrapped == lora_targets
        assert isinstance(model.base_model.model.classifier, ModulesToSaveWrapper)
        assert "classifier" in model.peft_config["default"].modules_to_save

    counts = trainable_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    manual = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts == {
        "trainable_params": manual,
        "total_params": total,
        "trainable_share_percent": pytest.approx(100 * manual / total),
    }
    assert 0 < manual < total

    assert_exactly_trainable_params_change(model)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_learn_logit_scale_false_keeps_temperature_frozen(strategy, tiny_clip):
    model = apply_strategy(build(tiny_clip, learn_logit_scale=False), ft_args(strategy))
    scales = [
        (n, p)
        for n, p in model.named_parameters()
        if n.endswith("classifier.logit_scale")
        or n.endswith("modules_to_save.default.logit_scale")
        or n.endswith("original_module.logit_scale")
    ]
    assert scales and not any(p.requires_grad for _, p in scales)
    assert any(p.requires_grad for n, p in model.named_parameters() if "classifier" in n)
    assert_exactly_trainable_params_change(model)


def test_learn_logit_scale_true_trains_temperature(tiny_clip):
    model = apply_strategy(build(tiny_clip), ft_args("linear_probe"))
    assert model.classifier.logit_scale.requires_grad


@pytest.mark.parametrize("backbone", BACKBONES)
def test_lora_target_modules_override(backbone, request):
    model = apply_strategy(
        build(request.getfixturevalue(backbone)), ft_args("lora", lora_target_modules=["q_proj", "fc2"])
    )
    wrapped = {base_name(n).rpartition(".")[2] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "fc2"}
    assert all(".vision_model." in n for n, m in model.named_modules() if hasattr(m, "lora_A"))


def test_unknown_lora_target_lists_available_names(tiny_vtde):
    with pytest.raises(ValueError, match=r"\['query_proj'\].*available: .*k_proj.*o_proj.*q_proj.*v_proj"):
        apply_strategy(build(tiny_vtde), ft_args("lora", lora_target_modules=["q_proj", "query_proj"]))


def test_bad_strategy_and_layer_count_are_errors(tiny_clip):
    with pytest.raises(ValueError, match="finetune_strategy must be one of"):
        apply_strategy(build(tiny_clip), ft_args("prompt_tuning"))
    with pytest.raises(ValueError, match="between 0 and 2, got 3"):
        apply_strategy(build(tiny_clip), ft_args("top_k", unfreeze_last_n_layers=3))
