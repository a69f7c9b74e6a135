"""Pooling, tabular and fusion blocks against hand-computed values, plus their masking contracts."""

import math

import pytest
import torch

from mm_hf.models.fusion_modules import (
    ConcatFusion,
    CrossAttentionFusion,
    GatedFusion,
    LateFusion,
    ModalityDropout,
    TabularEncoder,
    TensorFusion,
    build_fusion,
)
from mm_hf.models.pooling import (
    AttentionPooling,
    ClsPooling,
    MaxPooling,
    MeanPooling,
    TransformerPooling,
    build_pooling,
)

# (B=2, N=3, D=2); row 0 has 2 real tokens, row 1 only its first.
HIDDEN = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]], [[-1.0, -3.0], [-2.0, -1.0], [7.0, 7.0]]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def assert_every_parameter_gets_gradient(module, loss):
    loss.backward()
    for name, param in module.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def manual_encoder(encoder, x, ignore):
    """nn.TransformerEncoder(norm_first=True) + final norm, written out with the encoder's own submodules."""
    for layer in encoder.layers:
        h = layer.norm1(x)
        x = x + layer.self_attn(h, h, h, key_padding_mask=ignore, need_weights=False)[0]
        x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
    return encoder.norm(x)


# ------------------------------------------------------------------------------------------------ pooling
def test_cls_pooling_returns_token_zero():
    assert torch.equal(ClsPooling()(HIDDEN, MASK), torch.tensor([[1.0, -2.0], [-1.0, -3.0]]))


def test_mean_pooling_by_hand():
    expected = torch.tensor([[2.0, 1.0], [-1.0, -3.0]])
    assert torch.allclose(MeanPooling()(HIDDEN, MASK), expected)
    unmasked = torch.tensor([[-1 / 3, 8 / 3], [4 / 3, 1.0]])
    assert torch.allclose(MeanPooling()(HIDDEN), unmasked)


def test_max_pooling_by_hand():
    # Row 1 is all negative: padding filled with 0 instead of -inf would wrongly win.
    assert torch.equal(MaxPooling()(HIDDEN, MASK), torch.tensor([[3.0, 4.0], [-1.0, -3.0]]))
    assert torch.equal(MaxPooling()(HIDDEN), torch.tensor([[3.0, 6.0], [7.0, 7.0]]))


def test_attention_pooling_by_hand():
    pool = AttentionPooling(2)
    with torch.no_grad():
        pool.score.weight.copy_(torch.tensor([[1.0, 0.5]]))
        pool.score.bias.fill_(0.3)
    # Row 0 scores: 1 - 1 + 0.3 = 0.3 and 3 + 2 + 0.3 = 5.3, token 2 masked; row 1: a single real token.
    w0 = 1 / (1 + math.exp(5.0))
    weights = pool.attention_weights(HIDDEN, MASK)
    assert torch.allclose(weights, torch.tensor([[w0, 1 - w0, 0.0], [1.0, 0.0, 0.0]]))
    assert weights[0, 2] == 0 and torch.all(weights[1, 1:] == 0)
    expected = torch.stack([w0 * HIDDEN[0, 0] + (1 - w0) * HIDDEN[0, 1], HIDDEN[1, 0]])
    assert torch.allclose(pool(HIDDEN, MASK), expected)


def test_transformer_pooling_matches_manual_computation():
    pool = TransformerPooling(8, num_layers=2, num_heads=2, max_length=5)
    # Layers are initialised independently (nn.TransformerEncoder alone would deep-copy one layer).
    assert not torch.equal(pool.encoder.layers[0].linear1.weight, pool.encoder.layers[1].linear1.weight)
    hidden = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    x = torch.cat([pool.cls_token.expand(2, -1, -1), hidden * mask[..., None]], dim=1) + pool.position_embeddings[:, :5]
    ignore = torch.cat([torch.zeros(2, 1, dtype=torch.bool), ~mask], dim=1)
    expected = manual_encoder(pool.encoder, x, ignore)[:, 0]
    assert torch.allclose(pool(hidden, mask), expected, atol=1e-5)
    with torch.no_grad():  # eval + no_grad takes PyTorch's fused fast path: same numbers expected
        assert torch.allclose(pool.eval()(hidden, mask), expected, atol=1e-5)


def test_transformer_pooling_padding_equals_truncation_and_order_matters():
    pool = TransformerPooling(8, num_heads=2, max_length=6)
    with torch.no_grad():
        pool.position_embeddings.normal_()  # make positions matter clearly
    hidden = torch.randn(1, 5, 8)
    padded = pool(hidden, torch.tensor([[1, 1, 1, 0, 0]]))
    assert torch.allclose(padded, pool(hidden[:, :3]), atol=1e-5)
    reversed_frames = pool(hidden.flip(1))
    assert not torch.allclose(pool(hidden), reversed_frames, atol=1e-3)
    with torch.no_grad():
        pool.position_embeddings.zero_()  # without positions, the CLS readout is permutation invariant
    assert torch.allclose(pool(hidden), pool(hidden.flip(1)), atol=1e-5)
    with pytest.raises(ValueError, match="max_length"):
        pool(torch.randn(1, 7, 8))


@pytest.mark.parametrize("kind", ["cls", "mean", "max", "attention", "transformer"])
def test_pooling_ignores_padding_values(kind):
    pool = build_pooling(kind, 8, **({"num_heads": 2, "max_length": 4} if kind == "transformer" else {}))
    hidden = torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    out = pool(hidden, mask)
    assert out.shape == (3, 8)
    changed = torch.where(mask.bool()[..., None], hidden, torch.full_like(hidden, 1e4))
    assert torch.allclose(pool(changed, mask), out, atol=1e-5)
    nan_padding = torch.where(mask.bool()[..., None], hidden, torch.full_like(hidden, float("nan")))
    assert torch.allclose(pool(nan_padding, mask), out, atol=1e-5)
    # ... and real tokens do matter (a random change: pre-norm layers are blind to a constant shift).
    assert not torch.allclose(pool(hidden + torch.randn_like(hidden), mask), out, atol=1e-3)


@pytest.mark.parametrize("kind", ["mean", "max", "attention", "transformer"])
def test_pooling_all_masked_rows_are_finite(kind):
    pool = build_pooling(kind, 8, **({"num_heads": 2, "max_length": 4} if kind == "transformer" else {}))
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]])
    out = pool(hidden, mask)
    assert torch.isfinite(out).all()
    if kind != "transformer":  # the transformer still reads its CLS token
        assert torch.equal(out[0], torch.zeros(8))
    out.sum().backward()
    assert torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize("kind", ["attention", "transformer"])
def test_pooling_gradients_reach_every_parameter(kind):
    pool = build_pooling(kind, 8, **({"num_heads": 2, "max_length": 4} if kind == "transformer" else {}))
    out = pool(torch.randn(2, 4, 8), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert_every_parameter_gets_gradient(pool, (out * torch.randn_like(out)).sum())


def test_build_pooling_rejects_unknown_kind():
    with pytest.raises(ValueError, match="cls, mean, max, attention, transformer"):
        build_pooling("median", 8)


# ------------------------------------------------------------------------------------------------ tabular
def test_tabular_encoder_matches_explicit_formula():
    encoder = TabularEncoder(2, [3, 2], dim=4, embedding_dim=3)
    numeric = torch.tensor([[0.5, float("nan")], [float("nan"), -1.0]])
    categorical = torch.tensor([[2, 0], [3, 1]])  # 0 = unknown
    rows = []
    for b in range(2):
        emb = [encoder.embeddings[0].weight[categorical[b, 0]], encoder.embeddings[1].weight[categorical[b, 1]]]
        values = [0.0 if math.isnan(v) else v for v in numeric[b].tolist()]
        indicators = [1.0 if math.isnan(v) else 0.0 for v in numeric[b].tolist()]
        x = torch.cat([*emb, torch.tensor(values), torch.tensor(indicators)])
        h = encoder.mlp[0].weight @ x + encoder.mlp[0].bias
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        rows.append(encoder.mlp[3].weight @ h + encoder.mlp[3].bias)
    out = encoder(numeric, categorical)
    assert out.shape == (2, 4) and encoder.out_dim == 4
    assert torch.allclose(out, torch.stack(rows), atol=1e-6)


def test_tabular_encoder_missing_numeric_and_unknown_category():
    encoder = TabularEncoder(1, [3], dim=4)
    assert encoder.embeddings[0].num_embeddings == 4  # cardinality + the reserved unknown row
    categorical = torch.tensor([[0], [1], [3]])
    missing = encoder(torch.full((3, 1), float("nan")), categorical)
    zero = encoder(torch.zeros(3, 1), categorical)
    assert torch.isfinite(missing).all()
    assert not torch.allclose(missing, zero)  # the missing indicator tells NaN from 0
    assert not torch.allclose(zero[0], zero[1])  # unknown (0) has its own embedding
    with pytest.raises(IndexError):
        encoder(torch.zeros(1, 1), torch.tensor([[4]]))


def test_tabular_encoder_single_column_kinds_and_errors():
    assert TabularEncoder(3, [], dim=5)(numeric=torch.randn(2, 3)).shape == (2, 5)
    assert TabularEncoder(0, [4, 7], dim=5)(categorical=torch.tensor([[1, 7], [0, 0]])).shape == (2, 5)
    with pytest.raises(ValueError, match="at least one"):
        TabularEncoder(0, [], dim=5)
    with pytest.raises(ValueError, match="categorical"):
        TabularEncoder(1, [2], dim=5)(numeric=torch.randn(2, 1))
    with pytest.raises(ValueError, match="numeric"):
        TabularEncoder(2, [], dim=5)(numeric=torch.randn(2, 3))


def test_tabular_encoder_gradients_reach_every_parameter():
    encoder = TabularEncoder(2, [3, 2], dim=4)
    out = encoder(torch.tensor([[0.5, float("nan")], [1.0, -1.0]]), torch.tensor([[2, 0], [3, 1]]))
    assert_every_parameter_gets_gradient(encoder, (out * torch.randn_like(out)).sum())


# ------------------------------------------------------------------------------------------------ fusion
def test_concat_fusion_zeroes_missing():
    tokens = torch.arange(12.0).reshape(2, 3, 2)
    present = torch.tensor([[1, 0, 1], [0, 0, 0]])
    fusion = ConcatFusion(3, 2)
    assert fusion.out_dim == 6 and fusion.produces_logits is False
    expected = torch.tensor([[0.0, 1.0, 0.0, 0.0, 4.0, 5.0], [0.0] * 6])
    assert torch.equal(fusion(tokens, present), expected)


def test_gated_fusion_by_hand():
    fusion = GatedFusion(3, 2)
    with torch.no_grad():
        for m, proj in enumerate(fusion.projections):  # h_m = tanh(c_m) whatever the input
            proj.weight.zero_()
            proj.bias.fill_([0.5, -1.0, 2.0][m])
        fusion.gate.weight.zero_()
        # scores (M, D): feature 0 prefers modality 1 (ln 3), feature 1 prefers modality 2 (ln 2)
        fusion.gate.bias.copy_(torch.tensor([0.0, 0.0, math.log(3.0), 0.0, 0.0, math.log(2.0)]))
    tokens = torch.randn(2, 3, 2)
    present = torch.tensor([[1, 1, 1], [1, 0, 1]])
    h = torch.tanh(torch.tensor([0.5, -1.0, 2.0]))
    z = torch.tensor(
        [
            [[0.2, 0.25], [0.6, 0.25], [0.2, 0.5]],  # feature 0: 1:3:1; feature 1: 1:1:2
            [[0.5, 1 / 3], [0.0, 0.0], [0.5, 2 / 3]],  # modality 1 missing
        ]
    )
    assert torch.allclose(fusion.gate_weights(tokens, present), z)
    assert torch.allclose(fusion(tokens, present), (z * h[None, :, None]).sum(1))


def test_gated_fusion_matches_explicit_formula():
    fusion = GatedFusion(3, 4)
    tokens = torch.randn(2, 3, 4)
    present = torch.tensor([[1, 0, 1], [1, 1, 1]]).bool()
    x = tokens * present[..., None]
    expected = torch.zeros(2, 4)
    for b in range(2):
        scores = (fusion.gate.weight @ x[b].flatten() + fusion.gate.bias).view(3, 4).detach()
        for d in range(4):
            exp = [math.exp(scores[m, d]) if present[b, m] else 0.0 for m in range(3)]
            for m in range(3):
                h = torch.tanh(fusion.projections[m].weight @ x[b, m] + fusion.projections[m].bias)
                expected[b, d] += exp[m] / sum(exp) * h[d]
    assert torch.allclose(fusion(tokens, present), expected, atol=1e-6)
    weights = fusion.gate_weights(tokens, present)
    assert torch.all(weights[0, 1] == 0) and torch.allclose(weights.sum(1), torch.ones(2, 4))


def test_cross_attention_fusion_matches_manual_computation():
    fusion = CrossAttentionFusion(3, 8, num_heads=2, num_layers=2)
    tokens = torch.randn(2, 3, 8)
    present = torch.tensor([[1, 0, 1], [1, 1, 1]]).bool()
    x = tokens * present[..., None] + fusion.modality_embeddings
    x = torch.cat([fusion.cls_token.expand(2, -1, -1), x], dim=1)
    ignore = torch.cat([torch.zeros(2, 1, dtype=torch.bool), ~present], dim=1)
    expected = manual_encoder(fusion.encoder, x, ignore)[:, 0]
    assert torch.allclose(fusion(tokens, present), expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(fusion.eval()(tokens, present), expected, atol=1e-5)


def test_cross_attention_fusion_missing_equals_dropping_the_modality():
    fusion = CrossAttentionFusion(3, 8, num_heads=2)
    smaller = CrossAttentionFusion(2, 8, num_heads=2)
    state = fusion.state_dict()
    state["modality_embeddings"] = fusion.modality_embeddings[:, [0, 2]]
    smaller.load_state_dict(state)
    tokens = torch.randn(4, 3, 8)
    missing_1 = fusion(tokens, torch.tensor([[1, 0, 1]] * 4))
    assert torch.allclose(missing_1, smaller(tokens[:, [0, 2]], torch.ones(4, 2)), atol=1e-5)


def test_cross_attention_fusion_permutation_behaviour():
    fusion = CrossAttentionFusion(3, 8, num_heads=2)
    with torch.no_grad():
        fusion.modality_embeddings.normal_()
    tokens = torch.randn(2, 3, 8)
    order = [2, 0, 1]
    # Modality-type embeddings tie each slot to its modality ...
    assert not torch.allclose(fusion(tokens), fusion(tokens[:, order]), atol=1e-3)
    with torch.no_grad():
        fusion.modality_embeddings.zero_()
    # ... without them, attention pooled at the CLS token is permutation invariant.
    assert torch.allclose(fusion(tokens), fusion(tokens[:, order]), atol=1e-5)


def test_tensor_fusion_by_hand():
    fusion = TensorFusion(2, 1, out_dim=1, rank=1)
    with torch.no_grad():
        fusion.factors.copy_(torch.tensor([[[[1.0], [2.0]]], [[[0.5], [-1.0]]]]))  # (M, R, D + 1, out)
        fusion.rank_weights.fill_(2.0)
        fusion.bias.fill_(0.5)
    tokens = torch.tensor([[[2.0], [3.0]]])
    # 2 * (1 * 2 + 2) * (0.5 * 3 - 1) + 0.5 = 4.5; without modality 2 only its bias row: 2 * 4 * (-1) + 0.5.
    assert torch.allclose(fusion(tokens, torch.tensor([[1, 1]])), torch.tensor([[4.5]]))
    assert torch.allclose(fusion(tokens, torch.tensor([[1, 0]])), torch.tensor([[-7.5]]))


def test_tensor_fusion_matches_explicit_loops():
    fusion = TensorFusion(3, 2, out_dim=4, rank=3)
    with torch.no_grad():
        fusion.rank_weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
        fusion.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    tokens = torch.randn(2, 3, 2)
    present = torch.tensor([[1, 0, 1], [1, 1, 1]]).bool()
    expected = torch.zeros(2, 4)
    for b in range(2):
        for r in range(3):
            product = torch.ones(4)
            for m in range(3):
                x = tokens[b, m] if present[b, m] else torch.zeros(2)
                product = product * (torch.cat([x, torch.ones(1)]) @ fusion.factors[m, r])
            expected[b] += fusion.rank_weights[r] * product
        expected[b] += fusion.bias
    assert torch.allclose(fusion(tokens, present), expected, atol=1e-5)


def test_late_fusion_by_hand():
    fusion = LateFusion(3, 2, num_outputs=2)
    assert fusion.out_dim == 2 and fusion.produces_logits is True
    with torch.no_grad():
        for m, head in enumerate(fusion.heads):  # head_m(x) = [(m + 1) * (x1 + x2), m]
            head.weight.copy_(torch.tensor([[m + 1.0, m + 1.0], [0.0, 0.0]]))
            head.bias.copy_(torch.tensor([0.0, float(m)]))
    tokens = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.5, 0.5]]] * 3)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 0]])
    # Per head: [2, 0], [4, 1], [3, 2].
    expected = torch.tensor([[3.0, 1.0], [2.5, 1.0], [0.0, 0.0]])
    assert torch.allclose(fusion(tokens, present), expected)


FUSION_KWARGS = {
    "concat": {},
    "late": {"num_outputs": 5},
    "gated": {},
    "cross_attention": {"num_heads": 2},
    "tensor": {"out_dim": 6},
}
OUT_DIMS = {"concat": 24, "late": 5, "gated": 8, "cross_attention": 8, "tensor": 6}


@pytest.mark.parametrize("kind", list(FUSION_KWARGS))
def test_fusion_contract(kind):
    fusion = build_fusion(kind, 3, 8, **FUSION_KWARGS[kind])
    assert fusion.out_dim == OUT_DIMS[kind]
    assert fusion.produces_logits is (kind == "late")
    tokens = torch.randn(4, 3, 8)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0]]).bool()
    out = fusion(tokens, present)
    assert out.shape == (4, OUT_DIMS[kind]) and torch.isfinite(out).all()
    # Missing modalities' values (even NaN placeholders) do not influence the output ...
    nan_missing = torch.where(present[..., None], tokens, torch.full_like(tokens, float("nan")))
    assert torch.allclose(fusion(nan_missing, present), out, atol=1e-5)
    assert torch.allclose(fusion(tokens * 100 - 7, torch.zeros(4, 3))[0], out[3], atol=1e-5)
    # ... present ones do (a random change: pre-norm layers are blind to a constant shift).
    changed = fusion(tokens + torch.randn_like(tokens), present)[:3]
    assert all(not torch.allclose(changed[b], out[b], atol=1e-3) for b in range(3))
    if kind != "concat":
        assert_every_parameter_gets_gradient(fusion, (fusion(nan_missing, present) * torch.randn_like(out)).sum())


def test_build_fusion_errors():
    with pytest.raises(ValueError, match="concat, late, gated, cross_attention, tensor"):
        build_fusion("sum", 2, 8)
    with pytest.raises(ValueError, match="num_outputs"):
        build_fusion("late", 2, 8)
    assert build_fusion("tensor", 2, 8).out_dim == 8


# ------------------------------------------------------------------------------------------------ modality dropout
def test_modality_dropout_rate_and_eval_identity():
    dropout = ModalityDropout(0.3)
    present = torch.ones(20000, 8, dtype=torch.bool)
    dropped = 1 - dropout(present).float().mean().item()
    assert abs(dropped - 0.3) < 0.01
    assert torch.equal(dropout.eval()(present), present)
    assert torch.equal(ModalityDropout(0.0)(present), present)


def test_modality_dropout_keeps_one_modality_uniformly():
    # M = 2, p = 0.5: both dropped with prob 1/4 and then one is kept, so the drop rate is 0.5 - 0.25 / 2.
    out = ModalityDropout(0.5)(torch.ones(40000, 2, dtype=torch.bool))
    assert abs(1 - out.float().mean().item() - 0.375) < 0.01
    assert out.any(dim=1).all()
    # p = 1 keeps exactly one, chosen uniformly among the originally present ones.
    present = torch.tensor([[1, 0, 1, 1]] * 30000).bool()
    out = ModalityDropout(1.0)(present)
    assert torch.equal(out.sum(1), torch.ones(30000, dtype=torch.long))
    assert not (out & ~present).any()
    assert torch.allclose(out.float().mean(0), torch.tensor([1 / 3, 0.0, 1 / 3, 1 / 3]), atol=0.015)


def test_modality_dropout_never_empties_or_adds():
    present = torch.rand(5000, 4) < 0.5
    out = ModalityDropout(0.9)(present)
    assert out.dtype == torch.bool
    assert torch.equal(out.any(dim=1), present.any(dim=1))  # empty rows stay empty, others keep one
    assert not (out & ~present).any()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ModalityDropout(1.5)
