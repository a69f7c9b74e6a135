"""The recipes' --ood_dir / --ood_file and --robustness: read and checked with the run's data, before training."""

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
