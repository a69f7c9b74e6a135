"""Synthetic multimodal datasets whose labels need the fusion of modalities (tests and offline demos).

- `write_imagetext_xor`: image (a reddish or bluish photo-like tile) + text (a sentence saying the item is
  large or small) -> label "yes" iff exactly one of (image is red, text says large) holds. Each modality alone
  is at chance (50 %); only a model that combines both can solve it, so a test can assert that fusion beats
  either encoder alone.
- `write_click_dataset`: product image (category by colour) + title text (brand word) + user features
  (age, segment, price with missing values) -> click (0/1), for the recommendation example.

Rows go to `<split>.jsonl` with image paths relative to the file; `missing_rate` blanks modalities at random.
"""

import json
import os

import numpy as np
from PIL import Image

from .video.synthetic_clips import write_synthetic_video

LARGE_WORDS = ("large", "big", "huge", "giant")
SMALL_WORDS = ("small", "tiny", "little", "mini")
THINGS = ("box", "lamp", "chair", "bottle", "bag", "vase")
COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200), "green": (40, 170, 60)}


def _tile(rng: np.random.Generator, colour: tuple[int, int, int], size: int) -> Image.Image:
    """A noisy tile of `colour` with a random grey rectangle on it (so images differ beyond their colour)."""
    base = np.array(colour, dtype=np.float32) + rng.normal(0, 25, (size, size, 3))
    x0, y0 = rng.integers(0, size // 2, 2)
    w, h = rng.integers(size // 4, size // 2, 2)
    base[y0 : y0 + h, x0 : x0 + w] = rng.integers(60, 200)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _write_rows(output_dir: str, split: str, rows: list[dict]) -> str:
    path = os.path.join(output_dir, f"{split}.jsonl")
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_imagetext_xor(
    output_dir: str,
    sizes: tuple[int, int, int] = (200, 60, 100),
    seed: int = 0,
    image_size: int = 32,
    missing_rate: float = 0.0,
) -> dict[str, str]:
    """Write `{train,validation,test}.jsonl` (+ images/) for the image-text XOR task; returns split -> file.

    Columns: `image` (relative path or None), `text` (or None), `label` ("yes"/"no"), and the generating
    factors `red` and `large` (0/1) for analysis. With `missing_rate`, each modality of a row is blanked
    with that probability (never both).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    files = {}
    for split, n in zip(("train", "validation", "test"), sizes, strict=True):
        rows = []
        for i in range(n):
            red, large = int(rng.integers(2)), int(rng.integers(2))
            name = f"images/{split}_{i:05d}.png"
            _tile(rng, COLOURS["red" if red else "blue"], image_size).save(os.path.join(output_dir, name))
            word = rng.choice(LARGE_WORDS if large else SMALL_WORDS)
            text = f"a {word} {rng.choice(THINGS)} on the shelf"
            row = {"image": name, "text": text, "label": "yes" if red != large else "no", "red": red, "large": large}
            drop = rng.random() < missing_rate
            if drop:
                row["image" if rng.random() < 0.5 else "text"] = None
            rows.append(row)
        files[split] = _write_rows(output_dir, split, rows)
    return files


def write_click_dataset(
    output_dir: str,
    sizes: tuple[int, int, int] = (400, 100, 200),
    seed: int = 0,
    image_size: int = 32,
) -> dict[str, str]:
    """Write `{train,validation,test}.jsonl` (+ images/) for click prediction; returns split -> file.

    A product has a category (its image colour) and a brand (a word in its title); a user has an age, a
    segment (which category they like) and sees a price (missing for 10 % of rows). The click probability is
    high when the segment likes the category, the brand is "acme", and the price is low: image, text and
    tabular features all matter. Label column `click` (0/1).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    categories, brands = list(COLOURS), ("acme", "zenith", "orbit")
    files = {}
    for split, n in zip(("train", "validation", "test"), sizes, strict=True):
        rows = []
        for i in range(n):
            category, segment = rng.choice(categories), rng.choice(categories)
            brand = rng.choice(brands)
            price, age = float(rng.uniform(5, 100)), int(rng.integers(18, 70))
            logit = 2.5 * (segment == category) + 1.5 * (brand == "acme") - 0.04 * price + 0.5
            click = int(rng.random() < 1 / (1 + np.exp(-3 * (logit - 1.0))))
            name = f"images/{split}_{i:05d}.png"
            _tile(rng, COLOURS[category], image_size).save(os.path.join(output_dir, name))
            title = f"{brand} {rng.choice(THINGS)} {rng.choice(SMALL_WORDS + LARGE_WORDS)}"
            shown_price = None if rng.random() < 0.1 else round(price, 2)
            rows.append(
                {"image": name, "title": title, "age": age, "segment": segment, "price": shown_price, "click": click}
            )
        files[split] = _write_rows(output_dir, split, rows)
    return files


# Colour transitions: each pair appears in both directions, so the average frame is the same for the two
# directions and only the order of frames tells them apart.
TRANSITIONS = (("red", "blue"), ("blue", "red"), ("green", "red"), ("red", "green"))


def make_colour_transition_clip(
    start: str, end: str, num_frames: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """(num_frames, size, size, 3) uint8 frames fading from colour `start` to `end`, with noise and a grey
    rectangle that drifts at random (so frames differ beyond their colour)."""
    frames = []
    for t in range(num_frames):
        w = t / max(num_frames - 1, 1)
        colour = (1 - w) * np.array(COLOURS[start], dtype=np.float32) + w * np.array(COLOURS[end], dtype=np.float32)
        frames.append(np.asarray(_tile(rng, tuple(colour), size)))
    return np.stack(frames)


def write_video_dataset(
    output_dir: str,
    sizes: tuple[int, int, int] = (80, 20, 40),
    seed: int = 0,
    num_frames: int = 8,
    size: int = 32,
    fps: int = 8,
    sampling_rate: int = 16000,
) -> dict[str, str]:
    """Write `{train,validation,test}.jsonl` + videos/*.mp4 (frames + a sound track) for video classification.

    The label is a colour transition (`TRANSITIONS`, e.g. "red-to-blue"): each pair of colours occurs in both
    directions, so averaging the frames cannot tell "red-to-blue" from "blue-to-red"; a temporal pooling that
    sees frame order (the temporal transformer) can. Each clip carries a tone whose pitch is random (it says
    nothing about the label) and a transcript column with a neutral sentence. Returns split -> file.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(output_dir, "videos"), exist_ok=True)
    t = np.arange(int(sampling_rate * num_frames / fps)) / sampling_rate
    files = {}
    for split, n in zip(("train", "validation", "test"), sizes, strict=True):
        rows = []
        for i in range(n):
            start, end = TRANSITIONS[i % len(TRANSITIONS)]
            name = f"videos/{split}_{i:04d}.mp4"
            tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.01 * rng.standard_normal(t.size)
            frames = make_colour_transition_clip(start, end, num_frames, size, rng)
            write_synthetic_video(
                os.path.join(output_dir, name), frames, fps=fps, audio=tone, sampling_rate=sampling_rate
            )
            text = f"the {rng.choice(THINGS)} is on the shelf"
            rows.append({"video": name, "transcript": text, "label": f"{start}-to-{end}"})
        files[split] = _write_rows(output_dir, split, rows)
    return files
