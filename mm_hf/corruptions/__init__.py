"""Corrupted inputs for robustness evaluation: ImageNet-C-style image corruptions, audio and text perturbations.

`CORRUPTIONS[modality][name](x, severity, rng)` returns a corrupted copy of one sample at severity 1..5:
- image: a PIL image in, an RGB PIL image out;
- audio: a 1-D float waveform in, float32 out (its length changes only for "speed"); audio functions also take
  `sampling_rate=` (only the Vorbis codec needs it);
- text: a string in, a string out.
`rng` is a `numpy.random.Generator`; `corruption_rng(seed, key, name)` makes the one for a sample, so a corruption is
deterministic for a (seed, sample) whatever the DataLoader worker or order (severity is not part of the seed: see
registry.py). `CorruptColumn` applies a corruption to one column of a dataset's batch before the normal transform,
inside DataLoader workers; a video column's decoded frames take the image corruptions.

By concern: `image` (ImageNet-C's corruptions and parameter tables), `audio`, `text`, `registry` (`CORRUPTIONS` per
modality, the --corruptions / --severities parsing and checks, the per-sample generators), `column` (`CorruptColumn`,
the dataset-side wrapper, video frames included).
"""

from .audio import add_noise, clipping, gain, speed, vorbis_compression
from .column import CorruptColumn
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
from .registry import (
    CORRUPTIONS,
    SEVERITIES,
    check_corruption,
    content_key,
    corruption_rng,
    corruptions_of,
    parse_severities,
    select_corruptions,
)
from .text import typos, word_dropout

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "CorruptColumn",
    "add_noise",
    "brightness",
    "check_corruption",
    "clipping",
    "content_key",
    "contrast",
    "corruption_rng",
    "corruptions_of",
    "defocus_blur",
    "fog",
    "gain",
    "gaussian_blur",
    "gaussian_noise",
    "impulse_noise",
    "jpeg_compression",
    "motion_blur",
    "parse_severities",
    "pixelate",
    "rotation",
    "select_corruptions",
    "shot_noise",
    "speed",
    "typos",
    "vorbis_compression",
    "word_dropout",
]
