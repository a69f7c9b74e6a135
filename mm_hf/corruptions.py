"""Corrupted inputs for robustness evaluation: ImageNet-C-style image corruptions, audio and text perturbations.

`CORRUPTIONS[modality][name](x, severity, rng)` returns a corrupted copy of one sample at severity 1..5:
- image: a PIL image in, an RGB PIL image out;
- audio: a 1-D float waveform in, float32 out (its length changes only for "speed"); audio functions also take
  `sampling_rate=` (only the Vorbis codec needs it);
- text: a string in, a string out.
`rng` is a `numpy.random.Generator`; `corruption_rng(seed, key, name)` makes the one for a sample, so a corruption is
deterministic for a (seed, sample) whatever the DataLoader worker or order. Severity is deliberately not part of the
seed: all five severities of a sample share the same random draws (common random numbers), so a higher severity
scales the same noise / drops a superset of the same words instead of drawing new ones, and accuracy against
severity is not blurred by resampling noise.

Image parameters are ImageNet-C's tables (Hendrycks & Dietterich 2019, github.com/hendrycks/robustness,
`ImageNet-C/create_c/make_imagenet_c.py`), which were set for 224 x 224 images. Per-pixel corruptions (noise,
brightness, contrast, JPEG) apply as they are; spatial ones (blur radii and sigmas) are scaled by the image's shorter
side / 224, so a corruption looks the same after the model's processor resizes the image to its input size.
Pixelate and fog are relative to the image size already. Rotation is not in ImageNet-C (it is an ImageNet-P
perturbation); its angles are our choice. `CorruptColumn` applies a corruption to one column of a dataset's batch
before the normal transform, inside DataLoader workers.

Video clips take the image corruptions frame by frame: `CorruptColumn(modality="video")` decodes the clip's frames as
evaluation does (`load_video_frames`, the processor's `num_frames`), corrupts each, and hands the decoded frames to
the transform (under `VIDEO_FRAMES_KEY`), so the file itself is never re-encoded (its codec would add artefacts of
its own). Every frame of a clip gets the same draws (one generator per frame, made from the same (seed, clip)): a
camera tilted by `rotation` or blurred by `motion_blur` stays so for the whole clip, and noise is a fixed pattern
rather than fresh per frame, which frame averaging would otherwise partly cancel.
"""

from __future__ import annotations

import hashlib
import io
import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from PIL import Image
from scipy import ndimage, signal

from mm_hf.data.audio import load_audio
from mm_hf.data.images import load_image
from mm_hf.data.video import VIDEO_FRAMES_KEY, load_video_frames
from mm_hf.errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)
# ImageNet-C images are 224 x 224: spatial parameters are per that size.
_REFERENCE_SIZE = 224


# --- images -------------------------------------------------------------------------------------------------------


def _to_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _to_image(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")


def _size_scale(image: Image.Image) -> float:
    return min(image.size) / _REFERENCE_SIZE


def gaussian_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Additive Gaussian noise, std [.08, .12, .18, .26, .38] of the [0, 1] range."""
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    x = _to_float(image)
    return _to_image(x + rng.standard_normal(x.shape, dtype=np.float32) * c)


def shot_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Poisson (photon) noise: `Poisson(x * c) / c` with c [60, 25, 12, 5, 3] photons at full intensity."""
    c = (60, 25, 12, 5, 3)[severity - 1]
    x = _to_float(image)
    return _to_image(rng.poisson(x * c) / c)


def impulse_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Salt-and-pepper noise on a fraction [.03, .06, .09, .17, .27] of the pixel values, half salt, half pepper."""
    c = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    x = _to_float(image)
    hit, salt = rng.uniform(size=x.shape) < c, rng.uniform(size=x.shape) < 0.5
    return _to_image(np.where(hit, salt.astype(np.float32), x))


def gaussian_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, sigma [1, 2, 3, 4, 6] px at 224 px (scaled to the image), edges repeated."""
    sigma = (1, 2, 3, 4, 6)[severity - 1] * _size_scale(image)
    return _to_image(ndimage.gaussian_filter(_to_float(image), sigma=(sigma, sigma, 0), mode="nearest"))


def defocus_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Convolution with a disk (out-of-focus lens), radius [3, 4, 6, 8, 10] px at 224 px, anti-aliased by a Gaussian."""
    radius, alias_sigma = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    radius *= _size_scale(image)
    half = math.ceil(radius) + 1
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    kernel = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    kernel = ndimage.gaussian_filter(kernel / kernel.sum(), sigma=alias_sigma)
    return _to_image(_convolve(_to_float(image), kernel / kernel.sum()))


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # FFT convolution of each channel with mirrored borders (OpenCV's filter2D default, which ImageNet-C used).
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
    return signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))


def motion_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Camera-shake blur along a random angle in [-45, 45] degrees, (radius, sigma) [(10, 3), (15, 5), (15, 8),
    (15, 12), (20, 15)] px at 224 px.

    ImageNet-C used ImageMagick's `-motion-blur radius x sigma + angle`: a one-sided kernel of 2 * radius + 1 taps with
    Gaussian weights exp(-i^2 / 2 sigma^2) for i pixels back along the angle. This is that kernel, summed tap by tap.
    """
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    scale = _size_scale(image)
    radius, sigma = radius * scale, max(sigma * scale, 1e-3)
    taps = np.arange(2 * math.ceil(radius) + 1)
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    weights /= weights.sum()
    angle = math.radians(rng.uniform(-45, 45))
    dx, dy = np.round(taps * math.cos(angle)).astype(int), np.round(taps * math.sin(angle)).astype(int)
    x = _to_float(image)
    h, w = x.shape[:2]
    pad = int(taps[-1])
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(x)
    for weight, ox, oy in zip(weights, dx, dy, strict=True):
        out += weight * padded[pad + oy : pad + oy + h, pad + ox : pad + ox + w]
    return _to_image(out)


def jpeg_compression(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """JPEG round trip at quality [25, 18, 15, 10, 7] (PIL's libjpeg)."""
    quality = (25, 18, 15, 10, 7)[severity - 1]
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return decoded.convert("RGB")


def pixelate(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Box-downsample to [.6, .5, .4, .3, .25] of the size and box-upsample back."""
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    image = image.convert("RGB")
    small = image.resize((max(1, int(image.width * c)), max(1, int(image.height * c))), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.BOX)


def brightness(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Add [.1, .2, .3, .4, .5] to the HSV value channel (clipped at 1), hue and saturation kept.

    Keeping H and S fixed while V goes to V' scales all three RGB channels by V' / V, so no HSV round trip is needed
    (a black pixel, V = 0, has S = 0 and becomes grey V').
    """
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    x = _to_float(image)
    value = x.max(axis=2, keepdims=True)
    brighter = np.minimum(value + c, 1.0)
    return _to_image(np.where(value > 0, x * brighter / np.maximum(value, 1e-12), brighter))


def contrast(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Pull every pixel towards the per-channel image mean, keeping a fraction [.4, .3, .2, .1, .05] of the contrast."""
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    x = _to_float(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_image((x - means) * c + means)


def fog(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Add a diamond-square plasma fractal (fog) of strength [1.5, 2, 2.5, 2.5, 3] and roughness decay
    [2, 2, 1.7, 1.5, 1.4], then rescale to the image's maximum. The fractal spans the image whatever its size."""
    strength, decay = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    x = _to_float(image)
    h, w = x.shape[:2]
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    top = x.max()
    x = x + strength * _plasma_fractal(size, decay, rng)[:h, :w, None]
    return _to_image(x * top / (top + strength))


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A `(size, size)` diamond-square fractal in [0, 1] (size a power of 2); ImageNet-C's `plasma_fractal`."""
    heights = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        # Squares: each square's centre from its four corners.
        corners = heights[0:size:step, 0:size:step]
        total = corners + np.roll(corners, -1, axis=0)
        heights[half:size:step, half:size:step] = wibbled_mean(total + np.roll(total, -1, axis=1))
        # Diamonds: each edge midpoint from its two corners and two neighbouring centres.
        centres = heights[half:size:step, half:size:step]
        corners = heights[0:size:step, 0:size:step]
        heights[0:size:step, half:size:step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        )
        heights[half:size:step, 0:size:step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        )
        step //= 2
        wibble /= decay
    heights -= heights.min()
    return heights / heights.max()


def rotation(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Rotate by [6, 12, 18, 24, 30] degrees, direction drawn at random, bilinear, black corners (not ImageNet-C)."""
    degrees = (6, 12, 18, 24, 30)[severity - 1] * (1 if rng.uniform() < 0.5 else -1)
    return image.convert("RGB").rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


# --- audio --------------------------------------------------------------------------------------------------------


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


# --- text ---------------------------------------------------------------------------------------------------------

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def typos(text: str, severity: int, rng: np.random.Generator) -> str:
    """Keyboard-slip typos on a share [2, 5, 10, 15, 20] % of the letters and digits: each hit character is swapped
    with the next one, dropped, or followed by an inserted random letter (one third each)."""
    share = (0.02, 0.05, 0.1, 0.15, 0.2)[severity - 1]
    chars = list(str(text))
    # All draws up front, one per character, so every severity uses the same ones (hits nest as severity grows).
    hit = rng.uniform(size=len(chars)) < share
    operation = rng.integers(0, 3, size=len(chars))
    inserted = _LETTERS[rng.integers(0, len(_LETTERS), size=len(chars))]
    out, i = [], 0
    while i < len(chars):
        char = chars[i]
        if not (hit[i] and char.isalnum()):
            out.append(char)
        elif operation[i] == 0 and i + 1 < len(chars):  # swap with the next character
            out.extend((chars[i + 1], char))
            i += 1
        elif operation[i] == 1:  # drop
            pass
        else:  # insert after (also a swap at the very end, which has no next character)
            out.extend((char, str(inserted[i])))
        i += 1
    return "".join(out)


def word_dropout(text: str, severity: int, rng: np.random.Generator) -> str:
    """Drop each whitespace-separated word with probability [.05, .1, .2, .3, .4], keeping at least one word."""
    share = (0.05, 0.1, 0.2, 0.3, 0.4)[severity - 1]
    words = str(text).split()
    if not words:
        return str(text)
    draws = rng.uniform(size=len(words))
    kept = [word for word, u in zip(words, draws, strict=True) if u >= share]
    return " ".join(kept) if kept else words[int(draws.argmax())]


# --- registry and dataset wrapper ---------------------------------------------------------------------------------

CORRUPTIONS: dict[str, dict[str, Callable[..., Any]]] = {
    "image": {
        "gaussian_noise": gaussian_noise,
        "shot_noise": shot_noise,
        "impulse_noise": impulse_noise,
        "gaussian_blur": gaussian_blur,
        "defocus_blur": defocus_blur,
        "motion_blur": motion_blur,
        "jpeg_compression": jpeg_compression,
        "pixelate": pixelate,
        "brightness": brightness,
        "contrast": contrast,
        "fog": fog,
        "rotation": rotation,
    },
    "audio": {
        "noise": add_noise,
        "gain": gain,
        "speed": speed,
        "clipping": clipping,
        "vorbis_compression": vorbis_compression,
    },
    "text": {"typos": typos, "word_dropout": word_dropout},
}


# Modalities corrupted with another's table: a video's frames take the image corruptions.
_TABLE_OF = {"video": "image"}


def corruptions_of(modality: str) -> dict[str, Callable[..., Any]]:
    """The corruptions that apply to `modality` (a video's are the image ones, applied to every frame)."""
    table = _TABLE_OF.get(modality, modality)
    if table not in CORRUPTIONS:
        raise ValueError(
            f"No corruptions for modality {modality!r}; modalities with corruptions: "
            f"{sorted([*CORRUPTIONS, *_TABLE_OF])}"
        )
    return CORRUPTIONS[table]


def _check_modality(modality: str) -> None:
    corruptions_of(modality)


def check_corruption(modality: str, name: str, severity: int) -> None:
    """Raise ValueError naming the valid choices if `modality` / `name` / `severity` is not a known corruption."""
    table = corruptions_of(modality)
    if name not in table:
        raise ValueError(f"Unknown {modality} corruption {name!r}; choose from {sorted(table)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")


def select_corruptions(spec: str, modality: str) -> list[str]:
    """Corruption names from a `--corruptions` value: "all" or a comma-separated list, checked for `modality`."""
    table = corruptions_of(modality)
    if spec.strip() == "all":
        return list(table)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in table]
    if unknown or not names:
        raise ValueError(f"Unknown {modality} corruptions {unknown or spec!r}; choose from {sorted(table)}")
    return names


def parse_severities(spec: str, flag: str) -> list[int]:
    """Sorted distinct severities from a comma-separated `flag` value such as "1,3,5"; refuses anything not in 1..5."""
    try:
        values = [int(v) for v in str(spec).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v not in SEVERITIES for v in values):
        raise UserError(f"{flag} {spec!r}: expected a comma-separated list of 1..5, e.g. 1,3,5")
    return sorted(set(values))


def corruption_rng(seed: int, key: int, name: str) -> np.random.Generator:
    """The generator for corruption `name` of sample `key` (its index, or a content digest) under `seed`."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(key)])


def content_key(value: Any) -> int:
    """A 64-bit digest of a decoded sample (PIL image, waveform, text): a stable key when there is no index column."""
    if isinstance(value, Image.Image):
        data = np.asarray(value).tobytes() + repr((value.mode, value.size)).encode()
    elif isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value).tobytes() + repr((value.dtype.str, value.shape)).encode()
    else:
        data = str(value).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class CorruptColumn:
    """A batch transform wrapper for `Dataset.with_transform`: corrupt one column, then run the normal `transform`.

    Each value of `column` (default: the modality's name, the fusion/classification recipes' column) is decoded
    (`load_image` / `load_audio` at `sampling_rate` / `str`), corrupted with `CORRUPTIONS[modality][corruption]` at
    `severity`, and handed to `transform` as a PIL image / an `{"array", "sampling_rate"}` record / a string, which
    the recipes' transforms accept as they accept the original sources. A missing value (None: a missing modality)
    stays missing. Audio needs `sampling_rate`, the feature extractor's, so the clip is decoded once at that rate.

    A video column (`modality="video"`, an image corruption) is decoded to `num_frames` evaluation frames
    (`load_video_frames`, as `MultimodalTransform` would), every frame corrupted with the clip's draws, and the frame
    lists handed over under `VIDEO_FRAMES_KEY` (None where the clip is missing); the column itself is kept, as a
    sound track may still be read from the file.

    Randomness: with `index_column` (an int column, e.g. added by `dataset.add_column("sample_index", range(n))`,
    removed before `transform` sees the batch) a sample's draws depend on (seed, index); without, on (seed, the
    sample's content). Either way the result is the same in any DataLoader worker and order. A class, not a
    closure, so datasets carrying it pickle into DataLoader workers.
    """

    def __init__(
        self,
        transform: Callable[[dict], dict],
        *,
        modality: str,
        corruption: str,
        severity: int,
        column: str | None = None,
        seed: int = 0,
        index_column: str | None = None,
        sampling_rate: int | None = None,
        num_frames: int | None = None,
    ):
        check_corruption(modality, corruption, severity)
        if modality == "audio" and not sampling_rate:
            raise ValueError("audio corruptions need sampling_rate (the feature extractor's) to decode the clips")
        if modality == "video" and not num_frames:
            raise ValueError("video corruptions need num_frames (the processor's) to decode the clips' frames")
        self.transform = transform
        self.modality, self.corruption, self.severity = modality, corruption, severity
        self.column = column or modality
        self.seed, self.index_column, self.sampling_rate = seed, index_column, sampling_rate
        self.num_frames = num_frames

    def __call__(self, batch: dict[str, list]) -> dict:
        batch = dict(batch)
        if self.column not in batch:
            raise KeyError(
                f"No {self.modality} column {self.column!r} to corrupt in the batch; columns are {list(batch)}"
            )
        if self.index_column is not None:
            if self.index_column not in batch:
                raise KeyError(f"No index column {self.index_column!r} in the batch; columns are {list(batch)}")
            keys = [int(index) for index in batch.pop(self.index_column)]
        else:
            keys = [None] * len(batch[self.column])
        corrupted = [self.corrupt(value, key) for value, key in zip(batch[self.column], keys, strict=True)]
        batch[VIDEO_FRAMES_KEY if self.modality == "video" else self.column] = corrupted
        return self.transform(batch)

    def corrupt(self, value: Any, key: int | None = None) -> Any:
        """One corrupted sample from a raw column value (key: the sample index; None: use its content); for a video,
        its list of corrupted frames."""
        if value is None:
            return None
        if isinstance(value, list | tuple) and self.modality == "text":  # several captions per sample
            return [self.corrupt(text, key) for text in value] if key is None else self._texts(value, key)
        function = corruptions_of(self.modality)[self.corruption]
        if self.modality == "video":
            frames = load_video_frames(value, int(self.num_frames))
            key = content_key(np.stack([np.asarray(f) for f in frames])) if key is None else key
            # A fresh generator per frame: every frame gets the clip's draws (see the module docstring).
            return [function(frame, self.severity, corruption_rng(self.seed, key, self.corruption)) for frame in frames]
        if self.modality == "image":
            sample = load_image(value)
        elif self.modality == "audio":
            sample = load_audio(value, int(self.sampling_rate))
        else:
            sample = str(value)
        rng = corruption_rng(self.seed, content_key(sample) if key is None else key, self.corruption)
        if self.modality == "audio":
            return {
                "array": function(sample, self.severity, rng, sampling_rate=self.sampling_rate),
                "sampling_rate": self.sampling_rate,
            }
        return function(sample, self.severity, rng)

    def _texts(self, texts, key: int) -> list[str]:
        # One generator for the whole list, so the captions of one sample get different typos.
        rng = corruption_rng(self.seed, key, self.corruption)
        return [CORRUPTIONS["text"][self.corruption](str(text), self.severity, rng) for text in texts]
