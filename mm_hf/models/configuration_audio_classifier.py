"""Configuration of the audio classifier (any HF speech/audio encoder + temporal pooling + linear head).

Self-contained on purpose: `save_pretrained` copies this file next to the weights so the checkpoint
loads with `trust_remote_code=True` where mm_hf is not installed. Import only torch/transformers here.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

POOLING_MODES = ("mean", "attention")


@strict
class AudioClassifierConfig(PreTrainedConfig):
    r"""
    Config of [`AudioClassifierForAudioClassification`]: an audio encoder whose frame sequence is pooled over
    time and fed to a dropout + linear head.

    Args:
        backbone_config: config (or dict) of the wrapped audio model: wav2vec2 / HuBERT / WavLM, AST, or
            Whisper (only its encoder is kept).
        backbone_name_or_path: Hub id or path the backbone weights came from (recorded for cards/adapters).
        pooling: "mean" (masked mean over the real frames) or "attention" (learned attention pooling).
        head_dropout: dropout on the pooled vector before the linear head.
        calibration_temperature: post-hoc temperature scaling (Guo et al. 2017): in eval mode the logits are
            divided by it, so softmax probabilities (e.g. `pipeline()` scores) are calibrated; training never sees
            it. 1.0 leaves the logits as they are; `python -m mm_hf.evaluate --save_temperature` writes a fitted one.
    """

    model_type = "mm_hf_audio_classifier"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="wav2vec2")}

    backbone_config: PreTrainedConfig | dict | None = None
    backbone_name_or_path: str | None = None
    pooling: str = "mean"
    head_dropout: float = 0.1
    calibration_temperature: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.calibration_temperature > 0:
            raise ValueError(f"calibration_temperature must be > 0, got {self.calibration_temperature}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")


__all__ = ["AudioClassifierConfig"]
