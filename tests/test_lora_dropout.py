"""LoRA dropout fused with lora_A (mm_hf/lora_dropout.py): peft's masks, loss and gradients, with and without
gradient checkpointing; peft's adapter files and merging; fewer bytes kept for backward."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn
from transformers import AutoProcessor

from mm_hf.args import FinetuneArguments
from mm_hf.lora_dropout import DropoutFusedLoraLinear, fuse_lora_dropout
from mm_hf.models import build_dual_encoder_classifier
from mm_hf.training import apply_strategy

ID2LABEL = {0: "zero", 1: "one", 2: "two"}
LABELS = torch.tensor([0, 1, 2, 0])


def classifier(path):
    tokenizer = AutoProcessor.from_pretrained(path).tokenizer
    return build_dual_encoder_classifier(path, ID2LABEL, tokenizer=tokenizer, prompt_templates=["a photo of a {}."])


@pytest.fixture(scope="module")
def fused_lora(tiny_clip):
    """The classifier under the recipes' LoRA setup (dropout 0.1), lora_B made non-zero so that every lora_A
    gets a gradient."""
    torch.manual_seed(0)
    model = apply_strategy(classifier(tiny_clip), FinetuneArguments(finetune_strategy="lora", lora_r=4))
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert layers and all(type(m) is DropoutFusedLoraLinear for m in layers)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.default.weight.copy_(torch.randn(layer.lora_B.default.weight.shape, generator=generator))
    return model


def copy_of(model, fused=True, dropout=True, checkpointing=None):
    """A copy of `model` in train mode; `fused=False`: peft's own Linear back (the reference), `dropout=False`:
    peft's layers as `lora_dropout=0` builds them (nn.Identity)."""
    model = copy.deepcopy(model)
    for layer in model.modules():
        if isinstance(layer, LoraLinear):
            if not fused or not dropout:
                layer.__class__ = LoraLinear
            if not dropout:
                layer.lora_dropout["default"] = nn.Identity()
    if checkpointing is not None:  # what Trainer calls for --gradient_checkpointing (with its kwargs)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": checkpointing})
    return model.train()


def pixels(batch=4):
    return torch.randn(batch, 3, 30, 30, generator=torch.Generator().manual_seed(0))


def step(model, seed=1, input_grad=False):
    """Loss and every trainable parameter's gradient after one forward/backward with dropout seeded by `seed`."""
    torch.manual_seed(seed)
    loss = model(pixel_values=pixels().requires_grad_(input_grad), labels=LABELS).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_step(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and any("lora_A" in n for n in grads_a)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], rtol=0, atol=1e-6, msg=name)


def test_fused_dropout_gives_peft_loss_and_gradients(fused_lora):
    fused, reference = copy_of(fused_lora), copy_of(fused_lora, fused=False)
    peft_step = step(reference)
    after_peft = torch.rand(3)
    assert_same_step(step(fused), peft_step)
    # The global random stream goes on as under peft: backward redraws the masks without consuming it.
    torch.testing.assert_close(torch.rand(3), after_peft, rtol=0, atol=0)
    assert all(g.abs().sum() > 0 for n, g in peft_step[1].items() if "lora_A" in n)
    # The masks matter: another seed draws others; eval mode (peft's own forward) drops nothing.
    assert not torch.allclose(step(fused, seed=2)[0], peft_step[0])
    with torch.no_grad():
        torch.testing.assert_close(
            fused.eval()(pixel_values=pixels()).logits, reference.eval()(pixel_values=pixels()).logits
        )


@pytest.mark.parametrize("reentrant", [False, True])
def test_fused_dropout_under_gradient_checkpointing_redraws_the_same_masks(fused_lora, reentrant):
    model = copy_of(fused_lora, checkpointing=reentrant)
    calls = []  # the checkpointed layers run again in backward
    layer = model.get_base_model().backbone.vision_model.encoder.layers[0]
    layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
    # Reentrant checkpointing recomputes only blocks whose input needs a gradient.
    reference = step(copy_of(fused_lora, fused=False), input_grad=reentrant)
    assert_same_step(step(model, input_grad=reentrant), reference)
    assert len(calls) == 2


def test_fused_model_saves_peft_adapters_that_reload_and_merge(fused_lora, tiny_clip, tmp_path):
    model = copy_of(fused_lora)
    step(model)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixels()).logits
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(classifier(tiny_clip), tmp_path).eval()
    assert not any(isinstance(m, DropoutFusedLoraLinear) for m in reloaded.modules())  # plain peft
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    merged = model.merge_and_unload()
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels()).logits, expected)
        torch.testing.assert_close(
            merged(pixel_values=pixels()).logits, expected, rtol=2e-4, atol=2e-4
        )  # merged weights round differently


def saved_bytes(model) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for backward in one training forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(pixel_values=pixels(), labels=LABELS)
    return sum(storages.values())


def test_fused_dropout_keeps_no_copy_of_the_adapted_inputs(fused_lora):
    fused, reference = copy_of(fused_lora), copy_of(fused_lora, fused=False)
    inputs = []  # (storage, bytes, requires grad) of every adapted layer's input
    for module in fused.modules():
        if isinstance(module, LoraLinear):
            module.register_forward_pre_hook(
                lambda _, args: inputs.append(
                    (args[0].untyped_storage().data_ptr(), args[0].nbytes, args[0].requires_grad)
                )
            )
    fused_bytes, peft_bytes = saved_bytes(fused), saved_bytes(reference)
    masks = sum(nbytes // 4 for _, nbytes, _ in inputs)  # the 1-byte masks (of float32 inputs) it keeps instead
    # peft keeps per adapted layer the dropped input (lora_A's) and, when the input needs a gradient, the scaled
    # mask; the fused layers keep the input itself, once per distinct input (q, k and v share theirs).
    copies = sum(nbytes * (1 + grad) for _, nbytes, grad in inputs)
    shared = sum({ptr: nbytes for ptr, nbytes, _ in inputs}.values())
    assert peft_bytes - fused_bytes >= copies - shared - masks
    # As little as without dropout, but for the masks.
    assert fused_bytes == saved_bytes(copy_of(fused_lora, dropout=False)) + masks


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_dropout_is_bit_identical_to_peft_also_under_autocast(autocast):
    # ReLU feeds exact zeros into an adapted layer: a mask read back from dropout's output would be wrong there.
    base = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 4))
    reference = get_peft_model(base, LoraConfig(r=4, target_modules=["0", "2", "4"], lora_dropout=0.1))
    for layer in reference.modules():
        if isinstance(layer, LoraLinear):
            nn.init.normal_(layer.lora_B.default.weight)
    fused = copy.deepcopy(reference)
    assert fuse_lora_dropout(fused) == 3
    x = torch.randn(5, 7, 16)
    grads = []
    for model in (reference, fused):
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x.clone().requires_grad_())
        out.float().square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=0, msg=name)
