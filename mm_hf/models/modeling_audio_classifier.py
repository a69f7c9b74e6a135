"""Audio classifier: any HF audio encoder + temporal pooling + a dropout/linear head.

Self-contained on purpose (only torch/transformers imports plus the sibling configuration file) so
`save_pretrained` can ship it with the checkpoint for `trust_remote_code=True` loading without mm_hf.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_audio_classifier import AudioClassifierConfig


class MeanPooling(nn.Module):
    """Mean over time of the frames where `frame_mask` is 1 (all frames when it is None).

    Shapes: hidden_states (batch, time, hidden), frame_mask (batch, time) or None -> (batch, hidden).
    """

    def forward(self, hidden_states: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        if frame_mask is None:
            return hidden_states.mean(dim=1)
        mask = frame_mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class AttentionPooling(nn.Module):
    """Learned attention pooling: a linear score per frame, softmax over the unmasked frames, weighted sum.

    Shapes: hidden_states (batch, time, hidden), frame_mask (batch, time) or None -> (batch, hidden);
    `attention_weights` gives the (batch, time) weights, each row summing to 1 with 0 on masked frames.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)

    def attention_weights(self, hidden_states: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.score(hidden_states).squeeze(-1).float()
        if frame_mask is not None:
            scores = scores.masked_fill(~frame_mask.bool(), torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        if frame_mask is not None:
            # A row with no real frame would otherwise spread its weight uniformly over padding.
            weights = weights * frame_mask.to(weights.dtype)
        return weights.to(hidden_states.dtype)

    def forward(self, hidden_states: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.attention_weights(hidden_states, frame_mask)
        return torch.einsum("bt,bth->bh", weights, hidden_states)


def build_audio_encoder(backbone_config) -> nn.Module:
    """The encoder of the audio model `backbone_config` describes (randomly initialised).

    Encoder-decoder models (Whisper) keep only their encoder, as `WhisperForAudioClassification` does.
    """
    model = AutoModel.from_config(backbone_config)
    return encoder_only(model)


def encoder_only(model: nn.Module) -> nn.Module:
    """`model` itself, or its encoder when it is an encoder-decoder model (Whisper)."""
    # Only for encoder-decoder models: wav2vec2's `.encoder` is just the transformer, without its conv stem.
    if getattr(model.config, "is_encoder_decoder", False):
        return model.get_encoder()
    return model


class AudioClassifierPreTrainedModel(PreTrainedModel):
    config_class = AudioClassifierConfig
    base_model_prefix = "audio_classifier"
    # Overridden per instance by the backbone's own input name (Whisper: "input_features").
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    # forward(**kwargs) would make Trainer believe the loss is already normalised by the number of items in
    # the global batch; it is a per-batch mean, so Trainer must average it itself (else the loss and gradients
    # get multiplied by the world size and the gradient accumulation steps).
    accepts_loss_kwargs = False
    _supports_sdpa = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, AttentionPooling):
            # Zero scores: pooling starts as a plain mean over the real frames.
            nn.init.zeros_(module.score.weight)
            nn.init.zeros_(module.score.bias)


class AudioClassifierForAudioClassification(AudioClassifierPreTrainedModel):
    """Audio classifier on top of the encoder of any HF audio model.

    wav2vec2 / HuBERT / WavLM read `input_values` (+ `attention_mask`), AST reads `input_values`
    (a spectrogram), Whisper reads `input_features` (padded to its fixed 30 s window). Either name is
    accepted and handed to the backbone under its own `main_input_name`.
    """

    def __init__(self, config: AudioClassifierConfig):
        super().__init__(config)
        self.backbone = build_audio_encoder(config.backbone_config)
        self.main_input_name = self.backbone.main_input_name
        hidden_size = config.backbone_config.hidden_size
        self.pooler = AttentionPooling(hidden_size) if config.pooling == "attention" else MeanPooling()
        self.classifier = nn.Sequential(nn.Dropout(config.head_dropout), nn.Linear(hidden_size, config.num_labels))
        self.post_init()

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        # transformers v5 renames some backbones' weights when saving (back to their v4 names), but Trainer
        # reloads checkpoints with a plain `load_state_dict` (load_best_model_at_end, resume), which would then
        # silently miss every renamed weight. Saving the live names keeps both paths exact.
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    def freeze_feature_encoder(self) -> None:
        """Freeze the convolutional waveform encoder of wav2vec2-family backbones (no-op for others)."""
        feature_extractor = getattr(self.backbone, "feature_extractor", None)
        if isinstance(feature_extractor, nn.Module):
            feature_extractor.requires_grad_(False)

    def frame_mask(self, attention_mask: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
        """The input-level `attention_mask` (batch, samples) downsampled to the encoder's frames (batch, num_frames).

        None (every frame counts) without a mask or when frames do not map to input positions (AST patches).
        """
        if attention_mask is None:
            return None
        if hasattr(self.backbone, "_get_feature_vector_attention_mask"):  # wav2vec2 / HuBERT / WavLM
            return self.backbone._get_feature_vector_attention_mask(num_frames, attention_mask)
        conv1, conv2 = getattr(self.backbone, "conv1", None), getattr(self.backbone, "conv2", None)
        if isinstance(conv1, nn.Conv1d) and isinstance(conv2, nn.Conv1d):  # Whisper's conv stem, mel frames
            stride = conv1.stride[0] * conv2.stride[0]
            return attention_mask[:, ::stride][:, :num_frames]
        return None

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pooled_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        # `pooled_embeds` (batch, hidden): the pooled frames cached once from the frozen backbone (linear probing),
        # so only the head runs.
        if pooled_embeds is not None:
            logits = self.classifier(pooled_embeds.to(self.classifier[1].weight.dtype))
            loss = None if labels is None else F.cross_entropy(logits.float(), labels.to(logits.device))
            return SequenceClassifierOutput(loss=loss, logits=logits)
        inputs = input_values if input_values is not None else input_features
        if inputs is None:
            raise ValueError(f"Pass the audio as `{self.main_input_name}`.")
        backbone_inputs = {self.backbone.main_input_name: inputs}
        # Only the wav2vec2 family reads a sample-level mask; AST's and Whisper's forward would misuse or ignore it.
        if attention_mask is not None and hasattr(self.backbone, "_get_feature_vector_attention_mask"):
            backbone_inputs["attention_mask"] = attention_mask
        outputs = self.backbone(**backbone_inputs, **kwargs)
        hidden_states = outputs.last_hidden_state
        pooled = self.pooler(hidden_states, self.frame_mask(attention_mask, hidden_states.shape[1]))
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "AttentionPooling",
    "AudioClassifierForAudioClassification",
    "AudioClassifierPreTrainedModel",
    "MeanPooling",
]
