"""Audio classifier: any HF audio encoder + temporal pooling + a dropout/linear head.

Self-contained on purpose (only torch/transformers imports plus the sibling configuration and pooling files) so
`save_pretrained` can ship it with the checkpoint for `trust_remote_code=True` loading without mm_hf.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_audio_classifier import AudioClassifierConfig
from .pooling import AttentionPooling, MeanPooling
from .towers import NO_SPLIT_MODULES, ModelParts, describe_tower


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


def reads_attention_mask(encoder: nn.Module) -> bool:
    """Whether `encoder` itself should get the input-level `attention_mask`.

    The wav2vec2 family reads one, except checkpoints whose conv features are group-normalised (wav2vec2-base,
    HuBERT-base): they were trained on zero padding without a mask, and transformers' Wav2Vec2FeatureExtractor
    docs say not to pass one. Whisper's and AST's forward have no input mask. Pooling masks padding either way
    (`audio_frame_mask`).
    """
    if not hasattr(encoder, "_get_feature_vector_attention_mask"):
        return False
    return getattr(encoder.config, "feat_extract_norm", "layer") != "group"


def audio_frame_mask(
    encoder: nn.Module, inputs: torch.Tensor | None, attention_mask: torch.Tensor | None, num_frames: int
) -> torch.Tensor | None:
    """Which of the encoder's `num_frames` output positions hold real audio, (batch, num_frames); None: all do.

    - wav2vec2 / HuBERT / WavLM: the sample-level `attention_mask` through the conv stem's strides.
    - Whisper: its feature extractor's `attention_mask` (per mel frame, or per sample) through the conv stem's
      stride 2. Its encoder has no attention mask, so real frames still attend to the padding.
    - AST: its feature extractor gives no mask, but its padding is recognisable in the input: padded frames are
      zero filterbank rows normalised to one constant, so every mel bin of such a frame holds the same value
      (a real frame's bins differ; trailing digital silence counts as padding). A patch counts while it starts
      inside the real frames; the [CLS] and distillation tokens always count. AST attends to the padding too.
    """
    if hasattr(encoder, "_get_feature_vector_attention_mask"):  # wav2vec2 family
        if attention_mask is None:
            return None
        return encoder._get_feature_vector_attention_mask(num_frames, attention_mask)
    conv1, conv2 = getattr(encoder, "conv1", None), getattr(encoder, "conv2", None)
    if isinstance(conv1, nn.Conv1d) and isinstance(conv2, nn.Conv1d):  # Whisper's conv stem, mel frames
        if attention_mask is None:
            return None
        if inputs is not None and attention_mask.shape[1] > inputs.shape[-1]:
            # The extractor only rescales its mask to mel frames when the call itself passes
            # return_attention_mask=True; from its saved setting alone (as in `pipeline`) the mask stays per sample.
            attention_mask = attention_mask[:, :: attention_mask.shape[1] // inputs.shape[-1]]
        stride = conv1.stride[0] * conv2.stride[0]
        return attention_mask[:, ::stride][:, :num_frames]
    config = getattr(encoder, "config", None)
    if getattr(config, "model_type", None) == "audio-spectrogram-transformer" and inputs is not None:
        return _ast_patch_mask(config, inputs, num_frames)
    return None


def _ast_patch_mask(config, input_values: torch.Tensor, num_tokens: int) -> torch.Tensor | None:
    """AST's token mask from its spectrogram input (batch, frames, mel bins); None if the layout does not match."""
    flat = input_values.amax(dim=-1) == input_values.amin(dim=-1)  # (batch, frames): all bins equal
    trailing = flat.flip(-1).long().cumprod(dim=-1).sum(dim=-1)  # length of the run of such frames at the end
    real_frames = input_values.shape[1] - trailing
    freq_patches = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    time_patches = (config.max_length - config.patch_size) // config.time_stride + 1
    if 2 + freq_patches * time_patches != num_tokens:
        return None
    starts = torch.arange(time_patches, device=input_values.device) * config.time_stride
    time_mask = starts[None, :] < real_frames[:, None]  # (batch, time patches)
    # Patches are laid out frequency-major (time varies fastest), after the [CLS] and distillation tokens.
    patches = time_mask.repeat(1, freq_patches)
    special = torch.ones(input_values.shape[0], 2, dtype=torch.bool, device=input_values.device)
    return torch.cat([special, patches], dim=1).long()


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
    _no_split_modules = NO_SPLIT_MODULES  # the towers' blocks, for FSDP auto-wrap (towers.no_split_modules)
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
    (a spectrogram), Whisper reads `input_features` padded to its window: 2 * `max_source_positions` mel
    frames, 30 s as pretrained or the clip length it was built for (`build_audio_classifier`). Either name
    is accepted and handed to the backbone under its own `main_input_name`. Pooling covers only the frames
    that hold audio (`audio_frame_mask`).
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

    def parts(self) -> ModelParts:
        """What fine-tuning acts on: the new pooler and classifier, and the backbone as the media tower. Its layers
        are looked up inside `backbone.encoder` where there is one (wav2vec2 family), which keeps the search off
        the conv feature encoder (a list of identical blocks too)."""
        search = "encoder" if isinstance(getattr(self.backbone, "encoder", None), nn.Module) else ""
        media = describe_tower(self, "backbone", search=search)
        return ModelParts(kind="classifier", head=("pooler", "classifier"), towers={"media": media})

    def freeze_feature_encoder(self) -> None:
        """Freeze the convolutional waveform encoder of wav2vec2-family backbones (no-op for others)."""
        feature_extractor = getattr(self.backbone, "feature_extractor", None)
        if isinstance(feature_extractor, nn.Module):
            feature_extractor.requires_grad_(False)

    def _calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        # Post-hoc temperature scaling (see the config): eval/inference only, training sees the raw logits.
        if not self.training and self.config.calibration_temperature != 1.0:
            return logits / self.config.calibration_temperature
        return logits

    def frame_mask(
        self, attention_mask: torch.Tensor | None, num_frames: int, inputs: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Which of the encoder's `num_frames` frames hold real audio (batch, num_frames); see `audio_frame_mask`."""
        return audio_frame_mask(self.backbone, inputs, attention_mask, num_frames)

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
            logits = self._calibrated(self.classifier(pooled_embeds.to(self.classifier[1].weight.dtype)))
            loss = None if labels is None else F.cross_entropy(logits.float(), labels.to(logits.device))
            return SequenceClassifierOutput(loss=loss, logits=logits)
        inputs = input_values if input_values is not None else input_features
        if inputs is None:
            raise ValueError(f"Pass the audio as `{self.main_input_name}`.")
        backbone_inputs = {self.backbone.main_input_name: inputs}
        if attention_mask is not None and reads_attention_mask(self.backbone):
            backbone_inputs["attention_mask"] = attention_mask
        outputs = self.backbone(**backbone_inputs, **kwargs)
        hidden_states = outputs.last_hidden_state
        pooled = self.pooler(hidden_states, self.frame_mask(attention_mask, hidden_states.shape[1], inputs))
        logits = self._calibrated(self.classifier(pooled))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "AudioClassifierForAudioClassification",
    "AudioClassifierPreTrainedModel",
    "audio_frame_mask",
    "reads_attention_mask",
]
