"""python -m mm_hf.evaluate --retrieval: dual encoders on media-caption retrieval, with corrupted captions."""

import pytest
from conftest import load_recipe
from datasets import Dataset

from mm_hf.errors import UserError
from mm_hf.evaluate import main
from mm_hf.evaluate.retrieval import corrupt_captions


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
    evaluation = main([*argv, "--corruptions", "all", "--severities", "5"])
    tuned = evaluation["models"]["tuned"]
    assert evaluation["sets"]["test"]["samples"] == results["test_samples"] == 20
    for metric in ("image_to_text_recall@1", "text_to_image_recall@5", "text_to_image_median_rank"):
        assert tuned["sets"]["test"]["metrics"][metric] == pytest.approx(results[f"test_{metric}"])
    for entry in evaluation["models"].values():
        assert set(entry["corruptions"]) == {"typos", "word_dropout"}
        for per in entry["corruptions"].values():
            assert set(per) == {"5"} and all(0 <= v <= 1 for v in per.values())
        assert entry["robustness"]["metric"] == "text_to_image_recall@1"
    assert "word_dropout@5" in (tmp_path / "eval" / "evaluation.md").read_text()

    with pytest.raises(UserError, match="--calibration_data: not used by --retrieval"):
        main([*argv, "--calibration_data", str(digits_dir / "validation")])
    with pytest.raises(UserError, match="retrieval corrupts the captions"):
        main([*argv, "--corruptions", "gaussian_noise"])


def test_corrupted_captions_are_seeded_per_item_and_nest_with_severity():
    captions = [["a handwritten seven on white paper today", "the number seven written by hand"]] * 3
    dataset = Dataset.from_dict({"image": ["a.png", "b.png", "c.png"], "captions": captions})
    mild, severe = (corrupt_captions(dataset, "word_dropout", s, seed=0)["captions"] for s in (1, 5))
    assert corrupt_captions(dataset, "word_dropout", 5, seed=0)["captions"] == severe  # deterministic
    assert severe != captions and severe[0] != severe[1]  # items draw their own words
    for light, heavy in zip(mild, severe, strict=True):  # the same draws: a higher severity drops a superset
        for kept_light, kept_heavy in zip(light, heavy, strict=True):
            assert set(kept_heavy.split()) <= set(kept_light.split())
