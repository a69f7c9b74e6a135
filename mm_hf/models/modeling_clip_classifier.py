"""CLIP-family classifiers: a dual encoder's image (CLIP/SigLIP/VTDE) or audio (CLAP) tower + a cosine head
initialisable zero-shot.

Self-contained on purpose (only torch/transformers imports plus the sibling configuration and losses files) so
`save_pretrained` can ship it with the checkpoint for `trust_remote_code=True` loading without mm_hf.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput

from .configuration_clip_classifier import ClapClassifierConfig, ClipClassifierConfig
from .losses import MAX_LOGIT_SCALE  # CLIP's cap on its temperature (100): the head keeps the loss's cap
from .towers import NO_SPLIT_MODULES, ModelParts, drop_tower, dual_encoder_tower


class CosineClassifierHead(nn.Module):
    """`logits = exp(logit_scale) * dropout(normalize(x)) @ weight.T + bias`.

    This is exactly CLIP's zero-shot classifier when `weight` holds the normalised class-prompt text
    embeddings, so fine-tuning starts from the zero-shot model instead of from chance.

    Shapes: x (batch, embed_dim) -> logits (batch, num_labels).
    """

    def __init__(self, embed_dim: int, num_labels: int, dropout: float, logit_scale: float, learn_logit_scale: bool):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.weight = nn.Parameter(torch.empty(num_labels, embed_dim))
        self.bias = nn.Parameter(torch.zeros(num_labels))
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)), requires_grad=learn_logit_scale)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.normalize(image_embeds, dim=-1))
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        return scale * F.linear(x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)

    @torch.no_grad()
    def init_from_text_embeddings(self, text_embeds: torch.Tensor, logit_scale: float | None = None) -> None:
        """Set the class rows to normalised text embeddings (num_labels, embed_dim)."""
        self.weight.copy_(F.normalize(text_embeds.float(), dim=-1).to(self.weight.dtype))
        self.bias.zero_()
        if logit_scale is not None:
            self.logit_scale.fill_(min(float(logit_scale), MAX_LOGIT_SCALE))


class ClipClassifierPreTrainedModel(PreTrainedModel):
    config_class = ClipClassifierConfig
    base_model_prefix = "clip_classifier"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # forward(**kwargs) would make Trainer believe the loss is already normalised by the number of items in
    # the global batch; it is a per-batch mean, so Trainer must average it itself (else the loss and gradients
    # get multiplied by the world size and the gradient accumulation steps).
    accepts_loss_kwargs = False
    _supports_sdpa = True
    _no_split_modules = NO_SPLIT_MODULES  # the towers' blocks, for FSDP auto-wrap (towers.no_split_modules)
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CosineClassifierHead):
            # Random rows of unit norm: the same scale as the zero-shot initialisation.
            nn.init.normal_(module.weight, std=module.weight.shape[1] ** -0.5)
            nn.init.zeros_(module.bias)
            module.logit_scale.fill_(self.config.logit_scale_init_value)


class _DualEncoderClassifier(ClipClassifierPreTrainedModel):
    """A dual encoder plus the cosine head; subclasses say which tower feeds the head (`media_modality`).

    The text tower never runs in `forward`: it is left out when `config.text_tower` is False (what
    `build_dual_encoder_classifier` builds once the zero-shot head is computed).
    """

    media_modality = "image"

    def __init__(self, config: ClipClassifierConfig):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config)
        if not config.text_tower:
            drop_tower(self.backbone, "text")
        self.classifier = CosineClassifierHead(
            config.embed_dim,
            config.num_labels,
            config.head_dropout,
            config.logit_scale_init_value,
            config.learn_logit_scale,
        )
        self.post_init()

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        # transformers v5 renames some backbones' weights when saving (e.g. ViT back to its v4 names), but
        # Trainer reloads checkpoints with a plain `load_state_dict` (load_best_model_at_end, resume), which
        # would then silently miss every renamed weight. Saving the live names keeps both paths exact.
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    def parts(self) -> ModelParts:
        """What fine-tuning acts on: the new head and the media tower with its projection. A text tower kept by an
        older checkpoint is no part: it does not run, so training it would waste optimizer memory and make DDP fail
        on unused parameters."""
        return ModelParts(
            kind="classifier",
            head=("classifier",),
            towers={"media": dual_encoder_tower(self, self.media_modality)},
            fixed=() if self.config.learn_logit_scale else ("classifier.logit_scale",),
        )

    def _classify(self, embeds: torch.Tensor, labels: torch.Tensor | None):
        logits = self.classifier(embeds)
        if not self.training and self.config.calibration_temperature != 1.0:  # post-hoc calibration (see config)
            logits = logits / self.config.calibration_temperature
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        return loss, logits


class ClipClassifierForImageClassification(_DualEncoderClassifier):
    """Image classifier on top of any dual encoder exposing `get_image_features` (CLIP, SigLIP, VTDE).

    Pass `image_embeds` instead of `pixel_values` to train or evaluate the head on precomputed features
    (linear probing without re-running the frozen backbone).
    """

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) -> (batch, embed_dim) un-normalised image embeddings."""
        out = self.backbone.get_image_features(pixel_values=pixel_values)
        # transformers v5 returns a ModelOutput whose pooler_output is the projected embedding.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("Pass either `pixel_values` or precomputed `image_embeds`.")
            image_embeds = self.get_image_features(pixel_values)
        loss, logits = self._classify(image_embeds, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


class ClapClassifierForAudioClassification(_DualEncoderClassifier):
    """Audio classifier on top of a CLAP audio–text model: its audio tower + the cosine head.

    With the head set to class-prompt text embeddings this is CLAP's zero-shot classifier. Pass
    `audio_embeds` instead of `input_features` to work on precomputed features.
    """

    config_class = ClapClassifierConfig
    media_modality = "audio"
    main_input_name = "input_features"
    input_modalities = ("audio",)

    def get_audio_features(self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, channels, frames, mel bins) log-mel features -> (batch, embed_dim) un-normalised embeddings."""
        out = self.backbone.get_audio_features(input_features=input_features, is_longer=is_longer)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        is_longer: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        if audio_embeds is None:
            if input_features is None:
                raise ValueError("Pass either `input_features` or precomputed `audio_embeds`.")
            audio_embeds = self.get_audio_features(input_features, is_longer)
        loss, logits = self._classify(audio_embeds, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = [
    "ClapClassifierForAudioClassification",
    "ClipClassifierForImageClassification",
    "ClipClassifierPreTrainedModel",
    "CosineClassifierHead",
]
