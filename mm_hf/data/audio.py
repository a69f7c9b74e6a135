"""Decode audio to mono float32 at the model's rate, validate a dataset's audio, crop and augment clips.

Decoding uses soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, AIFF, ... in 8/16/24/32-bit PCM or
float) and resampling uses soxr, so neither ffmpeg nor torchcodec is needed. As with images, a bad
file deep in a dataset should fail the run before training with its name, not hours in:
`load_audio` raises `BadSampleError` naming the file, and `check_audio` runs it over a whole split
once, up front, and either fails with a list of the bad files or drops them.
"""

from __future__ import annotations

import functools
import inspect
import io
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import soundfile as sf
import soxr

from mm_hf.data.validation import IN_MEMORY, BadSampleError, check_samples, require_file

# A path, encoded bytes, a `datasets.Audio(decode=False)` record {"bytes", "path"}, or an in-memory
# record {"array", "sampling_rate"}.
AudioSource = str | os.PathLike | bytes | Mapping[str, Any]

# Peak amplitude below which a clip counts as silent (about -120 dBFS; 24-bit PCM's step is 1.2e-7).
SILENCE_PEAK = 1e-6
# libsndfile does not fail on a WAV/AIFF cut inside its audio data: it logs e.g.
# "data : 32000 (should be 15978)" and silently returns the shorter clip. We read that log.
_SHORT_DATA_CHUNK = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Writers streaming to a pipe cannot seek back to fill in sizes and leave this placeholder.
_STREAMING_SIZE = 0xFFFFFFFF


def load_audio(
    source: AudioSource,
    sampling_rate: int,
    *,
    mono: bool = True,
    reject_silent: bool = False,
) -> np.ndarray:
    """Decode `source` into float32 samples in [-1, 1] at `sampling_rate` Hz.

    Returns shape `(num_samples,)`; with `mono=False`, `(num_channels, num_samples)`. Channels are
    mixed down by averaging and other rates are resampled with soxr (HQ). A record's bytes win over
    its path, which then only names the sample in errors. Raises `BadSampleError` for a missing,
    empty, non-audio, corrupt or truncated file, zero-length audio, NaN/inf samples, audio too short
    to resample, and — only with `reject_silent=True` — silence (peak below `SILENCE_PEAK`).
    """
    if not isinstance(sampling_rate, int | np.integer) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer, got {sampling_rate!r}")
    samples, rate, name = decode_source(source)  # (frames, channels), finite, non-empty
    if mono:
        samples = mix_down(samples)
    if rate != sampling_rate:
        samples = soxr.resample(samples, rate, int(sampling_rate), quality="HQ")
        if samples.shape[0] == 0:
            raise BadSampleError(name, f"too short to resample from {rate} Hz to {sampling_rate} Hz")
    if reject_silent:
        peak = float(np.abs(samples).max())
        if peak < SILENCE_PEAK:
            raise BadSampleError(name, f"silent (peak amplitude {peak:.1e} < {SILENCE_PEAK:.0e})")
    samples = np.ascontiguousarray(samples if mono else samples.T, dtype=np.float32)
    return samples


def mix_down(samples: np.ndarray) -> np.ndarray:
    """Average the channels of float32 `(frames, channels)` samples into `(frames,)`.

    The same values as `samples.mean(axis=1, dtype=np.float32)` (channels summed in order, then divided), but
    adding whole columns: numpy's reduction over a short inner axis took 4.1 ms for a 5 s 44.1 kHz stereo clip,
    more than decoding and resampling it (1.9 + 1.8 ms), against 0.5 ms this way (`python -m mm_hf.bench.pipeline
    --audio`).
    """
    total = samples[:, 0].astype(np.float32, copy=True)
    for channel in range(1, samples.shape[1]):
        total += samples[:, channel]
    total /= np.float32(samples.shape[1])
    return total


def decode_source(source: AudioSource) -> tuple[np.ndarray, int, str]:
    if source is None:
        raise BadSampleError("<missing>", "no audio (the value is None)")
    if isinstance(source, Mapping):
        if source.get("array") is not None:
            name = source.get("path") or "<in-memory array>"
            return _check_samples(source["array"], source.get("sampling_rate"), name)
        data, path = source.get("bytes"), source.get("path")
        if data:
            return _decode(io.BytesIO(data), path or IN_MEMORY)
        if path:
            return _decode_path(Path(path))
        raise BadSampleError(IN_MEMORY, "the audio record has neither 'bytes', 'path' nor 'array'")
    if isinstance(source, bytes | bytearray | memoryview):
        return _decode(io.BytesIO(bytes(source)), IN_MEMORY)
    if isinstance(source, str | os.PathLike):
        return _decode_path(Path(source))
    raise TypeError(f"Cannot load audio from a {type(source).__name__}; expected a path, bytes or dict.")


def _decode_path(path: Path) -> tuple[np.ndarray, int, str]:
    require_file(path)
    return _decode(path, str(path))


def _decode(file: Path | io.BytesIO, name: str) -> tuple[np.ndarray, int, str]:
    try:
        with sf.SoundFile(file) as sound:
            declared_frames = sound.frames
            samples = sound.read(dtype="float32", always_2d=True)
            rate, log = sound.samplerate, sound.extra_info
    # libsndfile reports unknown formats, bad headers and undecodable data as LibsndfileError;
    # odd inputs can also surface as other errors. Any of them means the sample cannot be used.
    except Exception as error:
        raise BadSampleError(name, f"not audio, or corrupt or truncated ({type(error).__name__}: {error})") from error
    for declared, available in _SHORT_DATA_CHUNK.findall(log):
        if int(declared) > int(available) and int(declared) != _STREAMING_SIZE:
            raise BadSampleError(
                name, f"truncated: the header declares {declared} bytes of audio, the file holds {available}"
            )
    if 0 < samples.shape[0] < declared_frames:
        raise BadSampleError(
            name, f"truncated: the header declares {declared_frames} frames, only {samples.shape[0]} decode"
        )
    return _check_samples(samples, rate, name)


def _check_samples(samples: Any, rate: Any, name: str) -> tuple[np.ndarray, int, str]:
    """Validate decoded samples; returns them as float32 `(frames, channels)`."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    elif samples.ndim != 2:
        raise BadSampleError(name, f"expected 1-D or (frames, channels) samples, got shape {samples.shape}")
    if not rate or int(rate) <= 0:
        raise BadSampleError(name, f"invalid sampling rate {rate!r}")
    if samples.size == 0:
        raise BadSampleError(name, "zero-length audio (no samples)")
    finite = np.isfinite(samples)
    if not finite.all():
        raise BadSampleError(name, f"{samples.size - int(finite.sum())} NaN/inf samples")
    return samples, int(rate), name


def check_audio_header(source: AudioSource) -> None:
    """Check `source` without decoding its samples (`--validate_samples header`): it exists, is non-empty, libsndfile
    reads its header, which declares a positive rate and at least one frame. Raises `BadSampleError` as
    `load_audio` does for those faults; corrupt sample data passes (only decoding finds it: `full`)."""
    if source is None:
        raise BadSampleError("<missing>", "no audio (the value is None)")
    if isinstance(source, Mapping) and source.get("array") is not None:
        _check_samples(source["array"], source.get("sampling_rate"), source.get("path") or "<in-memory array>")
        return
    if isinstance(source, Mapping):
        data, path = source.get("bytes"), source.get("path")
        if not data and not path:
            raise BadSampleError(IN_MEMORY, "the audio record has neither 'bytes', 'path' nor 'array'")
        file, name = (io.BytesIO(data), path or IN_MEMORY) if data else (Path(path), str(path))
    elif isinstance(source, bytes | bytearray | memoryview):
        file, name = io.BytesIO(bytes(source)), IN_MEMORY
    else:
        file, name = Path(source), str(source)
    if isinstance(file, Path):
        require_file(file)
    try:
        info = sf.info(file)
    except Exception as error:
        raise BadSampleError(name, f"not audio, or a corrupt header ({type(error).__name__}: {error})") from error
    if info.samplerate <= 0:
        raise BadSampleError(name, f"invalid sampling rate {info.samplerate!r}")
    if info.frames == 0:
        raise BadSampleError(name, "zero-length audio (no samples)")


def check_audio(
    dataset: datasets.Dataset,
    column: str,
    *,
    sampling_rate: int,
    skip_bad: bool,
    num_proc: int | None = None,
    split_name: str = "train",
    allow_missing: bool = False,
    reject_silent: bool = False,
    mode: str = "full",
    cache: bool = False,
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, list[tuple[str, str]]]:
    """Decode (and resample) every clip in `dataset[column]` once (`mode="header"`: only read its header,
    `check_audio_header`), before training, to find bad samples; with `cache` the verdict is cached
    (`mm_hf.data.validation.verdict_key`).

    Returns `(dataset, bad)` where `bad` lists `(source, reason)` pairs. With `skip_bad=False` any bad
    sample raises `BadSampleError` listing the first few; with `skip_bad=True` they are dropped from
    the returned dataset (which is otherwise unchanged). Samples can be paths or `datasets.Audio`
    records; decoded audio is never stored. Silent clips count as bad only with `reject_silent=True`.
    """
    load = functools.partial(load_audio, sampling_rate=sampling_rate, reject_silent=reject_silent)
    if mode == "header":
        load = check_audio_header
    return check_samples(
        dataset,
        column,
        load,
        kind="audio clips",
        feature_type=datasets.Audio,
        skip_bad=skip_bad,
        num_proc=num_proc,
        split_name=split_name,
        allow_missing=allow_missing,
        check_id=(f"audio/{mode}" if mode == "header" else f"audio/full/{sampling_rate}/{reject_silent}")
        if cache
        else None,
        cache_dir=cache_dir,
    )


def crop_or_pad(x: np.ndarray, num_samples: int, *, train: bool, rng: random.Random | None = None) -> np.ndarray:
    """Cut `x` (last axis = time) to at most `num_samples`.

    Training takes a random window (from `rng`, else the global `random`, which Trainer seeds per
    worker); evaluation always takes the *first* `num_samples`, so metrics are reproducible and match
    what a streaming model would hear. Shorter clips are returned as is: the feature extractor pads
    and builds the attention mask.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    excess = x.shape[-1] - num_samples
    if excess <= 0:
        return x
    start = (rng or random).randint(0, excess) if train else 0
    return x[..., start : start + num_samples]


def augment(
    x: np.ndarray,
    rng: random.Random | None = None,
    *,
    gain_db: tuple[float, float] | None = (-6.0, 6.0),
    snr_db: tuple[float, float] | None = (15.0, 40.0),
    max_shift: float = 0.1,
) -> np.ndarray:
    """Light training augmentation of a 1-D clip: random gain, white noise at a random SNR, time shift.

    The noise power is set relative to the (gained) signal's mean power, so silence stays silent;
    the shift is circular, up to `max_shift` of the length either way. Pass `gain_db=None`,
    `snr_db=None` or `max_shift=0` to turn a part off. Output is float32, same length, not clipped.
    """
    rng = rng or random
    out = np.asarray(x, dtype=np.float32).copy()
    if out.size == 0:
        return out
    if gain_db is not None:
        out *= np.float32(10.0 ** (rng.uniform(*gain_db) / 20.0))
    if snr_db is not None:
        signal_power = float(np.mean(out.astype(np.float64) ** 2))
        if signal_power > 0:
            noise = np.random.default_rng(rng.getrandbits(64)).standard_normal(out.shape)
            # Scale to the exact target power so the realised SNR is the drawn one.
            noise *= np.sqrt(signal_power / 10.0 ** (rng.uniform(*snr_db) / 10.0) / np.mean(noise**2))
            out += noise.astype(np.float32)
    limit = int(max_shift * out.shape[-1])
    if limit > 0:
        out = np.roll(out, rng.randint(-limit, limit), axis=-1)
    return out


class AudioTransform:
    """A batch transform for `Dataset.with_transform`: audio sources + `labels` -> model inputs + `labels`.

    Each clip is decoded with `load_audio` at the feature extractor's sampling rate, cut to
    `max_length_seconds` (`crop_or_pad`: a random window in training, the first one in evaluation),
    lightly augmented when `augment` (training only), then run through `feature_extractor` as one
    batch. Returns one tensor per example under the extractor's input name (`input_values` for
    wav2vec2-style models, `input_features` for Whisper/AST-style ones) and, where the extractor
    makes one, `attention_mask`. Padding is to the longest clip of the batch, or to the extractor's
    fixed length for those that need it (Whisper's 30 s). Because datasets hands a DataLoader batch
    to the transform at once, the clips of a batch share one length and `default_data_collator`
    stacks them. `return_attention_mask=None` asks for the mask whenever the extractor can make one
    (wav2vec2's and Whisper's can): pooling needs it to skip padded frames, and wav2vec2's extractor then
    normalises each clip over its own samples and pads with exact zeros. Whether the backbone itself sees
    the mask is the model's call (wav2vec2-base-like checkpoints were trained on zero padding without one).
    A class, not a closure, so datasets carrying it pickle into DataLoader workers.
    """

    def __init__(
        self,
        feature_extractor: Any,
        *,
        audio_column: str = "audio",
        max_length_seconds: float | None = None,
        train: bool = False,
        augment: bool = False,
        return_attention_mask: bool | None = None,
    ):
        self.feature_extractor = feature_extractor
        self.audio_column = audio_column
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.max_samples = int(round(max_length_seconds * self.sampling_rate)) if max_length_seconds else None
        # CLAP's extractor crops clips longer than its own window at a random place, in evaluation too: cutting
        # them to that window here keeps evaluation deterministic and training crops ours.
        window = getattr(feature_extractor, "nb_max_samples", None)
        if window:
            self.max_samples = min(self.max_samples or window, int(window))
        self.train = train
        self.augment = augment and train
        if return_attention_mask is None:
            accepted = inspect.signature(feature_extractor.__call__).parameters
            return_attention_mask = True if "return_attention_mask" in accepted else None
        self.return_attention_mask = return_attention_mask
        self.input_name = feature_extractor.model_input_names[0]

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if self.audio_column not in batch:
            raise KeyError(f"No audio column {self.audio_column!r} in the batch; columns are {list(batch)}.")
        clips = [load_audio(source, self.sampling_rate) for source in batch[self.audio_column]]
        out = {key: values for key, values in batch.items() if key != self.audio_column}
        out.update(self.features(clips))
        return out

    def features(self, clips: list[np.ndarray]) -> dict[str, list]:
        """Decoded clips (at `sampling_rate`) -> cropped, augmented, extracted: {input name: [...], "attention_mask": [...]}."""
        if self.max_samples:
            clips = [crop_or_pad(clip, self.max_samples, train=self.train) for clip in clips]
        if self.augment:
            clips = [augment(clip) for clip in clips]
        kwargs = {"return_attention_mask": self.return_attention_mask} if self.return_attention_mask is not None else {}
        # Extractors with a fixed input size (Whisper: n_samples, 30 s or the classifier's shorter window) need
        # exactly that length.
        padding = "max_length" if getattr(self.feature_extractor, "n_samples", None) else True
        features = self.feature_extractor(
            clips, sampling_rate=self.sampling_rate, return_tensors="pt", padding=padding, **kwargs
        )
        return {key: list(features[key]) for key in (self.input_name, "attention_mask") if key in features}
