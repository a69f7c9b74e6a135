"""python -m mm_hf.evaluate --retrieval: dual encoders on media-caption retrieval, with corrupted items and captions."""

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import load_recipe
from datasets import Dataset

from mm_hf.corruptions import CORRUPTIONS
from mm_hf.errors import UserError
from mm_hf.evaluate import main
from mm_hf.evaluate.retrieval import corrupt_captions, corrupted_pairs, select_retrieval_corruptions
from mm_hf.models import ContrastiveDualEncoderModel
from mm_hf.retrieval import build_media, embed_media, load_dual_encoder


def test_retrieval_run_equals_its_own_test_numbers_and_captions_are_corrupted(tiny_vtde, digits_dir, tmp_path):
    run = tmp_path / "run"
    results = load_recipe("clip_retrieval").main([
        "--model_name_or_path", tiny_vtde, "--output_dir", str(run), "--do_train", "--train_dir",
        str(digits_dir / "train"), "--test_dir", str(digits_dir / "test"), "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--report_to", "none",
        "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no", "--max_seq_length", "12",
    ])  # fmt: skip
    argv = ["--retrieval", "--model", f"tuned={run}", "--test_dir",
            str(digits_dir / "test"), "--output_dir", str(tmp_path / "eval"), "--dataloader_num_workers", "0",
            "--disable_tqdm", "--latency_runs", "0"]  # fmt: skip
    evaluation = main([*argv, "--corruptions", "typos,word_dropout", "--severities", "5"])
    tuned = evaluation["models"]["tuned"]
    assert evaluation["sets"]["test"]["samples"] == results["test_samples"] == 20
    for metric in ("image_to_text_recall@1", "text_to_image_recall@5", "text_to_image_median_rank"):
        assert tuned["sets"]["test"]["metrics"][metric] == pytest.approx(results[f"test_{metric}"])
    for entry in evaluation["models"].values():
        assert set(entry["corruptions"]) == {"typos", "word_dropout"}
        for per in entry["corruptions"].values():
            assert set(per) == {"5"} and all(0 <= v <= 1 for v in per["5"].values())
        assert entry["corruption_targets"] == {"typos": "text", "word_dropout": "text"}
    assert "word_dropout@5" in (tmp_path / "eval" / "evaluation.md").read_text()

    with pytest.raises(UserError, match="--calibration_data: not used by --retrieval"):
        main([*argv, "--calibration_data", str(digits_dir / "validation")])
    with pytest.raises(UserError, match=r"\['noise'\] not a corruption of an image–text dual encoder; choose from "
                       r"\[.*'gaussian_noise'.*'typos'"):  # fmt: skip
        main([*argv, "--corruptions", "noise"])


def test_corrupted_captions_are_seeded_per_item_and_nest_with_severity():
    captions = [["a handwritten seven on white paper today", "the number seven written by hand"]] * 3
    dataset = Dataset.from_dict({"image": ["a.png", "b.png", "c.png"], "captions": captions})
    mild, severe = (corrupt_captions(dataset, "word_dropout", s, seed=0)["captions"] for s in (1, 5))
    assert corrupt_captions(dataset, "word_dropout", 5, seed=0)["captions"] == severe  # deterministic
    assert severe != captions and severe[0] != severe[1]  # items draw their own words
    for light, heavy in zip(mild, severe, strict=True):  # the same draws: a higher severity drops a superset
        for kept_light, kept_heavy in zip(light, heavy, strict=True):
            assert set(kept_heavy.split()) <= set(kept_light.split())


def test_image_corruptions_of_the_items_are_reported_per_recall(tiny_vtde, digits_dir, tmp_path):
    evaluation = main(["--retrieval", "--model", f"zs={tiny_vtde}", "--test_dir", str(digits_dir / "test"),
                       "--output_dir", str(tmp_path), "--dataloader_num_workers", "0", "--disable_tqdm", "--latency_runs", "0",
                       "--corruptions", "pixelate,typos", "--severities", "1,5"])  # fmt: skip
    entry = evaluation["models"]["zs"]
    assert evaluation["corruptions"]["names"] == ["pixelate", "typos"]
    assert entry["corruption_targets"] == {"pixelate": "image", "typos": "text"}
    keys = ["image_to_text_recall@1", "image_to_text_recall@5", "text_to_image_recall@1", "text_to_image_recall@5"]
    assert list(entry["corruptions"]["pixelate"]["5"]) == keys
    for key in keys:
        summary = entry["robustness"][key]
        means = [np.mean(list(entry["corruptions"][c][s][key] for s in ("1", "5"))) for c in ("pixelate", "typos")]
        assert summary["mean_corruption_accuracy"] == pytest.approx(np.mean(means))
        clean = entry["sets"]["test"]["metrics"][key]
        assert summary["relative_accuracy"] == pytest.approx(np.mean([m / clean for m in means]) if clean else 0.0)
    assert "| pixelate@5 (image items) |" in (tmp_path / "evaluation.md").read_text()
    for modality in ("image", "audio"):  # all: the model's media corruptions and both text ones
        assert set(select_retrieval_corruptions("all", modality)) == {*CORRUPTIONS[modality], "typos", "word_dropout"}


def _tone_pairs(folder):
    rate, rows = 16000, []
    for i, hz in enumerate((220, 330, 440, 660, 880, 1320)):
        t = np.arange(rate) / rate
        sf.write(folder / f"{i}.wav", 0.3 * np.sin(2 * np.pi * hz * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)), rate)
        rows.append(str(folder / f"{i}.wav"))
    return {"audio": rows, "captions": [["a tone"]] * len(rows)}


@pytest.mark.parametrize("model, name", [("tiny_vtde", "gaussian_noise"), ("tiny_clap", "noise")])
def test_corrupted_items_are_seeded_per_item_and_move_further_with_severity(request, digits_dir, tmp_path, model, name):
    backbone, processor, _ = load_dual_encoder(request.getfixturevalue(model))
    if model == "tiny_clap":
        media, pairs = build_media("audio", processor, "audio"), Dataset.from_dict(_tone_pairs(tmp_path))
    else:
        media = build_media("image", processor, "image")
        images = sorted(str(p) for p in (digits_dir / "test").rglob("*.png"))[:8]
        pairs = Dataset.from_dict({"image": images, "captions": [["a digit"]] * len(images)})
    encoder = ContrastiveDualEncoderModel.from_backbone(backbone, name_or_path=model).eval()

    def embeddings(severity=None, seed=0):
        dataset, items = corrupted_pairs(pairs, media, name, media.name, severity, seed) if severity else (pairs, media)
        return torch.nn.functional.normalize(embed_media(encoder, dataset.remove_columns("captions"), items, 8), dim=-1)

    clean = embeddings()
    moved = {s: embeddings(s) for s in (1, 3, 5)}
    assert torch.equal(moved[3], embeddings(3))  # deterministic for the seed
    assert not torch.equal(moved[3], embeddings(3, seed=1))
    distance = [(1 - (moved[s] * clean).sum(-1)).mean().item() for s in (1, 3, 5)]
    assert distance[0] > 0 and np.all(np.diff(distance) >= 0), distance
