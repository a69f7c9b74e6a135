"""python -m mm_hf.evaluate on a multi-task fusion checkpoint and a video checkpoint: the runs' own test_* numbers."""

import pytest
from conftest import load_recipe

from mm_hf.data.synthetic import write_imagetext_xor, write_video_dataset
from mm_hf.errors import UserError
from mm_hf.evaluate import main
from mm_hf.models.tiny import build_tiny_encoders


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return build_tiny_encoders(str(tmp_path_factory.mktemp("encoders")))


def evaluate(run, test_file, out, *extra):
    return main(["--model", f"run={run}", "--test_file", test_file, "--output_dir", str(out),
                 "--dataloader_num_workers", "0", "--disable_tqdm", "--per_device_eval_batch_size", "4", "--latency_runs", "0", *extra])  # fmt: skip


COMMON = ["--do_train", "--do_predict", "--use_cpu", "true", "--max_steps", "2", "--per_device_train_batch_size", "4",
          "--hidden_size", "32", "--max_seq_length", "12", "--save_strategy", "no", "--report_to", "none",
          "--disable_tqdm", "true"]  # fmt: skip


@pytest.mark.slow  # ~38 s on the busy 2-core machine (a fusion run + 5 scoring passes); single-task: test_evaluate_cli
def test_multi_task_fusion_heads_equal_the_runs_test_numbers(encoders, tmp_path):
    data = write_imagetext_xor(str(tmp_path / "data"), sizes=(12, 4, 10), seed=0)
    run = tmp_path / "run"
    results = load_recipe("fusion_imagetext_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--image_column", "image", "--text_column", "text", "--label_column", "label", "red",
        "--problem_type", "single_label_classification", "binary_classification", "--train_file", data["train"],
        "--test_file", data["test"], "--output_dir", str(run), *COMMON,
    ])  # fmt: skip
    evaluation = evaluate(run, data["test"], tmp_path / "eval", "--corruptions", "typos", "--severities", "5")
    entry = evaluation["models"]["run"]
    assert evaluation["problem_type"] == ["single_label_classification", "binary_classification"]
    assert evaluation["label_names"]["label"] == ["no", "yes"] and evaluation["headline"] == "label_accuracy"
    for metric in ("label_accuracy", "label_macro_f1", "red_roc_auc", "red_accuracy"):
        assert entry["sets"]["test"]["metrics"][metric] == pytest.approx(results[f"test_{metric}"], abs=1e-9)
        for modality in ("image", "text"):
            assert entry["sets"]["test"]["missing_modality"][modality][metric] == pytest.approx(
                results[f"test_without_{modality}_{metric}"], abs=1e-9
            )
    assert 0 <= entry["corruptions"]["typos"]["5"] <= 1


@pytest.mark.slow  # ~20 s on the busy 2-core machine (a video run, PyAV decoding)
def test_video_checkpoint_equals_the_runs_test_numbers(encoders, tmp_path):
    data = write_video_dataset(str(tmp_path / "data"), sizes=(8, 4, 6), seed=2)
    run = tmp_path / "run"
    results = load_recipe("video_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--video_column", "video", "--label_column", "label",
        "--train_file", data["train"], "--test_file", data["test"], "--output_dir", str(run), "--num_frames", "2",
        *COMMON,
    ])  # fmt: skip
    entry = evaluate(run, data["test"], tmp_path / "eval")["models"]["run"]
    assert entry["sets"]["test"]["samples"] == results["test_samples"] == 6
    for metric in ("accuracy", "macro_f1"):
        assert entry["sets"]["test"]["metrics"][metric] == pytest.approx(results[f"test_{metric}"], abs=1e-9)


def test_video_frames_corrupted_alike_by_the_recipe_and_the_evaluator(encoders, tmp_path):
    data = write_video_dataset(str(tmp_path / "data"), sizes=(4, 2, 4), seed=3)
    run = tmp_path / "run"
    results = load_recipe("video_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--video_column", "video", "--label_column", "label",
        "--train_file", data["train"], "--test_file", data["test"], "--output_dir", str(run), "--num_frames", "2",
        "--robustness", *COMMON,
    ])  # fmt: skip
    # --robustness alone on a video run: the image defaults (one per ImageNet-C family), on the frames.
    for name in ("gaussian_noise", "defocus_blur", "brightness", "jpeg_compression"):
        assert 0 <= results[f"corruption_{name}_s3_accuracy"] <= 1
    evaluation = evaluate(run, data["test"], tmp_path / "eval", "--corruptions", "gaussian_noise,rotation",
                          "--severities", "3,5")  # fmt: skip
    entry = evaluation["models"]["run"]
    assert evaluation["corruptions"]["names"] == ["gaussian_noise", "rotation"]
    assert set(entry["corruption_metrics"]["rotation"]) == {"3", "5"}
    assert {"mean_corruption_accuracy", "relative_accuracy"} <= set(entry["robustness"])
    # The recipe's sweep and the evaluator's corrupt the same frames of the same rows (seed 0 both).
    assert entry["corruptions"]["gaussian_noise"]["3"] == results["corruption_gaussian_noise_s3_accuracy"]
    with pytest.raises(UserError, match=r"\['noise'\] not a corruption of this model's modalities \['video'\]; "
                       r"choose from \[.*'gaussian_noise'"):  # fmt: skip
        evaluate(run, data["test"], tmp_path / "bad", "--corruptions", "noise")
