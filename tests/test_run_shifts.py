"""The recipes' --ood_dir / --ood_file and --robustness flags and sets, checked before training. (That a run's numbers
equal `python -m mm_hf.evaluate`'s is tested in test_evaluate_cli.py on its LoRA, audio and fusion runs.)"""

import json
import shutil

import pytest
from conftest import load_recipe

from mm_hf.errors import DataError, UserError

PROMPT = "a photo of the digit {}."


def run_clip(tiny_vtde, digits_dir, out, *extra):
    return load_recipe("clip_imagecls").main([
        "--model_name_or_path", tiny_vtde, "--output_dir", str(out), "--train_dir", str(digits_dir / "train"),
        "--validation_dir", str(digits_dir / "validation"), "--test_dir", str(digits_dir / "test"),
        "--do_train", "--do_eval", "--do_predict", "--finetune_strategy", "linear_probe", "--head_init", "zeroshot",
        "--per_device_eval_batch_size", "16", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
        "--save_strategy", "no", "--prompt_templates", PROMPT, "--dataloader_num_workers", "0", *extra,
    ])  # fmt: skip


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
