"""Building the audio classifier from a pretrained audio model (wav2vec2 / HuBERT / WavLM, AST, Whisper)."""

import torch
from transformers import AutoModel

from .configuration_audio_classifier import AudioClassifierConfig
from .modeling_audio_classifier import AudioClassifierForAudioClassification, encoder_only


def build_audio_classifier(
    model_name_or_path,
    id2label: dict[int, str],
    *,
    pooling: str = "mean",
    head_dropout: float = 0.1,
    **from_pretrained_kwargs,
) -> AudioClassifierForAudioClassification:
    """Wrap a pretrained audio model's encoder into a classifier over `id2label` with a fresh head.

    Whisper checkpoints keep only their encoder. An already loaded model (nn.Module) is wrapped as it is.
    """
    loaded = isinstance(model_name_or_path, torch.nn.Module)
    model_or_encoder = (
        model_name_or_path if loaded else AutoModel.from_pretrained(model_name_or_path, **from_pretrained_kwargs)
    )
    if loaded:
        model_name_or_path = model_or_encoder.name_or_path
    # The config of the whole model (e.g. WhisperConfig), so the classifier rebuilds the same encoder.
    backbone_config = model_or_encoder.config
    backbone = encoder_only(model_or_encoder)
    id2label = {int(k): str(v) for k, v in id2label.items()}
    config = AudioClassifierConfig(
        backbone_config=backbone_config.to_dict(),
        backbone_name_or_path=model_name_or_path,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        pooling=pooling,
        head_dropout=head_dropout,
    )
    model = AudioClassifierForAudioClassification(config)
    # Swap the randomly initialised backbone for the pretrained one instead of copying weights twice.
    model.backbone = backbone.to(model.classifier[1].weight.dtype)
    model.name_or_path = model_name_or_path  # recorded as base_model_name_or_path by peft adapters
    return model
