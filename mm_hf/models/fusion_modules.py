"""Tabular encoding and multimodal fusion blocks (plain `nn.Module`s, torch only; pooling is in pooling.py).

Self-contained on purpose: this file ships next to a transformers remote-code modeling file, so it must load
where neither mm_hf nor transformers' own model code is importable. Import nothing but torch and the sibling
pooling.py here.

Conventions shared by every block:
- `mask (B, N)`: 1/True = real token, 0/False = padding.
- `present (B, M)`: 1/True = the modality is available for that sample, 0/False = missing.
- Padding tokens and missing modalities never influence an output (their values are zeroed before use, so even
  NaN placeholders are harmless), and a row with nothing real in it gives finite values, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .pooling import bool_mask, masked_softmax, transformer_encoder

FUSION_KINDS = ("concat", "late", "gated", "cross_attention", "tensor")


class FeatureStandardizer(nn.Module):
    """Per-feature standardisation of a frozen encoder's pooled output with statistics of the training data.

    x (..., D) -> (x - mean) / std. `mean`/`std` are buffers (saved with the model), identity until `fit` is called.
    Why: pretrained features carry large constant offsets; DINOv2-small's mean-pooled output has a squared mean
    norm 10x its total variance (1196 vs 119 on 112 px digits), so after Linear + LayerNorm every sample looks
    nearly alike and freshly initialised fusion layers learn nothing within a few epochs (eval loss stuck at
    0.693 on a two-class XOR). Standardised, the same model and budget reach the MLP baseline.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def reset_parameters(self) -> None:
        # nn.init (not in-place tensor ops): transformers guards these, so statistics loaded from a checkpoint stay.
        nn.init.zeros_(self.mean)
        nn.init.ones_(self.std)

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Set the statistics from features (N, D) (N >= 2 rows, e.g. every present training sample)."""
        features = features.reshape(-1, self.mean.shape[0]).to(self.mean.device, torch.float32)
        if features.shape[0] < 2:
            raise ValueError(f"need at least 2 feature rows to standardise, got {features.shape[0]}")
        self.mean.copy_(features.mean(dim=0))
        self.std.copy_(features.std(dim=0).clamp_min(self.eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


# --------------------------------------------------------------------------------------------------- tabular
class TabularEncoder(nn.Module):
    """Numeric + categorical columns -> one (B, dim) vector.

    numeric (B, num_numeric) float, already standardised; NaN = missing: replaced by 0, and a 0/1 missing
    indicator per feature is appended so the model can tell "missing" from "exactly 0".
    categorical (B, len(categorical_cardinalities)) long. Index 0 is reserved for unknown/missing; real
    categories use 1..cardinality, so each table has cardinality + 1 rows and row 0 is a learned "unknown" vector.
    MLP input, in this order: [embedding_1 .. embedding_C, numeric values, missing indicators]
    -> Linear(dim) -> GELU -> Dropout -> Linear(dim).
    Either kind of column may be absent (0 numeric or no categoricals), not both.
    """

    def __init__(
        self,
        num_numeric: int,
        categorical_cardinalities: list[int],
        dim: int,
        embedding_dim: int = 16,
        dropout: float = 0.0,
    ):
        super().__init__()
        categorical_cardinalities = list(categorical_cardinalities)
        if num_numeric < 0 or any(c < 1 for c in categorical_cardinalities):
            raise ValueError("num_numeric must be >= 0 and every categorical cardinality >= 1")
        if num_numeric == 0 and not categorical_cardinalities:
            raise ValueError("TabularEncoder needs at least one numeric or categorical column")
        self.num_numeric = num_numeric
        self.categorical_cardinalities = categorical_cardinalities
        self.out_dim = dim
        self.embeddings = nn.ModuleList(nn.Embedding(c + 1, embedding_dim) for c in categorical_cardinalities)
        in_dim = len(categorical_cardinalities) * embedding_dim + 2 * num_numeric
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, numeric: torch.Tensor | None = None, categorical: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if self.embeddings:
            if categorical is None or categorical.shape[-1] != len(self.embeddings):
                raise ValueError(f"expected categorical of shape (B, {len(self.embeddings)})")
            parts += [table(categorical[:, i]) for i, table in enumerate(self.embeddings)]
        if self.num_numeric:
            if numeric is None or numeric.shape[-1] != self.num_numeric:
                raise ValueError(f"expected numeric of shape (B, {self.num_numeric})")
            numeric = numeric.to(self.mlp[0].weight.dtype)
            missing = torch.isnan(numeric)
            parts += [numeric.masked_fill(missing, 0.0), missing.to(numeric.dtype)]
        return self.mlp(torch.cat(parts, dim=-1))


# --------------------------------------------------------------------------------------------------- fusion
def _check_tokens(tokens: torch.Tensor, present: torch.Tensor | None, num_modalities: int) -> torch.Tensor:
    if tokens.dim() != 3 or tokens.shape[1] != num_modalities:
        raise ValueError(f"expected tokens (B, {num_modalities}, D), got {tuple(tokens.shape)}")
    return bool_mask(present, tokens)


class ConcatFusion(nn.Module):
    """Concatenation. tokens (B, M, D), present (B, M) -> (B, M * D); missing modalities are zeros.

    The model upstream substitutes a learned placeholder for missing modalities; this just zeroes what is absent.
    """

    produces_logits = False

    def __init__(self, num_modalities: int, dim: int):
        super().__init__()
        self.num_modalities = num_modalities
        self.out_dim = num_modalities * dim

    def forward(self, tokens: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        present = _check_tokens(tokens, present, self.num_modalities)
        return tokens.masked_fill(~present[..., None], 0.0).flatten(1)


class GatedFusion(nn.Module):
    """Gated multimodal unit (Arevalo et al. 2017) generalised to M modalities, with a gate per feature.

    h_m = tanh(W_m x_m + b_m); s = W_g [x_1; ..; x_M] + b_g reshaped to (M, D) scores (missing x_m zeroed);
    z[:, d] = softmax over the present modalities of s[:, d] (missing get exactly 0); output = sum_m z_m * h_m.
    Per-feature gates (the GMU's vector z) let each output feature pick its modality depending on all inputs,
    so the block can express interactions (a scalar gate per modality only mixes the two vectors).
    tokens (B, M, D), present (B, M) -> (B, D). Rows with no present modality -> zeros.
    """

    produces_logits = False

    def __init__(self, num_modalities: int, dim: int):
        super().__init__()
        self.num_modalities = num_modalities
        self.out_dim = dim
        self.projections = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_modalities))
        self.gate = nn.Linear(num_modalities * dim, num_modalities * dim)

    def gate_weights(self, tokens: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, D) gates z, summing to 1 over the present modalities for every feature d."""
        present = _check_tokens(tokens, present, self.num_modalities)
        tokens = tokens.masked_fill(~present[..., None], 0.0)
        scores = self.gate(tokens.flatten(1)).view(tokens.shape).transpose(1, 2)  # (B, D, M)
        return masked_softmax(scores, present[:, None, :]).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        present = _check_tokens(tokens, present, self.num_modalities)
        tokens = tokens.masked_fill(~present[..., None], 0.0)
        hidden = torch.stack([torch.tanh(proj(tokens[:, m])) for m, proj in enumerate(self.projections)], dim=1)
        return (self.gate_weights(tokens, present) * hidden).sum(dim=1)


class CrossAttentionFusion(nn.Module):
    """Transformer over [fusion CLS, x_1 + e_1, .., x_M + e_M], read out at the CLS token.

    e_m are learned modality-type embeddings (so slots are not interchangeable); missing modalities are masked
    as attention keys (the CLS token never is), then pre-norm nn.TransformerEncoder -> final LayerNorm.
    tokens (B, M, D), present (B, M) -> (B, D). A row with no present modality still gets a finite (CLS-only) vector.
    """

    produces_logits = False

    def __init__(self, num_modalities: int, dim: int, num_heads: int = 4, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.num_modalities = num_modalities
        self.out_dim = dim
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.modality_embeddings = nn.Parameter(torch.randn(1, num_modalities, dim) * 0.02)
        self.encoder = transformer_encoder(dim, num_heads, num_layers, dropout)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        present = _check_tokens(tokens, present, self.num_modalities)
        batch = tokens.shape[0]
        x = tokens.masked_fill(~present[..., None], 0.0) + self.modality_embeddings
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)
        ignore = torch.cat([present.new_zeros(batch, 1), ~present], dim=1)  # True = key ignored
        return self.encoder(x, src_key_padding_mask=ignore)[:, 0]


class TensorFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al. 2018, "Efficient Low-rank Multimodal Fusion with
    Modality-Specific Factors").

        z_m = [x_m; 1]                                              (D + 1)
        fused = sum_{r=1..R} w_r * prod_{m=1..M} (z_m @ W_m[r]) + b (out_dim)

    with factors W_m[r] of shape (D + 1, out_dim), rank weights w (R,) and bias b (out_dim,): the rank-R
    decomposition of the full outer-product tensor fusion, without ever building the (D+1)^M tensor.
    The appended 1 keeps all lower-order (unimodal, bimodal, ...) interactions. A missing modality uses
    z_m = [0, .., 0, 1], i.e. only its bias row W_m[r][D].
    tokens (B, M, D), present (B, M) -> (B, out_dim).
    """

    produces_logits = False

    def __init__(self, num_modalities: int, dim: int, out_dim: int, rank: int = 4):
        super().__init__()
        self.num_modalities = num_modalities
        self.out_dim = out_dim
        # std (D+1)^-1/2 keeps each factor z_m @ W_m[r] near unit scale for unit-scale inputs, so the
        # M-fold product neither explodes nor vanishes at initialisation.
        self.factors = nn.Parameter(torch.randn(num_modalities, rank, dim + 1, out_dim) * (dim + 1) ** -0.5)
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, tokens: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        present = _check_tokens(tokens, present, self.num_modalities)
        x = tokens.masked_fill(~present[..., None], 0.0)
        z = torch.cat([x, x.new_ones(*x.shape[:2], 1)], dim=-1)  # (B, M, D + 1)
        per_modality = torch.einsum("bmd,mrdo->bmro", z, self.factors)  # (B, M, R, out_dim)
        return torch.einsum("r,bro->bo", self.rank_weights, per_modality.prod(dim=1)) + self.bias


class LateFusion(nn.Module):
    """Decision-level fusion: one Linear(D -> num_outputs) head per modality, logits averaged over present ones.

    tokens (B, M, D), present (B, M) -> logits (B, num_outputs); rows with no present modality -> zeros.
    `produces_logits = True`: the model must not put another classification head on top.
    """

    produces_logits = True

    def __init__(self, num_modalities: int, dim: int, num_outputs: int):
        super().__init__()
        self.num_modalities = num_modalities
        self.out_dim = num_outputs
        self.heads = nn.ModuleList(nn.Linear(dim, num_outputs) for _ in range(num_modalities))

    def per_modality_logits(self, tokens: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, num_outputs) logits of each head; zeros for missing modalities (e.g. for auxiliary losses)."""
        present = _check_tokens(tokens, present, self.num_modalities)
        # Zero missing inputs first, not just the logits: a NaN placeholder would otherwise poison the gradients.
        tokens = tokens.masked_fill(~present[..., None], 0.0)
        logits = torch.stack([head(tokens[:, m]) for m, head in enumerate(self.heads)], dim=1)
        return logits.masked_fill(~present[..., None], 0.0)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        present = _check_tokens(tokens, present, self.num_modalities)
        total = self.per_modality_logits(tokens, present).sum(dim=1)
        return total / present.sum(dim=1, keepdim=True).clamp(min=1).to(total.dtype)


def build_fusion(kind: str, num_modalities: int, dim: int, num_outputs: int | None = None, **kwargs) -> nn.Module:
    """A fusion block `forward(tokens (B, M, D), present (B, M)) -> (B, out_dim)`; kwargs go to its constructor.

    `num_outputs` is required by "late" (it outputs logits) and ignored by the others, which output features;
    "tensor" takes `out_dim` from kwargs, defaulting to `dim`.
    """
    if kind == "concat":
        return ConcatFusion(num_modalities, dim, **kwargs)
    if kind == "late":
        if num_outputs is None:
            raise ValueError("late fusion outputs logits: pass num_outputs")
        return LateFusion(num_modalities, dim, num_outputs, **kwargs)
    if kind == "gated":
        return GatedFusion(num_modalities, dim, **kwargs)
    if kind == "cross_attention":
        return CrossAttentionFusion(num_modalities, dim, **kwargs)
    if kind == "tensor":
        return TensorFusion(num_modalities, dim, out_dim=kwargs.pop("out_dim", dim), **kwargs)
    raise ValueError(f"unknown fusion kind {kind!r}; valid kinds: {', '.join(FUSION_KINDS)}")


class ModalityDropout(nn.Module):
    """Randomly hides modalities during training so the model learns to cope with missing ones.

    present (B, M) -> new present (B, M) bool. In training mode each present modality of each sample is dropped
    with probability p, but a sample never loses all of them: if every one would be dropped, one of its originally
    present modalities, chosen uniformly, is kept. Samples with none present stay so. Identity in eval mode.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, present: torch.Tensor) -> torch.Tensor:
        present = present.bool()
        if not self.training or self.p == 0.0:
            return present
        kept = present & (torch.rand(present.shape, device=present.device) >= self.p)
        # Uniform choice among present modalities: argmax of uniform noise, with absent ones pushed below.
        noise = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0)
        rescue = F.one_hot(noise.argmax(dim=1), present.shape[1]).bool() & present
        return torch.where(kept.any(dim=1, keepdim=True), kept, rescue)
