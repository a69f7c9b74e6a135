"""The synthetic clips: espeak-ng speaks a sentence, sincerely or sarcastically, and PIL draws a face that smiles,
stays neutral or rolls its eyes; `write_sentiment_clips` writes them in the MMSA layout (see the package docstring).
The generating factors (`IRONY_CASES`) leave every modality alone far from the label (`best_accuracy`)."""

from __future__ import annotations

import csv
import os
import shutil
import string
import subprocess
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr
from PIL import Image, ImageDraw

from ...data.video.synthetic_clips import write_synthetic_video

SENTIMENTS = ("negative", "neutral", "positive")


# --- the generating factors ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    words: str  # "praise" or "plain"
    voice: str  # "sincere" or "sarcastic"
    face: str  # "smile", "neutral" or "eye_roll"
    weight: int  # how many of every 9 clips

    @property
    def label(self) -> str:
        return sentiment_label(self.words, self.voice, self.face)


def sentiment_label(words: str, voice: str, face: str) -> str:
    """Irony (a sarcastic voice or an eye-roll) makes any words negative; else praise or a smile is positive."""
    if voice == "sarcastic" or face == "eye_roll":
        return "negative"
    return "positive" if words == "praise" or face == "smile" else "neutral"


# Chosen by enumerating weights 0-3 over the 12 combinations: classes balanced (3 of 9 each), the three ironies kept
# (praise + sarcastic voice behind a smile, praise + eye-roll with a sincere voice, a sarcastic plain remark), and
# the best single-modality accuracy as low as it goes (0.67, the face), every pair of modalities at most 0.89.
IRONY_CASES = (
    Case("praise", "sincere", "smile", 1),  # positive: sincere praise
    Case("praise", "sincere", "neutral", 1),  # positive: calm praise
    Case("praise", "sincere", "eye_roll", 1),  # negative: irony only the face shows
    Case("praise", "sarcastic", "smile", 1),  # negative: irony only the voice shows (a polite smile)
    Case("plain", "sincere", "smile", 1),  # positive: good news
    Case("plain", "sincere", "neutral", 3),  # neutral
    Case("plain", "sarcastic", "neutral", 1),  # negative: a sarcastic remark
)
CASE_FACTORS = ("words", "voice", "face")  # transcript, audio, video

# The stressed word in *stars*: a sarcastic voice drags and raises it (SSML emphasis + prosody).
PRAISE = (
    "what a *wonderful* day", "that went *perfectly*", "this is just *great*", "I *love* this plan",
    "that was *brilliant*", "great job *everyone*", "what a *lovely* surprise", "oh that is *fantastic*",
    "best meeting *ever*", "you are *so* helpful", "this is *exactly* what I wanted", "well *that* was fun",
)  # fmt: skip
PLAIN = (
    "the meeting moved to *friday*", "the train leaves at *nine*", "we painted the kitchen *blue*",
    "my sister called this *morning*", "the report is on your *desk*", "they changed the *menu* today",
    "the store opens at *ten*", "I bought a new *chair*", "the bus was *full* again", "we are having *soup* tonight",
    "the printer is on the *second* floor", "he moved to a *new* flat",
)  # fmt: skip


def transcript(sentence: str) -> str:
    return sentence.replace("*", "")


def best_accuracy(rows: list[dict], factors: tuple[str, ...]) -> float:
    """The highest accuracy any classifier can reach on `rows` seeing only `factors` (a subset of CASE_FACTORS): each
    combination of their values predicts its most frequent label. 1.0 with all three factors."""
    counts = defaultdict(Counter)
    for row in rows:
        counts[tuple(row[f] for f in factors)][row["annotation"]] += 1
    return sum(max(c.values()) for c in counts.values()) / max(len(rows), 1)


# --- speech ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speaker:
    voice: str  # espeak-ng voice+variant, e.g. "en-us+m3"
    pitch: int  # 0-99, espeak-ng's base pitch
    speed: int  # words per minute


def require_espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng): the clips' speech needs it")
    return path


def speak(sentence: str, speaker: Speaker, voice: str, sampling_rate: int = 16000) -> np.ndarray:
    """`sentence` spoken by `speaker`, sincerely or sarcastically: float32 mono samples at `sampling_rate`.

    Sarcasm is prosody only, the words stay the same: 35 % slower, the base pitch raised by 40, and the starred word
    stressed (SSML `<emphasis level="strong">`) and drawn out higher (`<prosody rate="x-slow" pitch="x-high">`).
    """
    if voice not in ("sincere", "sarcastic"):
        raise ValueError(f"voice must be 'sincere' or 'sarcastic', got {voice!r}")
    before, word, after = sentence.split("*")
    pitch, speed = speaker.pitch, speaker.speed
    if voice == "sarcastic":
        word = f'<emphasis level="strong"><prosody rate="x-slow" pitch="x-high">{word}</prosody></emphasis>'
        pitch, speed = min(pitch + 40, 99), int(speed * 0.65)
    ssml = f"<speak>{before}{word}{after}</speak>"
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        command = [require_espeak(), "-m", "-v", speaker.voice, "-p", str(pitch), "-s", str(speed), "-w", tmp.name]
        subprocess.run([*command, ssml], check=True, capture_output=True)
        samples, rate = sf.read(tmp.name, dtype="float32")
    if rate != sampling_rate:
        samples = soxr.resample(samples, rate, sampling_rate)
    return samples.astype(np.float32)


# --- faces ----------------------------------------------------------------------------------------------------------

SKIN_TONES = ((241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172), (234, 192, 134))


@dataclass(frozen=True)
class Face:
    skin: tuple[int, int, int]
    background: tuple[int, int, int]
    centre: tuple[float, float]  # head centre, fraction of the frame
    scale: float


def draw_face(face: Face, expression: str, intensity: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 frame of `face` showing `expression` (smile, neutral, eye_roll) at `intensity` 0-1.

    A smile opens the mouth wide (teeth showing) and lifts the brows; an eye-roll turns the pupils up under lowered
    brows and pulls the mouth's corners down; neutral keeps a closed, straight mouth. Features are drawn large, so
    they survive the encoder's 32x32 input. Head position jitters and the background is noisy, so frames differ
    beyond the expression.
    """
    if expression not in ("smile", "neutral", "eye_roll"):
        raise ValueError(f"expression must be smile, neutral or eye_roll, got {expression!r}")
    background = np.array(face.background, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    u = size * face.scale / 64  # drawing unit: the face is designed on a 64-pixel frame
    cx = size * face.centre[0] + rng.normal(0, 0.5)
    cy = size * face.centre[1] + rng.normal(0, 0.5)
    draw.ellipse((cx - 26 * u, cy - 30 * u, cx + 26 * u, cy + 30 * u), fill=face.skin)
    dark, lips, k = (35, 20, 15), (140, 30, 40), intensity
    for side in (-1, 1):
        ex, ey = cx + side * 11 * u, cy - 9 * u
        draw.ellipse((ex - 6.5 * u, ey - 5 * u, ex + 6.5 * u, ey + 5 * u), fill=(250, 250, 250))
        up = 3.5 * u * k if expression == "eye_roll" else 0.0
        draw.ellipse((ex - 3.2 * u, ey - 3.2 * u - up, ex + 3.2 * u, ey + 3.2 * u - up), fill=dark)
        # brows: lifted for a smile, inner ends pulled down for the eye-roll
        lift = {"smile": -3.0, "neutral": 0.0, "eye_roll": 4.0}[expression] * u * k
        inner, outer = ey - 10 * u + lift, ey - 10 * u - (2 * u * k if expression == "smile" else 0)
        draw.line((ex - side * 7 * u, inner, ex + side * 7 * u, outer), fill=dark, width=max(2, round(2.5 * u)))
    mouth_y, half = cy + 15 * u, 14 * u
    if expression == "smile":  # an open D: straight upper lip, the lower one hanging by up to 12 units
        depth = 12 * u * k
        lower = [(cx + half * x, mouth_y + depth * (1 - x * x)) for x in np.linspace(1, -1, 12)]
        draw.polygon([(cx - half, mouth_y), (cx + half, mouth_y), *lower], fill=lips)
        draw.rectangle((cx - 0.7 * half, mouth_y, cx + 0.7 * half, mouth_y + 0.3 * depth), fill=(245, 245, 240))
    else:  # closed: a straight line, or an arch whose corners drop by up to 9 units
        bend = (9 * u * k) if expression == "eye_roll" else 0.0
        points = [(cx + half * x, mouth_y - bend * (1 - x * x) + bend / 2) for x in np.linspace(-1, 1, 12)]
        draw.line(points, fill=lips, width=max(2, round(3.5 * u)), joint="curve")
    return np.asarray(image)


def face_clip(face: Face, expression: str, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(num_frames, size, size, 3): the expression forms over the first third of the clip, then holds."""
    frames = []
    for t in range(num_frames):
        intensity = min(1.0, 0.2 + 0.8 * t / max(num_frames / 3, 1))
        frames.append(draw_face(face, expression, intensity, size, rng))
    return np.stack(frames)


# --- the dataset ----------------------------------------------------------------------------------------------------

SPEAKER_VOICES = ("en-us+m1", "en-us+m2", "en-us+m3", "en-us+m4", "en-us+m7", "en+m1", "en+m3", "en+m4")


def _video_id(rng: np.random.Generator) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"  # YouTube ids, as MOSEI's video_id column holds
    return "".join(rng.choice(list(alphabet), 11))


def write_sentiment_clips(
    output_dir: str,
    sizes: tuple[int, int, int] = (360, 90, 180),
    seed: int = 0,
    clips_per_video: int = 6,
    fps: int = 8,
    frame_size: int = 64,
    sampling_rate: int = 16000,
) -> dict[str, int]:
    """Write `Raw/<video_id>/<clip_id>.mp4` + `label.csv` (the MMSA layout, see the module docstring) under
    `output_dir`; returns clips per split. `sizes` = clips in (train, valid, test).

    Each video is one speaker (an espeak-ng voice at its own pitch and speed, a face with its own skin tone,
    background and position) saying `clips_per_video` utterances; videos never straddle splits. Each split cycles
    through `IRONY_CASES` by weight, so its classes are balanced. label.csv also holds the generating factors (`words`,
    `voice`, `face`) for analysis; the recipes never read them.
    """
    require_espeak()
    rng = np.random.default_rng(seed)
    rows, counts = [], {}
    for mode, n in zip(("train", "valid", "test"), sizes, strict=True):
        cases = [case for case in IRONY_CASES for _ in range(case.weight)]
        plan = [cases[i % len(cases)] for i in range(n)]
        plan = [plan[i] for i in rng.permutation(n)]
        for start in range(0, n, clips_per_video):
            video_id = _video_id(rng)
            speaker = Speaker(str(rng.choice(SPEAKER_VOICES)), int(rng.integers(30, 60)), int(rng.integers(150, 185)))
            colour = tuple(int(c) for c in rng.integers(60, 200, 3))
            centre = (float(rng.uniform(0.47, 0.53)), float(rng.uniform(0.48, 0.52)))
            face = Face(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], colour, centre, float(rng.uniform(0.9, 1.0)))
            os.makedirs(os.path.join(output_dir, "Raw", video_id), exist_ok=True)
            for clip_id, case in enumerate(plan[start : start + clips_per_video], start=1):
                sentence = str(rng.choice(PRAISE if case.words == "praise" else PLAIN))
                speech = speak(sentence, speaker, case.voice, sampling_rate)
                speech = speech + rng.normal(0, 0.003, speech.size).astype(np.float32)  # a quiet room, not silence
                num_frames = max(4, int(np.ceil(speech.size / sampling_rate * fps)))
                frames = face_clip(face, case.face, num_frames, frame_size, rng)
                path = os.path.join(output_dir, "Raw", video_id, f"{clip_id}.mp4")
                write_synthetic_video(path, frames, fps=fps, audio=speech, sampling_rate=sampling_rate)
                score = float(rng.choice([1.0, 1.33, 1.67, 2.0, 2.33, 2.67, 3.0]))
                score = {"positive": score, "neutral": 0.0, "negative": -score}[case.label]
                rows.append(
                    {"video_id": video_id, "clip_id": clip_id, "text": transcript(sentence), "label": score,
                     "annotation": case.label.capitalize(), "mode": mode, "words": case.words, "voice": case.voice,
                     "face": case.face}
                )  # fmt: skip
        counts[mode] = n
    with open(os.path.join(output_dir, "label.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return counts
