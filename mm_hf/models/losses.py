"""Contrastive losses for dual encoders with negatives gathered across processes, with gradients.

transformers' `CLIPModel` / `SiglipModel` losses only see the per-device batch: on N processes each
image is contrasted with B/N texts instead of B. The losses here gather the embeddings of every
process (differentiably) so a run on N processes optimises exactly the objective of one process
holding the global batch of B = N * b examples:

    loss = clip_loss(image_embeds, text_embeds, model.logit_scale)           # (b, d), (b, d), () -> ()
    loss = clip_loss(audio_embeds, text_embeds, clap.logit_scale_a, text_logit_scale=clap.logit_scale_t)
    loss = siglip_loss(image_embeds, text_embeds, model.logit_scale, model.logit_bias)

Why the gradients come out right under DDP (same argument for both losses):

* Every process builds the same global (B, B) logit matrix and computes the same scalar L (the
  mean over the global batch), so each process's loss depends on *every* process's embeddings.
* The backward of the gather (`all_gather_single`, a sum reduce-scatter) sends the gradient w.r.t.
  chunk r back to rank r and SUMS it over ranks. All N ranks hold the same L, so rank r receives
  N * dL/d(emb_r) for its own embeddings, and its tower parameters get N * (the part of dL/dθ that
  flows through its local examples).
* DDP averages gradients over ranks: (1/N) * Σ_r N * dL/dθ|_r = dL/dθ, the single-process gradient.
* `logit_scale` / `logit_bias` (and CLAP's second temperature) do not pass through the gather: each
  rank gets the full dL/dt locally, identical on all ranks, and the DDP average leaves it unchanged.

Requirements: every rank must pass the same batch size (set `dataloader_drop_last=True` in
`TrainingArguments`), and all ranks must call the loss the same number of times (it is a collective).
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed._functional_collectives import all_gather_single, wait_tensor

__all__ = ["clip_loss", "gather_with_grad", "siglip_loss"]

# CLIP (Radford et al. 2021) clips the learned temperature exp(logit_scale) at 100.
MAX_LOGIT_SCALE = math.log(100.0)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from all ranks along dim 0 in rank order, keeping gradients.

    Args:
        x: (b, ...) this rank's tensor; b must be the same on every rank.

    Returns:
        (world_size * b, ...) with rank r's rows at [r * b, (r + 1) * b). The backward gives each rank
        the SUM over all ranks of the gradients w.r.t. its own chunk. `x` itself (no copy, no
        collective) when torch.distributed is not initialised or the world size is 1.

    Raises:
        ValueError: the batch sizes differ across ranks (on every rank, so none hangs).
    """
    world_size = _world_size()
    if world_size == 1:
        return x
    _check_same_batch_size(x)
    # The functional collective is the autograd-aware gather of torch >= 2.6 that torch.compile traces into
    # the graph (torch.distributed.nn.functional.all_gather is deprecated and breaks the graph); its backward
    # is a sum reduce-scatter: each rank gets the SUM over ranks of the gradients w.r.t. its own chunk.
    # wait_tensor: a plain tensor out (not an AsyncCollectiveTensor), still differentiable.
    return wait_tensor(all_gather_single(x.contiguous(), 0, dist.group.WORLD))


def _check_same_batch_size(x: Tensor) -> None:
    """Gathering needs equal shapes and would otherwise fail obscurely or hang: a cheap size gather first."""
    size = torch.full((1,), x.shape[0], dtype=torch.long, device=x.device)
    sizes = wait_tensor(all_gather_single(size, 0, dist.group.WORLD))
    hint = "Set `dataloader_drop_last=True` in TrainingArguments so the last, smaller batch is dropped."
    if torch.compiler.is_compiling():
        # A Python branch on tensor values would break the graph: the check is an op of the graph instead.
        torch._assert_async(
            (sizes == sizes[0]).all(), f"gather_with_grad needs the same batch size on every rank. {hint}"
        )
        return
    if len(set(sizes.tolist())) != 1:
        raise ValueError(
            f"gather_with_grad needs the same batch size on every rank, got {sizes.tolist()} (rank order). {hint}"
        )


def _gather_pair(media_embeds: Tensor, text_embeds: Tensor, gather: bool) -> tuple[Tensor, Tensor]:
    if media_embeds.shape != text_embeds.shape or media_embeds.dim() != 2:
        raise ValueError(
            f"media_embeds and text_embeds must both be (batch, dim), got {tuple(media_embeds.shape)} "
            f"and {tuple(text_embeds.shape)}"
        )
    media_embeds = F.normalize(media_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    if gather:
        media_embeds, text_embeds = gather_with_grad(media_embeds), gather_with_grad(text_embeds)
    return media_embeds, text_embeds


def clip_loss(
    media_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor,
    gather: bool = True,
    text_logit_scale: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE (CLIP) over the global batch.

    Args:
        media_embeds: (b, d) un-normalised image (or CLAP's audio) embeddings of this rank; row i pairs
            with text row i.
        text_embeds: (b, d) un-normalised text embeddings of this rank.
        logit_scale: () learnable log-temperature; the temperature is exp(min(logit_scale, ln 100)).
        gather: contrast against the embeddings of all ranks (B = world_size * b) instead of only the
            local b. Ignored when torch.distributed is not initialised.
        text_logit_scale: () log-temperature of the text->media direction when it has its own (CLAP's
            `logit_scale_t`; `logit_scale` is then its `logit_scale_a`); default: `logit_scale`.

    Returns:
        () loss = (CE(logits_per_media, arange(B)) + CE(logits_per_text, arange(B))) / 2 with
        logits_per_media = exp(logit_scale) * x̂ ŷᵀ and logits_per_text = exp(text_logit_scale) * ŷ x̂ᵀ,
        both (B, B), each CE the mean over its B rows: transformers' `CLIPModel` loss on the global batch,
        and with two temperatures the symmetric loss over the two logit matrices `ClapModel` returns
        (its own `loss` transposes `logits_per_audio` and so scores the text->audio direction twice).
        Identical on every rank. See the module docstring for why DDP's gradient averaging then yields
        the single-process gradients.
    """
    media_embeds, text_embeds = _gather_pair(media_embeds, text_embeds, gather)
    similarities = media_embeds @ text_embeds.T  # (B, B)
    logits_per_media = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * similarities
    text_scale = logit_scale if text_logit_scale is None else text_logit_scale
    logits_per_text = text_scale.clamp(max=MAX_LOGIT_SCALE).exp() * similarities.T
    labels = torch.arange(similarities.shape[0], device=similarities.device)
    return (F.cross_entropy(logits_per_media, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def siglip_loss(
    media_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor, logit_bias: Tensor, gather: bool = True
) -> Tensor:
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023) over the global batch.

    Args:
        media_embeds: (b, d) un-normalised image (or audio) embeddings of this rank; row i pairs with text row i.
        text_embeds: (b, d) un-normalised text embeddings of this rank.
        logit_scale: () learnable log-temperature t' (temperature t = exp(t'), not clamped, as in
            transformers' `SiglipModel` and big_vision).
        logit_bias: () learnable bias b.
        gather: use the embeddings of all ranks (B = world_size * b). Ignored without torch.distributed.

    Returns:
        () loss = -(1/B) Σ_i Σ_j log σ(z_ij (t <x̂_i, ŷ_j> + b)), z_ij = +1 if i == j else -1, summed over
        all B*B pairs of the global batch and divided by B (not B²), as in the paper and as
        `SiglipModel` computes it (sum over one axis, mean over the other). Identical on every rank.
    """
    media_embeds, text_embeds = _gather_pair(media_embeds, text_embeds, gather)
    logits = logit_scale.exp() * media_embeds @ text_embeds.T + logit_bias  # (B, B)
    signs = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1  # +1 diag, -1 off
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]
