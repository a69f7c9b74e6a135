"""The sentiment application (mm_hf.apps.sentiment): clips whose irony only the voice or the face shows, the
CMU-MOSEI (MMSA) layout and its preparation into recipe rows, and the fused model against each modality alone."""

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, load_recipe

from mm_hf.apps.sentiment import ablation, cli, layout
from mm_hf.apps.sentiment import clips as synthetic
from mm_hf.apps.sentiment import encoders as stand_ins
from mm_hf.args import parse_args
from mm_hf.data.video import load_video_audio, load_video_frames, write_synthetic_video
from mm_hf.errors import UserError, run_cli

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
SHIPPED_CONFIG = os.path.join(REPO, "recipes", "configs", "sentiment.yaml")


def test_no_modality_alone_tells_the_sentiment():
    rows = [
        {"words": c.words, "voice": c.voice, "face": c.face, "annotation": c.label}
        for c in synthetic.IRONY_CASES
        for _ in range(c.weight)
    ]
    assert Counter(r["annotation"] for r in rows) == {"negative": 3, "neutral": 3, "positive": 3}
    # The words alone: praise is positive or ironic (negative) half the time; a plain statement usually neutral.
    assert synthetic.best_accuracy(rows, ("words",)) == pytest.approx(5 / 9)
    assert synthetic.best_accuracy(rows, ("voice",)) == pytest.approx(5 / 9)
    assert synthetic.best_accuracy(rows, ("face",)) == pytest.approx(6 / 9)
    for pair in (("words", "voice"), ("words", "face"), ("voice", "face")):
        assert synthetic.best_accuracy(rows, pair) <= 8 / 9 + 1e-9, pair
    assert synthetic.best_accuracy(rows, synthetic.CASE_FACTORS) == 1.0
    # Irony: the same praise flips with the voice or the face.
    assert synthetic.sentiment_label("praise", "sincere", "smile") == "positive"
    assert synthetic.sentiment_label("praise", "sarcastic", "smile") == "negative"
    assert synthetic.sentiment_label("praise", "sincere", "eye_roll") == "negative"


def _pitch(samples: np.ndarray, rate: int = 16000) -> float:
    """Median F0 (autocorrelation, 60-400 Hz) over the voiced 40 ms frames."""
    size, f0 = int(0.04 * rate), []
    for start in range(0, samples.size - size, size):
        frame = samples[start : start + size]
        if np.abs(frame).max() < 0.1 * np.abs(samples).max():
            continue
        corr = np.correlate(frame, frame, "full")[size - 1 :]
        low, high = rate // 400, rate // 60
        f0.append(rate / (low + np.argmax(corr[low:high])))
    return float(np.median(f0))


@needs_espeak
def test_sarcasm_is_prosody_only():
    speaker = synthetic.Speaker("en-us+m3", pitch=45, speed=165)
    sincere = synthetic.speak("what a *wonderful* day", speaker, "sincere")
    sarcastic = synthetic.speak("what a *wonderful* day", speaker, "sarcastic")
    assert sarcastic.size > 1.3 * sincere.size  # slower
    assert _pitch(sarcastic) > 1.2 * _pitch(sincere)  # higher
    with pytest.raises(ValueError, match="voice must be"):
        synthetic.speak("what a *wonderful* day", speaker, "angry")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("sentiment")
    synthetic.write_sentiment_clips(str(folder), sizes=(9, 9, 9), clips_per_video=3)
    return folder


def test_clips_come_in_the_mosei_layout_and_prepare_into_rows(clips, tmp_path):
    with open(clips / "label.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["video_id", "clip_id", "text", "label", "annotation", "mode", "words", "voice", "face"]
    # 9 clips per split: one full cycle of IRONY_CASES, so every split is balanced; speakers (videos) never straddle splits
    for mode in ("train", "valid", "test"):
        assert Counter(r["annotation"] for r in table if r["mode"] == mode) == dict.fromkeys(
            ("Negative", "Neutral", "Positive"), 3
        )
    videos = {mode: {r["video_id"] for r in table if r["mode"] == mode} for mode in ("train", "valid", "test")}
    assert not (videos["train"] & videos["test"]) and not (videos["train"] & videos["valid"])
    assert all(float(r["label"]) == 0.0 for r in table if r["annotation"] == "Neutral")
    assert all("*" not in r["text"] for r in table)

    files = layout.prepare_splits(str(clips), str(tmp_path / "rows"))
    rows = [json.loads(line) for line in open(files["test"])]
    assert len(rows) == 9 and {r["label"] for r in rows} == set(synthetic.SENTIMENTS)
    row = rows[0]
    clip = tmp_path / "rows" / row["video"]
    frames = load_video_frames(str(clip), 4)
    assert len(frames) == 4 and frames[0].size == (64, 64)
    import soundfile as sf

    sound, rate = sf.read(tmp_path / "rows" / row["audio"])
    assert rate == 16000 and sound.size == load_video_audio(str(clip), 16000).size > 8000  # over half a second
    assert row["transcript"] == next(r["text"] for r in table if r["video_id"] == row["video_id"] and
                                     r["clip_id"] == row["clip_id"])  # fmt: skip


def _mmsa_folder(root: Path, rows: list[dict]) -> Path:
    clip = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    for row in rows:
        os.makedirs(root / "Raw" / row["video_id"], exist_ok=True)
        write_synthetic_video(root / "Raw" / row["video_id"] / f"{row['clip_id']}.mp4", clip, fps=4)
    with open(root / "label.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_prepare_reads_real_mosei_conventions_and_names_bad_rows(tmp_path):
    # No annotation column: the score's sign gives the class; "valid" is the validation split; a clip without a sound
    # track gets an empty audio cell (a missing modality); other columns are carried along.
    rows = [
        {"video_id": "abc", "clip_id": "1", "text": "fine.", "label": "-0.4", "mode": "train", "speaker": "s1"},
        {"video_id": "abc", "clip_id": "2", "text": "ok.", "label": "0.0", "mode": "valid", "speaker": "s1"},
        {"video_id": "xyz", "clip_id": "7", "text": "yes!", "label": "1.2", "mode": "test", "speaker": "s2"},
    ]
    files = layout.prepare_splits(str(_mmsa_folder(tmp_path / "mosei", rows)), str(tmp_path / "out"))
    prepared = {split: [json.loads(line) for line in open(path)] for split, path in files.items()}
    assert [prepared[s][0]["label"] for s in ("train", "validation", "test")] == ["negative", "neutral", "positive"]
    assert prepared["test"][0]["video"] == "../mosei/Raw/xyz/7.mp4" and prepared["test"][0]["audio"] is None
    assert prepared["test"][0]["speaker"] == "s2" and prepared["test"][0]["sentiment"] == 1.2

    bad = tmp_path / "bad"
    _mmsa_folder(bad, [{**rows[0], "mode": "training"}])
    with pytest.raises(ValueError, match=r"label.csv line 2: mode 'training'"):
        layout.prepare_splits(str(bad))
    _mmsa_folder(tmp_path / "gone", [rows[0]])
    (tmp_path / "gone" / "Raw" / "abc" / "1.mp4").unlink()
    with pytest.raises(ValueError, match=r"Raw/abc/1.mp4 does not exist"):
        layout.prepare_splits(str(tmp_path / "gone"))
    _mmsa_folder(tmp_path / "cols", [{k: v for k, v in rows[0].items() if k != "text"}])
    with pytest.raises(ValueError, match=r"label.csv: missing column\(s\) \['text'\]"):
        layout.prepare_splits(str(tmp_path / "cols"))


@pytest.mark.parametrize("modality", ["video", "audio", "text"])
def test_single_modality_configs_parse_with_their_recipes(modality, tmp_path, config_model_folders):
    with open(SHIPPED_CONFIG) as f:
        config = yaml.safe_load(f)
    single = ablation.single_modality_config(config, modality)
    config_model_folders(single)  # the encoders `build` writes
    path = tmp_path / "single.yaml"
    path.write_text(yaml.safe_dump(single))
    recipe = load_recipe(ablation.SINGLE_MODALITY_RECIPES[modality].removesuffix(".py"))
    parse_args(recipe.ARGUMENT_TYPES, ["--config", str(path)])  # unknown keys would fail here
    readers = {"video": "vision_model_name_or_path", "audio": "audio_model_name_or_path", "text": "text_column"}
    assert [m for m, key in readers.items() if key in single] == [modality]
    assert single["output_dir"] == f"{config['output_dir']}_only_{modality}"
    if modality == "audio":  # the files prepare extracts, not the clips' sound track
        assert single["audio_column"] == "audio" and "audio_from_video" not in single
    with pytest.raises(ValueError, match="modality must be one of"):
        ablation.single_modality_config(config, "smell")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from mm_hf.models.tiny import build_tiny_encoders

    root = tmp_path_factory.mktemp("sentiment_encoders")
    return {
        "vision": build_tiny_encoders(str(root / "tiny"))["vision"],
        "audio": stand_ins.build_tiny_whisper(str(root / "whisper")),
        "text": stand_ins.build_word_text_encoder(str(root / "text")),
    }


def _config(tmp_path, rows_dir, encoders, **overrides) -> str:
    """The shipped config on the test's clips and encoders, quiet and without checkpoints."""
    with open(SHIPPED_CONFIG) as f:
        config = yaml.safe_load(f)
    config.update(
        vision_model_name_or_path=encoders["vision"], audio_model_name_or_path=encoders["audio"],
        text_model_name_or_path=encoders["text"], output_dir=str(tmp_path / "fused"),
        report_to="none", disable_tqdm=True, use_cpu=True, save_strategy="no", eval_strategy="no",
        **{f"{split}_file": str(rows_dir / f"{split}.jsonl") for split in ("train", "validation", "test")},
    )  # fmt: skip
    config.update(overrides)
    path = tmp_path / "sentiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def in_process(script, argv):
    load_recipe(Path(script).stem).main(argv)


def test_ablate_trains_one_modality_and_tabulates_the_runs(clips, encoders, tmp_path, capsys):
    layout.prepare_splits(str(clips), str(tmp_path / "rows"))
    config = _config(tmp_path, tmp_path / "rows", encoders, num_train_epochs=1)
    in_process("video_cls.py", ["--config", config])
    result = ablation.ablate(config, ["text"], runner=in_process)
    names = [name for name, _ in result["rows"]]
    assert names == ["fused, untrained heads", "fused video+text+audio", "fused, video missing",
                     "fused, text missing", "fused, audio missing", "text alone"]  # fmt: skip
    printed = capsys.readouterr().out
    assert "| text alone" in printed and "Best possible accuracy from one modality's generating factor" in printed
    assert (tmp_path / "fused" / "ablations.md").read_text() in printed
    # the single-modality run is a complete recipe run of its own, with the config that made it written beside it
    single = yaml.safe_load((tmp_path / "fused_only_text.yaml").read_text())
    assert "vision_model_name_or_path" not in single and single["text_column"] == "transcript"
    assert set(json.loads((tmp_path / "fused_only_text" / "config.json").read_text())["modalities"]) == {"text"}
    # --report_only reads the same folders again, and names a run that never happened
    assert ablation.ablate(config, ["text"], train=False)["margin"] == result["margin"]
    with pytest.raises(UserError, match="fused_only_video/task_report.json not found"):
        ablation.ablate(config, ["video"], train=False)


@pytest.mark.slow
@needs_espeak
def test_fused_model_beats_every_modality_alone(encoders, tmp_path):
    """The demo at half its size: the fused model against each modality trained alone."""
    from mm_hf.demo import pretrained_text_encoder

    data = tmp_path / "data"
    synthetic.write_sentiment_clips(str(data), sizes=(180, 45, 90), seed=1)
    layout.prepare_splits(str(data))
    # The demo's text tower (the packaged MiniLM) where installed: the tiny random BERT's features separate praise
    # from plain statements just as well, but 180 clips train less out of them (text alone measured 0.42).
    encoders = {**encoders, "text": str(pretrained_text_encoder() or encoders["text"])}
    config = _config(tmp_path, data, encoders, num_train_epochs=30)
    in_process("video_cls.py", ["--config", config])
    result = ablation.ablate(config, ["video", "audio", "text"], runner=in_process)
    rows = dict(result["rows"])
    assert rows["fused video+text+audio"]["macro_f1"] >= 0.85, rows
    assert result["margin"] >= 0.15, result  # over the best single modality's macro-F1
    assert rows["text alone"]["accuracy"] <= 0.65  # the words alone cannot see the irony


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["ablate", "--report_only", "--config", "{tmp}/missing.yaml"], "--config {tmp}/missing.yaml not found"),
        (["prepare", "--data_dir", "{tmp}"], "{tmp}/label.csv not found: --data_dir must hold label.csv"),
    ],
)
def test_cli_names_the_missing_file_in_one_paragraph(tmp_path, capsys, argv, culprit):
    with pytest.raises(SystemExit) as exit_:
        run_cli(cli.main, [a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert culprit.format(tmp=tmp_path) in err and "Traceback" not in err
