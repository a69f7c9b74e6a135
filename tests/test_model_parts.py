"""Each model family states its parts once (`parts()`, mm_hf/models/towers.py) and `apply_strategy` reads them:
the declarations written out by hand per family, the same architecture treated alike in every family, frozen
towers kept in eval mode, and the retrieval metric's media naming."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModel, PreTrainedModel, WhisperConfig, WhisperModel

import mm_hf.models as models
from mm_hf.errors import UserError
from mm_hf.metrics import load_metric
from mm_hf.models import (
    ContrastiveDualEncoderModel,
    build_audio_classifier,
    build_dual_encoder_classifier,
    build_fusion_classifier,
)
from mm_hf.models.tiny import build_tiny_encoders
from mm_hf.models.towers import linear_leaves
from mm_hf.training import apply_strategy

ID2LABEL = {0: "a", 1: "b"}
TASK = [{"name": "label", "problem_type": "single_label_classification", "labels": ["no", "yes"]}]
CLIP_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def args(strategy, **overrides):
    values = dict(finetune_strategy=strategy, unfreeze_last_n_layers=1, lora_r=2, lora_alpha=4, lora_dropout=0.0,
                  lora_target_modules=None)  # fmt: skip
    return SimpleNamespace(**{**values, **overrides})


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return build_tiny_encoders(str(tmp_path_factory.mktemp("encoders")))


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    path = tmp_path_factory.mktemp("whisper")
    config = WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=50, max_target_positions=16,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    WhisperModel(config).save_pretrained(path)
    return str(path)


def build(case, request):
    """The model of a case name: family/backbone."""
    family, backbone = case.split("/")
    if family == "fusion":
        paths = request.getfixturevalue("encoders")
        if backbone == "vit+bert":
            return build_fusion_classifier({"image": paths["vision"], "text": paths["text"]}, TASK, hidden_size=16)
        audio = request.getfixturevalue(backbone.split("+")[1])
        return build_fusion_classifier({"image": paths["vision"], "audio": audio}, TASK, hidden_size=16)
    path = request.getfixturevalue(backbone)
    if family == "classifier":
        return build_dual_encoder_classifier(path, ID2LABEL, head_init="random")
    if family == "audio":
        return build_audio_classifier(path, ID2LABEL, head_dropout=0.0)  # only the tower may add noise
    return ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(path), loss=family.split("-")[1])


# What each family declares, written out by hand (tower: path, layers, projection, default LoRA targets).
DECLARED = {
    "classifier/tiny_clip": ("classifier", ("classifier",), "save", {
        "media": ("backbone.vision_model", "encoder.layers", "backbone.visual_projection", CLIP_ATTENTION)}),
    "classifier/tiny_siglip": ("classifier", ("classifier",), "save", {
        "media": ("backbone.vision_model", "encoder.layers", None, CLIP_ATTENTION)}),
    "classifier/tiny_vtde": ("classifier", ("classifier",), "save", {
        "media": ("backbone.vision_model", "layers", "backbone.visual_projection", ("q_proj", "k_proj", "v_proj", "o_proj"))}),
    "classifier/tiny_clap": ("classifier", ("classifier",), "save", {
        "media": ("backbone.audio_model", "audio_encoder.layers", "backbone.audio_projection", ("query", "key", "value"))}),
    "audio/tiny_wav2vec2": ("classifier", ("pooler", "classifier"), "save", {
        "media": ("backbone", "encoder.layers", None, ("q_proj", "k_proj", "v_proj", "out_proj"))}),
    "audio/tiny_whisper": ("classifier", ("pooler", "classifier"), "save", {
        "media": ("backbone", "layers", None, ("q_proj", "k_proj", "v_proj", "out_proj"))}),
    "contrastive-clip/tiny_clap": ("contrastive", ("backbone.logit_scale_a", "backbone.logit_scale_t"), "freeze", {
        "media": ("backbone.audio_model", "audio_encoder.layers", "backbone.audio_projection", ("query", "key", "value")),
        "text": ("backbone.text_model", "encoder.layer", "backbone.text_projection", ("query", "key", "value"))}),
    "contrastive-siglip/tiny_clip": ("contrastive", ("logit_bias", "backbone.logit_scale"), "freeze", {
        "media": ("backbone.vision_model", "encoder.layers", "backbone.visual_projection", CLIP_ATTENTION),
        "text": ("backbone.text_model", "encoder.layers", "backbone.text_projection", CLIP_ATTENTION)}),
    "fusion/vit+bert": ("fusion", ("heads", "multimodal.poolers", "multimodal.projections", "multimodal.standardizers",
                                   "multimodal.modality_dropout", "multimodal.missing_tokens"), "train", {
        "vision": ("multimodal.encoders.vision", "layers", None, ("q_proj", "k_proj", "v_proj", "o_proj")),
        "text": ("multimodal.encoders.text", "encoder.layer", None, ("query", "key", "value"))}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DECLARED))
def test_each_family_declares_its_parts(case, request):
    model = build(case, request)
    parts = model.parts()
    kind, head, head_with_lora, towers = DECLARED[case]
    assert (parts.kind, parts.head_with_lora) == (kind, head_with_lora)
    assert set(head) <= set(parts.head)
    declared = {k: (t.path, t.layers, t.projection, t.lora_targets) for k, t in parts.towers.items()}
    assert declared == towers
    # Every declared name is a real part of the model: head modules or parameters, towers, layer lists.
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    assert all(name in modules or name in params for name in parts.head), parts.head
    for tower in parts.towers.values():
        layers = model.get_submodule(f"{tower.path}.{tower.layers}")
        assert isinstance(layers, torch.nn.ModuleList) and len(layers) == 2
        assert set(tower.lora_targets) <= set(linear_leaves(layers))
        assert tower.projection is None or tower.projection in modules
        assert not any(name.startswith(f"{tower.path}.") for name in parts.head)


def test_every_registered_model_class_declares_its_parts():
    classes = [getattr(models, name) for name in models.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, PreTrainedModel)]
    assert len(classes) >= 6
    assert [c.__name__ for c in classes if not callable(getattr(c, "parts", None))] == []


def test_fixed_parameters_are_declared_and_never_trained(tiny_clip, tiny_whisper):
    model = build_dual_encoder_classifier(tiny_clip, ID2LABEL, head_init="random", learn_logit_scale=False)
    assert model.parts().fixed == ("classifier.logit_scale",)
    audio = build_audio_classifier(tiny_whisper, ID2LABEL)
    assert audio.parts().towers["media"].fixed == ("embed_positions",)
    assert not apply_strategy(audio, args("full")).backbone.embed_positions.weight.requires_grad


def relative_trainable(model, tower_path):
    prefix = f"{tower_path}."
    return {n.removeprefix(prefix) for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix)}


@pytest.mark.parametrize("strategy", ["top_k", "full"])
@pytest.mark.parametrize("audio", ["tiny_wav2vec2", "tiny_whisper"])
def test_an_audio_encoder_trains_alike_in_a_classifier_and_in_a_fusion_model(audio, strategy, request):
    """The stems (wav2vec2's conv encoder and, without stable layer norm, its pre-layer `layer_norm`) and Whisper's
    fixed positions are declared once, so both families train the same parameters of the same encoder."""
    classifier = apply_strategy(build(f"audio/{audio}", request), args(strategy))
    fusion = apply_strategy(build(f"fusion/vit+{audio}", request), args(strategy))
    in_classifier = relative_trainable(classifier, "backbone")
    assert in_classifier == relative_trainable(fusion, "multimodal.encoders.audio")
    assert not any(n.startswith("embed_positions") for n in in_classifier)
    if strategy == "top_k":
        assert in_classifier and not any(n.startswith(("layers.0.", "encoder.layers.0.")) for n in in_classifier)
        if audio == "tiny_wav2vec2":
            assert "layer_norm" in classifier.parts().towers["media"].stems
            assert not any(n.startswith(("feature_extractor.", "encoder.layer_norm.")) for n in in_classifier)


@pytest.mark.parametrize(
    ("case", "strategy", "frozen"),
    [
        ("audio/tiny_wav2vec2", "linear_probe", "backbone"),
        ("classifier/tiny_clap", "linear_probe", "backbone.audio_model"),
        ("contrastive-clip/tiny_clip", "lock_image", "backbone.vision_model"),
        ("fusion/vit+bert", "linear_probe", "multimodal.encoders.text"),
    ],
)
def test_a_frozen_tower_runs_in_eval_mode_while_the_model_trains(case, strategy, frozen, request):
    model = apply_strategy(build(case, request), args(strategy)).train()
    tower = model.get_submodule(frozen)
    seen = []
    handle = tower.register_forward_pre_hook(lambda module, _: seen.append(module.training))
    if case.startswith("audio"):
        # wav2vec2's dropout, LayerDrop and SpecAugment would make two passes differ in train mode.
        inputs = {"input_values": torch.randn(2, 4000)}
        first, second = model(**inputs).logits, model(**inputs).logits
        torch.testing.assert_close(first, second)
    else:
        model(**dummy_batch(model, case))
    handle.remove()
    assert seen and not any(seen) and not any(m.training for m in tower.modules())


def dummy_batch(model, case):
    if case.startswith("fusion"):
        return {"pixel_values": torch.randn(2, 3, 32, 32), "input_ids": torch.randint(5, 20, (2, 8)),
                "attention_mask": torch.ones(2, 8, dtype=torch.long)}  # fmt: skip
    if case.startswith("classifier"):
        return {"input_features": torch.randn(2, 1, 101, 32)}
    return {"pixel_values": torch.randn(2, 3, 30, 30), "input_ids": torch.randint(2, 40, (2, 6))}


def test_the_sigmoid_loss_bias_trains_with_the_towers_and_freezes_under_lora(tiny_clip):
    def fresh():
        return ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(tiny_clip), loss="siglip")

    for strategy in ("full", "lock_image", "lock_text"):
        model = apply_strategy(fresh(), args(strategy))
        assert model.logit_bias.requires_grad, strategy
    model = apply_strategy(fresh(), args("full"))
    model(pixel_values=torch.randn(4, 3, 30, 30), input_ids=torch.randint(2, 40, (4, 6))).loss.backward()
    assert model.logit_bias.grad is not None and model.logit_bias.grad.abs() > 0
    lora = apply_strategy(fresh(), args("lora"))
    assert not lora.base_model.model.logit_bias.requires_grad


def test_strategy_of_another_kind_is_refused_with_the_kinds_list(tiny_clip, encoders):
    with pytest.raises(UserError, match="for a dual encoder, got 'linear_probe'"):
        apply_strategy(
            ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(tiny_clip)), args("linear_probe")
        )
    fusion = build_fusion_classifier({"image": encoders["vision"], "text": encoders["text"]}, TASK, hidden_size=16)
    with pytest.raises(UserError, match="--text_strategy lock_text: encoder strategies must be among frozen, top_k"):
        apply_strategy(fusion, args("full"), {"text": "lock_text"})


def test_retrieval_metric_takes_media_embeds():
    items, texts = torch.eye(3).numpy(), (torch.eye(3) + 0.1).numpy()
    retrieval = load_metric("retrieval")
    media = retrieval.compute(predictions=texts, references=[0, 1, 2], media_embeds=items, modality="audio")
    former = retrieval.compute(predictions=texts, references=[0, 1, 2], image_embeds=items, modality="audio")
    assert media == former and media["audio_to_text_recall@1"] == 1.0
    with pytest.raises(ValueError, match="dimension 3 but media_embeds has 2"):
        retrieval.compute(predictions=texts, references=[0, 1, 2], media_embeds=items[:, :2])
    with pytest.raises(ValueError, match="pass the item embeddings once"):
        retrieval.compute(predictions=texts, references=[0, 1, 2], media_embeds=items, image_embeds=items)
