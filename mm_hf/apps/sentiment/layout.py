"""CMU-MOSEI / CMU-MOSI as the MMSA toolkit distributes them (`label.csv` + `Raw/<video_id>/<clip_id>.mp4`) ->
the recipes' JSONL rows (`prepare_splits`, see the package docstring)."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict

import soundfile as sf

from ...data.video.dataset import load_video_audio
from ...errors import DataError
from .clips import SENTIMENTS

MMSA_MODES = {"train": "train", "valid": "validation", "validation": "validation", "dev": "validation", "test": "test"}


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
    if not os.path.isfile(label_csv):
        raise DataError(f"{label_csv} not found: --data_dir must hold label.csv and Raw/ (the MMSA layout)")
    with open(label_csv, newline="") as f:
        table = list(csv.DictReader(f))
    needed = {"video_id", "clip_id", "text", "label", "mode"}
    missing = needed - set(table[0] if table else ())
    if missing:
        raise DataError(f"{label_csv}: missing column(s) {sorted(missing)} (expected {sorted(needed)})")
    splits = defaultdict(list)
    for line, record in enumerate(table, start=2):
        mode = MMSA_MODES.get(record["mode"].strip().lower())
        if mode is None:
            raise DataError(f"{label_csv} line {line}: mode {record['mode']!r} is not train, valid or test")
        clip = os.path.join(data_dir, "Raw", record["video_id"], f"{record['clip_id']}.mp4")
        if not os.path.isfile(clip):
            raise DataError(f"{label_csv} line {line}: clip {clip} does not exist")
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
