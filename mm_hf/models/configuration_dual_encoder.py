"""Configuration of the contrastive dual-encoder wrapper (training-time model of clip_retrieval)."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class ContrastiveDualEncoderConfig(PreTrainedConfig):
    r"""
    Config of [`ContrastiveDualEncoderModel`].

    Args:
        backbone_config: config (or dict) of the wrapped dual encoder (`CLIPModel`, `SiglipModel`,
            `VisionTextDualEncoderModel`, ...: anything with `get_image_features`/`get_text_features` and a
            `logit_scale` parameter; or `ClapModel`: `get_audio_features` and `logit_scale_a`/`logit_scale_t`).
        backbone_name_or_path: where the backbone weights came from.
        loss: "clip" (symmetric InfoNCE, learnable temperature) or "siglip" (pairwise sigmoid; not for CLAP).
        gather_negatives: in distributed training, compute the loss over the global batch (negatives from
            every process, gathered with gradients) rather than per device.
        logit_bias_init_value: initial sigmoid bias for the SigLIP loss when the backbone has none.
    """

    model_type = "mm_hf_dual_encoder"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="clip")}

    backbone_config: PreTrainedConfig | dict | None = None
    backbone_name_or_path: str | None = None
    loss: str = "clip"
    gather_negatives: bool = True
    logit_bias_init_value: float = -10.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.loss not in ("clip", "siglip"):
            raise ValueError(f"loss must be 'clip' or 'siglip', got {self.loss!r}")


__all__ = ["ContrastiveDualEncoderConfig"]
