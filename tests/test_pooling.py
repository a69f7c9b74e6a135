"""The one pooling implementation (mm_hf/models/pooling.py): the audio classifier and the fusion model both pool
with it, a fully masked row pools to zeros whatever its padding holds, checkpoints keep their weight names, and
`save_pretrained` ships pooling.py with the remote code. The blocks' values by hand: tests/test_fusion_modules.py."""

import ast
import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, Wav2Vec2Config

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.models import (
    AudioClassifierConfig,
    AudioClassifierForAudioClassification,
    MultimodalFusionConfig,
    MultimodalFusionForClassification,
    pooling,
)

PACKAGE = Path(__file__).resolve().parent.parent / "mm_hf"
WAV2VEC2 = Wav2Vec2Config(
    hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, conv_dim=(8, 8),
    conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2, num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2, vocab_size=8,
)  # fmt: skip
BERT = BertConfig(
    vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
    max_position_embeddings=16,
)  # fmt: skip
TASKS = [{"name": "label", "problem_type": "single_label_classification", "labels": ["no", "yes"], "loss_weight": 1.0}]


def audio_classifier(pooling_kind: str) -> AudioClassifierForAudioClassification:
    torch.manual_seed(0)
    config = AudioClassifierConfig(backbone_config=WAV2VEC2, pooling=pooling_kind, id2label={0: "a", 1: "b"})
    return AudioClassifierForAudioClassification(config).eval()


def fusion_classifier(text_pooling: str = "attention") -> MultimodalFusionForClassification:
    torch.manual_seed(0)
    config = MultimodalFusionConfig(
        modalities=["text"], text_config=BERT.to_dict(), text_pooling=text_pooling, tasks=TASKS, hidden_size=16
    )
    return MultimodalFusionForClassification(config).eval()


def test_pooling_classes_are_defined_only_in_pooling_py():
    # SequencePooling is the fusion model's adapter from an encoder output to build_pooling's blocks, not a pooling.
    elsewhere = [
        f"{path.relative_to(PACKAGE)}: {node.name}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "pooling.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Pooling") and node.name != "SequencePooling"
    ]
    assert not elsewhere, f"pooling blocks outside mm_hf/models/pooling.py: {elsewhere}"


@pytest.mark.parametrize("kind", ["mean", "attention"])
def test_audio_and_fusion_models_pool_with_the_same_blocks(kind):
    audio = audio_classifier(kind).pooler
    fused = fusion_classifier(kind).multimodal.poolers["text"].pool
    assert type(audio) is type(fused) is {"mean": pooling.MeanPooling, "attention": pooling.AttentionPooling}[kind]


@pytest.mark.parametrize("kind", ["mean", "attention"])
def test_audio_pooler_fully_masked_row_is_zeros_even_with_nan_padding(kind):
    """Before the shared implementation the audio pooler multiplied padding by 0, so NaN padding gave NaN."""
    pool = audio_classifier(kind).pooler
    if kind == "attention":
        torch.nn.init.normal_(pool.score.weight)  # the model starts it at zero, i.e. a plain mean
    real = torch.randn(2, 3, 16)
    hidden = torch.cat([real, torch.full((2, 2, 16), float("nan"))], dim=1).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    out = pool(hidden, mask)
    torch.testing.assert_close(out[0], pool(real[:1])[0])
    assert torch.equal(out[1], torch.zeros(16))
    out.sum().backward()
    assert torch.isfinite(hidden.grad).all()


def test_checkpoints_keep_their_pooling_weight_names():
    """Existing checkpoints load only if the shared blocks keep the names the model-specific ones had."""
    audio_keys = {k for k in audio_classifier("attention").state_dict() if "pool" in k}
    assert audio_keys == {"pooler.score.weight", "pooler.score.bias"}
    fusion_keys = {k for k in fusion_classifier("attention").state_dict() if "pool" in k}
    assert fusion_keys == {"multimodal.poolers.text.pool.score.weight", "multimodal.poolers.text.pool.score.bias"}


def test_save_pretrained_ships_pooling_py_with_the_remote_code(tmp_path):
    for name, model in (("audio", audio_classifier("attention")), ("fusion", fusion_classifier())):
        model.save_pretrained(tmp_path / name)
        shipped = (tmp_path / name / "pooling.py").read_text()
        assert shipped == (PACKAGE / "models" / "pooling.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(shipped)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or "").split(".")[0])
    assert imported == {"__future__", "torch"}, imported  # loads where mm_hf is not installed
    assert {"configuration_multimodal_fusion.py", "modeling_multimodal_fusion.py", "fusion_modules.py"} <= set(
        os.listdir(tmp_path / "fusion")
    )
