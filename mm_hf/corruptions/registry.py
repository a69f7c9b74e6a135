"""The corruptions by modality (`CORRUPTIONS`), their flags' parsing and checks, and the per-sample random draws.

`corruption_rng(seed, key, name)` makes the generator for a sample, so a corruption is deterministic for a
(seed, sample) whatever the DataLoader worker or order. Severity is deliberately not part of the seed: all five
severities of a sample share the same random draws (common random numbers), so a higher severity scales the same
noise / drops a superset of the same words instead of drawing new ones, and accuracy against severity is not blurred
by resampling noise.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from ..errors import UserError
from .audio import add_noise, clipping, gain, speed, vorbis_compression
from .image import (
    brightness,
    contrast,
    defocus_blur,
    fog,
    gaussian_blur,
    gaussian_noise,
    impulse_noise,
    jpeg_compression,
    motion_blur,
    pixelate,
    rotation,
    shot_noise,
)
from .text import typos, word_dropout

SEVERITIES = (1, 2, 3, 4, 5)

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
