"""Building the audio classifier from a pretrained audio model (wav2vec2 / HuBERT / WavLM, AST, Whisper)."""

import inspect
import logging
import math

import torch
from torch import nn
from transformers import AutoModel

from .configuration_audio_classifier import AudioClassifierConfig
from .modeling_audio_classifier import AudioClassifierForAudioClassification, encoder_only

logger = logging.getLogger(__name__)


def build_audio_classifier(
    model_name_or_path,
    id2label: dict[int, str],
    *,
    pooling: str = "mean",
    head_dropout: float = 0.1,
    feature_extractor=None,
    max_length_seconds: float | None = None,
    **from_pretrained_kwargs,
) -> AudioClassifierForAudioClassification:
    """Wrap a pretrained audio model's encoder into a classifier over `id2label` with a fresh head.

    Whisper checkpoints keep only their encoder. An already loaded model (nn.Module) is wrapped as it is.
    With `feature_extractor` (changed in place, to be saved with the model): it is set to return the attention
    mask that pooling needs, and with `max_length_seconds` shorter than Whisper's window, encoder and extractor
    move to a window of whole seconds that fits the clips (`fit_whisper_window`).
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
    if feature_extractor is not None:
        request_attention_mask(feature_extractor)
        fit_whisper_window(model.backbone, model.config.backbone_config, feature_extractor, max_length_seconds)
    return model


def request_attention_mask(feature_extractor) -> None:
    """Make `feature_extractor` return an attention mask whenever it can make one (wav2vec2's and Whisper's can).

    Masked pooling needs it to tell real frames from padding, also in a `pipeline` reloading the saved extractor.
    The backbone itself only gets it where it was trained with one (`reads_attention_mask`); wav2vec2's extractor
    then also normalises each clip over its own samples and pads with exact zeros, so a clip's input no longer
    depends on the longest clip of its batch.
    """
    if "return_attention_mask" in inspect.signature(feature_extractor.__call__).parameters:
        feature_extractor.return_attention_mask = True


def fit_whisper_window(encoder: nn.Module, recorded_config, feature_extractor, max_length_seconds) -> int | None:
    """Run a Whisper encoder on clips of `max_length_seconds` instead of its 30 s window; returns the new window in
    seconds, or None when nothing changes (not Whisper, no length given, or clips as long as the window).

    Whisper's encoder only accepts inputs of exactly 2 * `max_source_positions` mel frames, so by default every
    clip is padded to 30 s: a 1 s clip costs 30x its length (whisper-base, forward + backward on 8 one-second
    clips, one CPU thread: 77.5 s padded, 1.12 s on a 1 s window). As audio-classification work on Whisper does, the
    window shrinks to the clips: the sinusoidal position embeddings are sliced to the first positions (exactly
    those of a shorter input), `max_source_positions` is set on the encoder's config and on `recorded_config`
    (the one the checkpoint saves, so reloading rebuilds the short encoder), and the feature extractor pads to the
    same window (`chunk_length`), so training, evaluation, a reloaded checkpoint and `pipeline` agree. The window
    is whole seconds because the extractor derives its sample count from `chunk_length` (a fractional value would
    make that a float on reload).
    """
    conv1, conv2 = getattr(encoder, "conv1", None), getattr(encoder, "conv2", None)
    positions = getattr(encoder, "embed_positions", None)
    chunk_length = getattr(feature_extractor, "chunk_length", None)
    if not (isinstance(conv1, nn.Conv1d) and isinstance(conv2, nn.Conv1d) and isinstance(positions, nn.Embedding)):
        return None
    if not max_length_seconds or chunk_length is None or math.ceil(max_length_seconds) >= chunk_length:
        return None
    seconds = math.ceil(max_length_seconds)
    rate, hop = int(feature_extractor.sampling_rate), int(feature_extractor.hop_length)
    stride = conv1.stride[0] * conv2.stride[0]
    if (seconds * rate) % (hop * stride):
        logger.warning(
            "Whisper keeps its %s s window: %s s is not a whole number of encoder frames", chunk_length, seconds
        )
        return None
    num_positions = seconds * rate // hop // stride
    shorten_whisper_encoder(encoder, recorded_config, num_positions)
    feature_extractor.chunk_length = seconds
    feature_extractor.n_samples = seconds * rate
    feature_extractor.nb_max_frames = feature_extractor.n_samples // hop
    logger.info(
        "Whisper runs on a %d s window (%d positions) instead of %s s: clips are at most %s s",
        seconds, num_positions, chunk_length, max_length_seconds,
    )  # fmt: skip
    return seconds


def shorten_whisper_encoder(encoder: nn.Module, recorded_config, num_positions: int) -> None:
    """Keep the first `num_positions` of a Whisper encoder's position embeddings and record the new
    `max_source_positions` on its config and on `recorded_config` (the one saved with the checkpoint)."""
    positions = encoder.embed_positions
    short = nn.Embedding(num_positions, positions.embedding_dim, device=positions.weight.device)
    short.weight.data = positions.weight.data[:num_positions].clone()
    short.requires_grad_(False)  # fixed sinusoids, frozen as in WhisperEncoder.__init__
    encoder.embed_positions = short
    encoder.max_source_positions = num_positions
    for config in {id(c): c for c in (encoder.config, recorded_config)}.values():
        config.max_source_positions = num_positions
