"""Contrastive training wrapper around any dual encoder, with negatives gathered across processes.

The trained artifact is the wrapped dual encoder itself (`model.backbone.save_pretrained`), which loads
with plain `AutoModel` and feeds the classification recipes; this wrapper adds the loss and the switches
for training. Image–text backbones (CLIP, SigLIP, VisionTextDualEncoder) take `pixel_values`; audio–text
ones (CLAP) take `input_features` (+ `is_longer`) and learn one temperature per direction.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_dual_encoder import ContrastiveDualEncoderConfig
from .losses import clip_loss, siglip_loss
from .towers import NO_SPLIT_MODULES, ModelParts, dual_encoder_tower


@dataclass
class ContrastiveOutput(ModelOutput):
    """loss (scalar, when both modalities are given), image_embeds or audio_embeds (batch, dim), text_embeds
    (batch, dim)."""

    loss: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    audio_embeds: torch.Tensor | None = None


class ContrastiveDualEncoderModel(PreTrainedModel):
    config_class = ContrastiveDualEncoderConfig
    base_model_prefix = "dual_encoder"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False  # the loss is a plain mean: Trainer must not rescale it
    _supports_sdpa = True
    _no_split_modules = NO_SPLIT_MODULES  # the towers' blocks, for FSDP auto-wrap (towers.no_split_modules)

    def __init__(self, config: ContrastiveDualEncoderConfig):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config)
        if hasattr(self.backbone, "get_audio_features"):
            self.main_input_name, self.input_modalities = "input_features", ("audio", "text")
            if config.loss == "siglip":
                raise ValueError("the sigmoid loss has one temperature, CLAP learns one per direction: use loss='clip'")
        if config.loss == "siglip" and not hasattr(self.backbone, "logit_bias"):
            self.logit_bias = nn.Parameter(torch.tensor(config.logit_bias_init_value))
        self.post_init()

    @classmethod
    def from_backbone(cls, backbone, loss: str = "clip", gather_negatives: bool = True, name_or_path=None):
        """Wrap an already loaded dual encoder (its weights are kept as they are)."""
        config = ContrastiveDualEncoderConfig(
            backbone_config=backbone.config.to_dict(),
            backbone_name_or_path=name_or_path,
            loss=loss,
            gather_negatives=gather_negatives,
        )
        model = cls(config)
        model.backbone = backbone
        return model

    def parts(self) -> ModelParts:
        """What contrastive fine-tuning acts on: the media (image, or CLAP's audio) and text towers with their
        projections; the rest (temperatures, the sigmoid loss's bias) is the head, frozen under LoRA."""
        media = "audio" if hasattr(self.backbone, "get_audio_features") else "image"
        towers = {"media": dual_encoder_tower(self, media), "text": dual_encoder_tower(self, "text")}
        inside = [name for tower in towers.values() for name in (tower.path, tower.projection) if name]
        head = tuple(n for n, _ in self.named_parameters() if not any(n.startswith(p + ".") for p in inside))
        return ModelParts(kind="contrastive", head=head, towers=towers, head_with_lora="freeze")

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.backbone.get_image_features(pixel_values=pixel_values)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.backbone.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_audio_features(self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        out = self.backbone.get_audio_features(input_features=input_features, is_longer=is_longer)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def forward(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        input_features=None,
        is_longer=None,
        return_loss=True,
        **kwargs,
    ):
        image_embeds = self.get_image_features(pixel_values) if pixel_values is not None else None
        audio_embeds = self.get_audio_features(input_features, is_longer) if input_features is not None else None
        media_embeds = audio_embeds if audio_embeds is not None else image_embeds
        text_embeds = self.get_text_features(input_ids, attention_mask) if input_ids is not None else None
        loss = None
        if return_loss and media_embeds is not None and text_embeds is not None:
            # Gathering needs equal per-process batches, which training guarantees (drop_last) but the last
            # evaluation batch does not; evaluation losses are therefore per device.
            gather = self.config.gather_negatives and self.training
            if self.config.loss == "clip":
                # CLAP scales audio->text logits by logit_scale_a and text->audio ones by logit_scale_t.
                scale, text_scale = self.logit_scales()
                loss = clip_loss(media_embeds, text_embeds, scale, gather=gather, text_logit_scale=text_scale)
            else:
                bias = getattr(self.backbone, "logit_bias", None)
                loss = siglip_loss(
                    media_embeds,
                    text_embeds,
                    self.backbone.logit_scale,
                    bias if bias is not None else self.logit_bias,
                    gather=gather,
                )
        return ContrastiveOutput(
            loss=loss, image_embeds=image_embeds, text_embeds=text_embeds, audio_embeds=audio_embeds
        )

    def logit_scales(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(media->text, text->media) log-temperatures: CLAP learns one per direction, the others share one."""
        if hasattr(self.backbone, "logit_scale_a"):
            return self.backbone.logit_scale_a, self.backbone.logit_scale_t
        return self.backbone.logit_scale, self.backbone.logit_scale


__all__ = ["ContrastiveDualEncoderModel", "ContrastiveOutput"]
