"""Configuration of the CLIP-family image classifier.

Self-contained on purpose: `save_pretrained` copies this file next to the weights so the checkpoint
loads with `trust_remote_code=True` where mm_hf is not installed. Import only torch/transformers here.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class ClipClassifierConfig(PreTrainedConfig):
    r"""
    Config of [`ClipClassifierForImageClassification`]: a dual image–text encoder whose image tower feeds a
    cosine-similarity head (one row per class, initialisable from class-prompt text embeddings).

    Args:
        backbone_config: config (or dict) of the wrapped dual encoder, any model exposing
            `get_image_features`/`get_text_features` (`CLIPModel`, `SiglipModel`, `VisionTextDualEncoderModel`).
        backbone_name_or_path: Hub id or path the backbone weights came from (recorded for cards/adapters).
        embed_dim: size of the image embedding the head reads; derived from the backbone when None.
        head_dropout: dropout on the normalised image embedding before the head.
        logit_scale_init_value: log of the temperature multiplying cosine similarities of a random head (a
            zero-shot head takes the backbone's own). ln(1/0.07), CLIP's value at the start of its training: at
            CLIP's trained ln 100 a random head learns slower (random-init small CLIP on 28 px digits, 12 epochs:
            0.26 vs 0.34 test accuracy; a plain linear head: 0.32).
        learn_logit_scale: whether the temperature is trained.
        text_tower: whether the backbone keeps its text tower. The classifier never runs it (the head holds the
            class-prompt embeddings it gave), so `build_dual_encoder_classifier` leaves it out (False): 63M of CLIP
            ViT-B/32's 151M parameters, 250 MB of weights in every run and checkpoint. True for checkpoints saved
            before this field, which hold it.
        calibration_temperature: post-hoc temperature scaling (Guo et al. 2017): in eval mode the logits are
            divided by it, so softmax probabilities (e.g. `pipeline()` scores) are calibrated; training never sees
            it. 1.0 leaves the logits as they are; `python -m mm_hf.evaluate --save_temperature` writes a fitted one.
    """

    model_type = "mm_hf_clip_classifier"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="clip")}

    backbone_config: PreTrainedConfig | dict | None = None
    backbone_name_or_path: str | None = None
    embed_dim: int | None = None
    head_dropout: float = 0.0
    logit_scale_init_value: float = 2.6592600369327779  # ln(1 / 0.07)
    learn_logit_scale: bool = True
    text_tower: bool = True
    calibration_temperature: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.calibration_temperature > 0:
            raise ValueError(f"calibration_temperature must be > 0, got {self.calibration_temperature}")
        if self.embed_dim is None:
            self.embed_dim = _image_embed_dim(self.backbone_config)


@strict
class ClapClassifierConfig(ClipClassifierConfig):
    r"""
    Config of [`ClapClassifierForAudioClassification`]: a CLAP audio–text model whose audio tower feeds the
    same cosine head, initialisable from class-prompt text embeddings (zero-shot audio classification).
    Arguments as for [`ClipClassifierConfig`]; `backbone_config` is a `ClapConfig`.
    """

    model_type = "mm_hf_clap_classifier"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="clap")}


def _image_embed_dim(backbone_config) -> int:
    # CLIP / VisionTextDualEncoder / CLAP project to `projection_dim`; SigLIP's pooled output is the vision width.
    projection_dim = getattr(backbone_config, "projection_dim", None)
    if projection_dim:
        return projection_dim
    return backbone_config.vision_config.hidden_size


__all__ = ["ClapClassifierConfig", "ClipClassifierConfig"]
