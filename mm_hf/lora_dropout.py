"""LoRA dropout without its activation copies: the same masks and gradients as peft, a fraction of the memory.

peft computes `lora_B(lora_A(dropout(x)))` in each adapted Linear. In training, autograd then keeps, per adapted
layer, the dropped copy of `x` (lora_A's input, for its weight gradient) and dropout's scaled mask (for the input
gradient), each as large as `x`; q, k and v make their own from one shared input. A CLIP ViT-B/32 at batch 32 kept
+380 MB for them, peak RSS 1866 -> 2246 MB, 0.67x -> 0.80x of full fine-tuning; through this module 1884 MB,
0.68x (README "Memory benchmark", 2026-12-02).

`fuse_lora_dropout(model)` gives each adapted `peft.tuners.lora.layer.Linear` a forward whose dropout + lora_A is
one autograd function (`DropoutLinear`): it draws the mask as `nn.functional.dropout` does (same random stream,
same values: the tests compare peft's loss and gradients bit for bit), and keeps only `x` (which the other
adapters of that input keep anyway) and a 1-byte mask; backward rebuilds lora_A's input from them. Modules,
parameters, state_dict keys, the adapter files, merging and unloading stay peft's: only the class of each layer
changes, to a subclass whose forward falls back to peft's own in eval mode, at p = 0 (nn.Identity), without
autograd, under torch.compile, and for what the fast path does not cover (merged or disabled adapters, mixed
adapter batches, DoRA and the other variants, hooks on lora_A, devices other than CPU and CUDA).

Gradient checkpointing: torch restores the random state before recomputing a checkpointed block, so the
recomputed forward draws the masks the first one drew (tested with and without reentrant checkpointing).
"""

import contextlib

import torch
from peft.tuners.lora.layer import VARIANT_KWARG_KEYS
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn
from torch.nn import functional as F

DEVICES = ("cpu", "cuda")


class DropoutLinear(torch.autograd.Function):
    """`F.linear(F.dropout(x.to(dtype), p), weight)` keeping `x`, `weight` and the dropout mask (1 byte) only.

    `torch.native_dropout` draws the mask as `F.dropout` does (its CUDA path; the same bernoulli draws on CPU) and
    scales by 1 / (1 - p); backward rebuilds lora_A's input from `x` and the mask.
    Keeping the mask rather than redrawing it from the saved generator state costs 1 byte per element and spares a
    bernoulli draw per adapted layer in backward: on CPU, 3.9 ms of the 5.6 ms peft spends on dropout + lora_A of
    a 8 x 50 x 768 input, forward and backward; redrawing made a CLIP ViT-B/32 LoRA step 1.10x slower (interleaved).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
        device_type = x.device.type
        dropped, mask = torch.native_dropout(x.to(dtype), p, True)
        ctx.scale, ctx.dtype = 1 / (1 - p), dtype
        # The matmuls in backward run under the autocast forward ran under, as linear's own backward does.
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.save_for_backward(x, weight, mask)
        return F.linear(dropped, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, mask = ctx.saved_tensors
        noise = mask.to(ctx.dtype).mul_(ctx.scale)  # 0 or 1 / (1 - p): what dropout multiplied lora_A's input by
        grad_x = grad_weight = None
        enabled, dtype = ctx.autocast
        with torch.autocast(x.device.type, dtype=dtype) if enabled else contextlib.nullcontext():
            if ctx.needs_input_grad[0]:
                # In lora_A's input dtype, as the gradient reaches peft's dropout.
                grad_x = (grad.matmul(weight).to(ctx.dtype) * noise).to(x.dtype)
            if ctx.needs_input_grad[1]:
                dropped = x.to(ctx.dtype) * noise
                grad_weight = grad.reshape(-1, grad.shape[-1]).t().matmul(dropped.reshape(-1, dropped.shape[-1]))
                grad_weight = grad_weight.to(weight.dtype)
        return grad_x, grad_weight, None, None


class DropoutFusedLoraLinear(LoraLinear):
    """peft's LoRA Linear whose training forward runs dropout + lora_A as one `DropoutLinear` per adapter."""

    def _fused(self, x: torch.Tensor, kwargs: dict) -> bool:
        return (
            torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and x.device.type in DEVICES
            and not self.disable_adapters
            and not self.merged
            and kwargs.get("adapter_names") is None
            and not any(name in self.lora_variant for name in self.active_adapters)
            and any(_dropping(self.lora_dropout[name]) for name in self.active_adapters if name in self.lora_A)
        )

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not self._fused(x, kwargs):
            return super().forward(x, *args, **kwargs)
        # peft's vanilla path (peft/tuners/lora/layer.py, Linear.forward, 0.21) with dropout + lora_A fused.
        kwargs.pop("adapter_names", None)
        for key in VARIANT_KWARG_KEYS:  # peft drops them before the base layer too
            kwargs.pop(key, None)
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_A, lora_B, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
            dtype = lora_A.weight.dtype if getattr(self, "cast_input_dtype_enabled", True) else x.dtype
            if _dropping(dropout) and type(lora_A) is nn.Linear and not _hooked(lora_A):
                hidden = DropoutLinear.apply(x, lora_A.weight, dropout.p, dtype)
            else:
                hidden = lora_A(dropout(x.to(dtype)))
            result = result + lora_B(hidden) * self.scaling[name]
        return result.to(result_dtype)


def _dropping(module: nn.Module) -> bool:
    # p = 1 is left to peft: F.dropout zeroes without drawing there, native_dropout would draw.
    return isinstance(module, nn.Dropout) and module.training and 0 < module.p < 1


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def fuse_lora_dropout(model: nn.Module) -> int:
    """Switch every peft LoRA Linear of `model` with a dropout (0 < p < 1) to `DropoutFusedLoraLinear`, in place;
    returns how many. Its parameters, buffers and state_dict keys are unchanged."""
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and any(
            isinstance(d, nn.Dropout) and d.p > 0 for d in module.lora_dropout.values()
        ):
            module.__class__ = DropoutFusedLoraLinear
            count += 1
    return count
