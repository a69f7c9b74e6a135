"""Loading any mm-hf output folder: a full checkpoint, or a LoRA adapter applied to its rebuilt base model."""

import json
import os

from transformers import AutoConfig

from .audio_classifier import build_audio_classifier, shorten_whisper_encoder
from .clip_classifier import build_dual_encoder_classifier
from .configuration_audio_classifier import AudioClassifierConfig
from .configuration_clip_classifier import ClapClassifierConfig, ClipClassifierConfig
from .modeling_audio_classifier import AudioClassifierForAudioClassification
from .modeling_clip_classifier import ClapClassifierForAudioClassification, ClipClassifierForImageClassification


def _rebuild_dual_encoder_classifier(base, config, **kw):
    return build_dual_encoder_classifier(
        base,
        config.id2label,
        head_init="random",
        head_dropout=config.head_dropout,
        learn_logit_scale=config.learn_logit_scale,
        **kw,
    )


def _rebuild_audio_classifier(base, config, **kw):
    model = build_audio_classifier(
        base, config.id2label, pooling=config.pooling, head_dropout=config.head_dropout, **kw
    )
    # A Whisper trained on a short window (fit_whisper_window) gets that window back: the saved extractor pads to it.
    recorded = getattr(config.backbone_config, "max_source_positions", None)
    positions = getattr(model.backbone, "embed_positions", None)
    if recorded and positions is not None and recorded < positions.num_embeddings:
        shorten_whisper_encoder(model.backbone, model.config.backbone_config, recorded)
    return model


# model_type -> (model class, rebuild of the base classifier around a pretrained backbone). The head is
# restored from the adapter (modules_to_save), so the rebuild needs no zero-shot pass or trained head.
_FINETUNED = {
    ClipClassifierConfig.model_type: (ClipClassifierForImageClassification, _rebuild_dual_encoder_classifier),
    ClapClassifierConfig.model_type: (ClapClassifierForAudioClassification, _rebuild_dual_encoder_classifier),
    AudioClassifierConfig.model_type: (AudioClassifierForAudioClassification, _rebuild_audio_classifier),
}  # fmt: skip


def load_finetuned(path: str, base_model_name_or_path: str | None = None, **from_pretrained_kwargs):
    """The model of a recipe output folder (a `peft.PeftModel` for an unmerged LoRA run).

    For an adapter the base comes from `base_model_name_or_path`, else from adapter_config.json, else from
    the config's `backbone_name_or_path`.
    """
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in _FINETUNED:
        raise ValueError(f"{path}: no mm-hf loader for model_type {config.model_type!r}")
    model_class, rebuild = _FINETUNED[config.model_type]
    adapter_config = os.path.join(path, "adapter_config.json")
    if not os.path.exists(adapter_config):
        return model_class.from_pretrained(path, **from_pretrained_kwargs)
    from peft import PeftModel

    with open(adapter_config) as f:
        base = base_model_name_or_path or json.load(f)["base_model_name_or_path"] or config.backbone_name_or_path
    model = rebuild(base, config, **from_pretrained_kwargs)
    # The rebuild makes a fresh config: keep the run's post-hoc temperature (evaluate --save_temperature).
    model.config.calibration_temperature = config.calibration_temperature
    return PeftModel.from_pretrained(model, path)
