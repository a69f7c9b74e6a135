"""The recipes' --ood_dir / --ood_file and --robustness: measured before and after fine-tuning with mm_hf.evaluate's
code, so the run's numbers equal `python -m mm_hf.evaluate` on the same checkpoint and sets."""

import json
import shutil

import pytest
from conftest import load_recipe

from mm_hf.errors import DataError, UserError
from mm_hf.evaluate import main as evaluate

PROMPT = "a photo of the digit {}."


def run_clip(tiny_vtde, digits_dir, out, *extra):
    return load_recipe("clip_imagecls").main([
        "--model_name_or_path", tiny_vtde, "--output_dir", str(out), "--train_dir", str(digits_dir / "train"),
        "--validation_dir", str(digits_dir / "validation"), "--test_dir", str(digits_dir / "test"),
        "--do_train", "--do_eval", "--do_predict", "--finetune_strategy", "linear_probe", "--head_init", "zeroshot",
        "--per_device_eval_batch_size", "16", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
        "--save_strategy", "no", "--prompt_templates", PROMPT, "--dataloader_num_workers", "0", *extra,
    ])  # fmt: skip


def test_recipe_ood_and_corruption_columns_equal_mm_hf_evaluate(tiny_vtde, digits_dir, tmp_path):
    run = tmp_path / "run"
    shifted = str(digits_dir / "validation")
    results = run_clip(tiny_vtde, digits_dir, run, "--ood_dir", f"val={shifted}", "--robustness", "gaussian_noise",
                       "--robustness_severities", "2,5", "--seed", "7")  # fmt: skip
    for before in ("zeroshot_", ""):
        assert results[f"{before}ood_val_samples"] == 16
        assert {f"{before}corruption_gaussian_noise_s2_accuracy", f"{before}corruption_gaussian_noise_s5_accuracy",
                f"{before}corruption_mean_accuracy", f"{before}ood_val_macro_f1"} <= set(results)  # fmt: skip
    on_disk = json.loads((run / "all_results.json").read_text())
    assert on_disk["ood_val_accuracy"] == results["ood_val_accuracy"]
    table = (run / "before_after.md").read_text()
    for row in ("ood_val_accuracy", "ood_val_macro_f1", "corruption_mean_accuracy", "corruption_relative_accuracy"):
        assert row in table
    assert "corruption_mean_accuracy" in (run / "README.md").read_text()  # the card shows the table

    # The same numbers from python -m mm_hf.evaluate: the saved checkpoint (after) and the zero-shot model (before).
    evaluation = evaluate([
        "--model", f"finetuned={run}", "--model", f"zeroshot={tiny_vtde}", "--test_dir", str(digits_dir / "test"),
        "--ood", f"val={shifted}", "--corruptions", "gaussian_noise", "--severities", "2,5", "--seed", "7",
        "--prompt_templates", PROMPT, "--output_dir", str(tmp_path / "eval"), "--dataloader_num_workers", "0",
        "--disable_tqdm", "--num_resamples", "20", "--latency_runs", "0",
    ])  # fmt: skip
    for name, before in (("finetuned", ""), ("zeroshot", "zeroshot_")):
        entry = evaluation["models"][name]
        for metric in ("accuracy", "macro_f1", "weighted_f1"):
            assert results[f"{before}ood_val_{metric}"] == pytest.approx(entry["sets"]["val"]["metrics"][metric])
        for severity in ("2", "5"):
            assert results[f"{before}corruption_gaussian_noise_s{severity}_accuracy"] == pytest.approx(
                entry["corruptions"]["gaussian_noise"][severity]
            )
        assert results[f"{before}corruption_mean_accuracy"] == pytest.approx(
            entry["robustness"]["mean_corruption_accuracy"]
        )
        assert results[f"{before}corruption_relative_accuracy"] == pytest.approx(
            entry["robustness"]["relative_accuracy"]
        )

    # Effective robustness on "val" against the zero-shot model's line (one baseline: slope 1 in logit space).
    line = evaluation["effective_robustness_lines"]["val"]
    assert (line["models"], line["fit"]) == (["zeroshot"], "slope_1_through_point")
    zeroshot, finetuned = (evaluation["models"][n]["sets"] for n in ("zeroshot", "finetuned"))
    id_accuracy, ood_accuracy = (finetuned[s]["metrics"]["accuracy"] for s in ("test", "val"))
    odds = odds_ratio(zeroshot["val"]["metrics"]["accuracy"]) / odds_ratio(zeroshot["test"]["metrics"]["accuracy"])
    expected = odds * odds_ratio(id_accuracy) / (1 + odds * odds_ratio(id_accuracy))
    assert finetuned["val"]["effective_robustness"]["value"] == pytest.approx(ood_accuracy - expected)
    assert zeroshot["val"]["effective_robustness"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert "effective robustness" in (tmp_path / "eval" / "evaluation.md").read_text()


def odds_ratio(p):
    return p / (1 - p)


def test_ood_set_with_labels_unseen_in_training_is_refused_naming_them(tiny_vtde, digits_dir, tmp_path):
    ood = tmp_path / "ood"
    shutil.copytree(digits_dir / "test", ood)
    shutil.copytree(digits_dir / "test" / "one", ood / "five")
    shutil.copytree(digits_dir / "test" / "two", ood / "eight")
    with pytest.raises(DataError, match=r"--ood_dir odd=.*\['eight', 'five'\].*seen in training") as error:
        run_clip(tiny_vtde, digits_dir, tmp_path / "run", "--ood_dir", f"odd={ood}")
    assert not (tmp_path / "run" / "all_results.json").exists()  # refused before training
    assert "one" in str(error.value)  # the labels it knows are listed too


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ood_dir", "a=x", "--ood_file", "a=y.csv"], "the name 'a' is already given"),
        (["--ood_dir", "no-equals-sign"], "expected NAME=PATH"),
        (["--ood_dir", "test=x"], "'test' names the run's own test split"),
        (["--robustness", "gaussian_noise,snow"], "--robustness gaussian_noise,snow: .*snow"),
        (["--robustness_severities", "3"], "pass --robustness too"),
        (["--robustness", "--robustness_severities", "0,9"], "--robustness_severities '0,9'"),
    ],
)
def test_bad_shift_flags_are_refused(tiny_vtde, digits_dir, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        run_clip(tiny_vtde, digits_dir, tmp_path / "run", *flags)


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory):
    """Tiny fusion encoders and image+text XOR rows (the OOD file has a label 'maybe' the run never saw)."""
    from mm_hf.data.synthetic import write_imagetext_xor
    from mm_hf.models.tiny import build_tiny_encoders

    root = tmp_path_factory.mktemp("xor")
    encoders = build_tiny_encoders(str(root / "encoders"))
    data = write_imagetext_xor(str(root / "data"), sizes=(8, 4, 4), seed=0)
    rows = [json.loads(line) for line in open(data["test"])]
    rows[0]["label"] = "maybe"
    odd = root / "data" / "odd.jsonl"
    odd.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return encoders, data, str(odd)


def run_fusion(xor_run, out, *extra):
    encoders, data, _ = xor_run
    return load_recipe("fusion_imagetext_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--image_column", "image", "--text_column", "text", "--label_column", "label", "--train_file", data["train"],
        "--test_file", data["test"], "--output_dir", str(out), "--do_train", "--use_cpu", "true", "--max_steps", "1",
        "--report_to", "none", "--disable_tqdm", "true", *extra,
    ])  # fmt: skip


@pytest.mark.parametrize(
    "flags, error, message",
    [
        (lambda odd: ["--ood_file", f"odd={odd}"], DataError, r"--ood_file odd=.*label\(s\) \['maybe'\] were not seen"),
        (lambda odd: ["--ood_dir", f"odd={odd}"], UserError, "fusion data are CSV/JSONL files"),
        (lambda odd: ["--robustness", "typos,pixelate,noise"], UserError, r"\['noise'\] not a corruption of this"),
    ],
)
def test_fusion_shift_flags_are_checked_before_training(xor_run, tmp_path, flags, error, message):
    with pytest.raises(error, match=message):
        run_fusion(xor_run, tmp_path / "run", *flags(xor_run[2]))
    assert not (tmp_path / "run" / "all_results.json").exists()
