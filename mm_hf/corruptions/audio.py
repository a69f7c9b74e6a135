"""Audio corruptions: `name(waveform, severity, rng, *, sampling_rate=None)` -> float32, severity 1..5.

A 1-D float waveform in, float32 out; its length changes only for `speed`. `sampling_rate` is taken by every audio
corruption so they share one signature, and only the Vorbis codec needs it.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr


def _waveform(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"audio corruptions take a 1-D (mono) waveform, got shape {x.shape}")
    return x


def add_noise(x, severity: int, rng: np.random.Generator, *, sampling_rate: int | None = None) -> np.ndarray:
    """White Gaussian noise at an SNR of [20, 15, 10, 5, 0] dB relative to the clip's mean power (exact, not drawn).

    A silent clip stays silent: its SNR is undefined, and noise on silence would test something else.
    """
    snr_db = (20, 15, 10, 5, 0)[severity - 1]
    x = _waveform(x)
    power = float(np.mean(x.astype(np.float64) ** 2)) if x.size else 0.0
    if power == 0:
        return x.copy()
    noise = rng.standard_normal(x.shape)
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise**2))
    return (x + noise).astype(np.float32)


def gain(x, severity: int, rng: np.random.Generator, *, sampling_rate: int | None = None) -> np.ndarray:
    """Attenuate by [6, 12, 18, 24, 30] dB (a quiet recording; attenuating never clips, boosting would)."""
    db = (6, 12, 18, 24, 30)[severity - 1]
    return (_waveform(x) * np.float32(10 ** (-db / 20))).astype(np.float32)


def speed(x, severity: int, rng: np.random.Generator, *, sampling_rate: int | None = None) -> np.ndarray:
    """Play [1.05, 1.1, 1.2, 1.3, 1.5] times faster or slower (drawn at random) by resampling: pitch shifts with it,
    as on a tape at the wrong speed. soxr (HQ) resamples, the same resampler as mm_hf.data.audio."""
    factor = (1.05, 1.1, 1.2, 1.3, 1.5)[severity - 1]
    factor = factor if rng.uniform() < 0.5 else 1 / factor
    # Reading the clip as if recorded at `factor` times its rate and resampling to the rate: length / factor.
    return soxr.resample(_waveform(x), factor, 1.0, quality="HQ").astype(np.float32)


def clipping(x, severity: int, rng: np.random.Generator, *, sampling_rate: int | None = None) -> np.ndarray:
    """Hard clipping of the loudest [1, 2, 5, 10, 20] % of the samples (threshold at that |amplitude| quantile), so
    the damage is the same share of every clip whatever its level."""
    share = (0.01, 0.02, 0.05, 0.1, 0.2)[severity - 1]
    x = _waveform(x)
    if not x.size:
        return x.copy()
    limit = np.float32(np.quantile(np.abs(x), 1 - share))
    return np.clip(x, -limit, limit)


def vorbis_compression(x, severity: int, rng: np.random.Generator, *, sampling_rate: int | None = 16000) -> np.ndarray:
    """Ogg Vorbis round trip (libsndfile) at compression level [.2, .4, .6, .8, 1] of its 0 (best) .. 1 (smallest)
    scale: about 70 / 59 / 51 / 44 / 40 kbit/s at 16 kHz, waveform SNR 22 / 18 / 15 / 12 / 10 dB on a test chirp.

    Vorbis rather than MP3: libsndfile's MP3 round trip came back 1105+ samples late (no gapless header) at low
    bitrates (e.g. 16 kHz, level >= 0.85), where Vorbis keeps the exact length at every level and rate tried.
    The codec's psychoacoustics depend on the rate, hence `sampling_rate`.
    """
    level = (0.2, 0.4, 0.6, 0.8, 1.0)[severity - 1]
    x = _waveform(x)
    if not sampling_rate:
        raise ValueError("vorbis_compression needs the clip's sampling_rate")
    if not x.size:
        return x.copy()
    buffer = io.BytesIO()
    # Float samples outside [-1, 1] do not survive any real file format: clip them as a file would.
    sf.write(buffer, np.clip(x, -1, 1), int(sampling_rate), format="OGG", subtype="VORBIS", compression_level=level)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    out = np.zeros_like(x)  # the same length whatever the decoder returns
    out[: min(len(x), len(decoded))] = decoded[: len(x)]
    return out
