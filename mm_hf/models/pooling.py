"""Pooling blocks: (batch, tokens, dim) hidden states and a padding mask -> one (batch, dim) vector per row.

The one implementation of pooling in mm_hf: the audio classifier (over frames), the fusion model (over tokens,
patches and video frames) and the fusion blocks' masking helpers all use this file. Torch only on purpose: it
ships next to the remote-code modeling files (transformers' `save_pretrained` copies every file a modeling file
imports relatively), so it must load where mm_hf is not installed.

Masks: `mask (B, N)` is 1/True (any nonzero value) for a real token, 0/False for padding; None means all real.
Padding never influences an output (it is zeroed before use, so even NaN placeholders are harmless), and a row
without a real token pools to zeros (cls: token 0 still; transformer: its CLS readout), with finite gradients.
"""

from __future__ import annotations

import torch
from torch import nn

POOLING_KINDS = ("cls", "mean", "max", "attention", "transformer")


def bool_mask(mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
    """`mask` (B, N) as bool on `tokens`' device; None means every position is real."""
    if mask is None:
        return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.shape[:2])}")
    return mask.to(tokens.device).bool()


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to `mask`: masked entries are exactly 0, all-masked rows all 0."""
    # finfo.min rather than -inf: an all-masked row then yields a finite (uniform) softmax that the product
    # below zeroes, instead of NaN in the forward and backward pass.
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1) * mask


def transformer_encoder(dim: int, num_heads: int, num_layers: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm encoder (batch_first) with a final LayerNorm, the usual pairing for norm_first layers."""

    def layer() -> nn.TransformerEncoderLayer:
        return nn.TransformerEncoderLayer(
            dim, num_heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )

    encoder = nn.TransformerEncoder(layer(), num_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
    # nn.TransformerEncoder deep-copies one layer, so all layers would start from identical weights.
    encoder.layers = nn.ModuleList(layer() for _ in range(num_layers))
    return encoder


class ClsPooling(nn.Module):
    """Token 0 (a CLS token). hidden (B, N, D), mask (B, N) ignored (token 0 is assumed real) -> (B, D)."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return hidden[:, 0]


class MeanPooling(nn.Module):
    """Mean over real tokens. hidden (B, N, D), mask (B, N) -> (B, D); rows without a real token -> zeros."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = bool_mask(mask, hidden)
        total = hidden.masked_fill(~mask[..., None], 0.0).sum(dim=1)
        return total / mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)


class MaxPooling(nn.Module):
    """Max over real tokens. hidden (B, N, D), mask (B, N) -> (B, D); rows without a real token -> zeros."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = bool_mask(mask, hidden)
        # -inf (not 0) so padding never wins against negative features.
        best = hidden.masked_fill(~mask[..., None], float("-inf")).max(dim=1).values
        return torch.where(mask.any(dim=1, keepdim=True), best, torch.zeros_like(best))


class AttentionPooling(nn.Module):
    """Learned attention pooling: score_n = w . h_n + b, masked softmax over tokens, weighted sum.

    hidden (B, N, D), mask (B, N) -> (B, D). Padding gets weight exactly 0; rows without a real token -> zeros.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def attention_weights(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) weights summing to 1 over real tokens (0 everywhere for rows without one)."""
        mask = bool_mask(mask, hidden)
        # Softmax in float32, as transformers' attention layers do under bf16/fp16: over a long clip's frames
        # (Whisper: 1500) each half-precision weight would keep only 2-3 significant digits.
        scores = self.score(hidden.masked_fill(~mask[..., None], 0.0)).squeeze(-1).float()
        return masked_softmax(scores, mask).to(hidden.dtype)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = bool_mask(mask, hidden)
        weights = self.attention_weights(hidden, mask)
        return torch.einsum("bn,bnd->bd", weights, hidden.masked_fill(~mask[..., None], 0.0))


class TransformerPooling(nn.Module):
    """Small temporal transformer, e.g. over per-frame video/audio embeddings, read out at a learned CLS token.

    [CLS, h_1..h_N] + learned positional embeddings -> pre-norm nn.TransformerEncoder (padding masked as keys;
    the CLS token never is) -> final LayerNorm -> CLS output.
    hidden (B, N, D) with N <= max_length, mask (B, N) -> (B, D). Frame order matters (positional embeddings).
    """

    def __init__(self, dim: int, num_layers: int = 1, num_heads: int = 4, max_length: int = 512, dropout: float = 0.0):
        super().__init__()
        self.max_length = max_length
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        # +1 for CLS. Unit-norm rows: inputs are typically LayerNorm-ed projections (unit scale per feature), and
        # ViT's 0.02 would leave frame order nearly invisible at the start (temporal models then learn slowly).
        self.position_embeddings = nn.Parameter(torch.randn(1, max_length + 1, dim) * dim**-0.5)
        self.encoder = transformer_encoder(dim, num_heads, num_layers, dropout)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = hidden.shape
        if length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds max_length={self.max_length}")
        mask = bool_mask(mask, hidden)
        x = torch.cat([self.cls_token.expand(batch, -1, -1), hidden.masked_fill(~mask[..., None], 0.0)], dim=1)
        x = x + self.position_embeddings[:, : length + 1]
        ignore = torch.cat([mask.new_zeros(batch, 1), ~mask], dim=1)  # True = key ignored
        return self.encoder(x, src_key_padding_mask=ignore)[:, 0]


def build_pooling(kind: str, dim: int, **kwargs) -> nn.Module:
    """A pooling block `forward(hidden (B, N, D), mask=None) -> (B, D)`; kwargs go to its constructor."""
    if kind == "cls":
        return ClsPooling(**kwargs)
    if kind == "mean":
        return MeanPooling(**kwargs)
    if kind == "max":
        return MaxPooling(**kwargs)
    if kind == "attention":
        return AttentionPooling(dim, **kwargs)
    if kind == "transformer":
        return TransformerPooling(dim, **kwargs)
    raise ValueError(f"unknown pooling kind {kind!r}; valid kinds: {', '.join(POOLING_KINDS)}")


__all__ = [
    "POOLING_KINDS",
    "AttentionPooling",
    "ClsPooling",
    "MaxPooling",
    "MeanPooling",
    "TransformerPooling",
    "bool_mask",
    "build_pooling",
    "masked_softmax",
    "transformer_encoder",
]
