"""Bad input tried as a new user would: one paragraph naming the culprit and the fix, exit status 2, no traceback.

A few cases run recipes/clip_imagecls.py as a subprocess (exit status, stderr); the rest call `main([...])` and
check the error type, its message and that nothing was written (the error comes before any training).
"""

import logging
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, load_recipe
from PIL import Image
from transformers import TrainingArguments

from mm_hf.args import DataArguments, FinetuneArguments, ModelArguments, parse_args
from mm_hf.data.images import BadSampleError
from mm_hf.data.labels import encode_labels
from mm_hf.data.loading import load_classification_splits
from mm_hf.errors import DataError, UserError, run_cli
from mm_hf.run import train_and_evaluate

recipe = load_recipe("clip_imagecls")
RECIPES = ("clip_imagecls", "audio_cls", "clip_retrieval", "fusion_imagetext_cls", "video_cls")


def recipe_args(model, out, *extra):
    return [
        "--model_name_or_path", str(model), "--output_dir", str(out), "--do_train", "--max_steps", "1",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
        "--save_strategy", "no", "--prompt_templates", "a photo of the digit {}.", *map(str, extra),
    ]  # fmt: skip


def run_script(*args):
    """recipes/clip_imagecls.py as a user runs it: (exit status, stderr)."""
    env = {**{k: v for k, v in os.environ.items() if k != "MM_HF_DEBUG"}, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "recipes", "clip_imagecls.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return done.returncode, done.stderr


def latin1_csv(digits_dir, path):
    """A CSV saved by a spreadsheet in Latin-1: 'zéro' is the byte 0xe9, not UTF-8."""
    rows = ["image,label"]
    for name, label in (("zero", "zéro"), ("one", "un")):
        rows += [f"{p},{label}" for p in sorted((digits_dir / "train" / name).iterdir())[:3]]
    path.write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    return path


# ------------------------------------------------------------------------------------- as a user runs it


def test_latin1_csv_exits_2_naming_the_line_and_the_fix(tiny_vtde, digits_dir, tmp_path):
    csv_path = latin1_csv(digits_dir, tmp_path / "labels.csv")
    out = tmp_path / "out"
    status, stderr = run_script(*recipe_args(tiny_vtde, out, "--train_file", csv_path))
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert f"{csv_path} is not UTF-8 text: line 2" in stderr and "zéro" in stderr
    assert "iconv -f latin1 -t utf-8 labels.csv > labels.utf8.csv" in stderr
    assert not out.exists()


def test_missing_model_folder_exits_2_and_says_it_is_no_hub_id_either(digits_dir, tmp_path):
    out = tmp_path / "out"
    status, stderr = run_script(*recipe_args("./no_such_model", out, "--train_dir", digits_dir / "train"))
    assert status == 2, stderr
    assert "Traceback" not in stderr and "Repo id must be" not in stderr
    assert "--model_name_or_path ./no_such_model: no such folder" in stderr
    assert "not a Hub model id either" in stderr


def test_corrupt_image_exits_2_naming_file_and_flag_and_traceback_on_request(tiny_vtde, digits_dir, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(digits_dir / "train", train)
    (train / "zero" / "broken.png").write_bytes(b"not a png")
    args = recipe_args(tiny_vtde, tmp_path / "out", "--train_dir", train, "--test_dir", digits_dir / "test")
    status, stderr = run_script(*args)
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert "broken.png: not an image file" in stderr and "--skip_bad_samples" in stderr
    assert "skip_bad=True" not in stderr
    with pytest.raises(BadSampleError, match="broken.png"):  # --traceback: the error propagates with its traceback
        run_cli(recipe.main, [*args, "--traceback"])


# --------------------------------------------------------------------------------------- run_cli itself


def test_hub_id_the_hub_does_not_have_exits_2_with_transformers_message(digits_dir, tmp_path, monkeypatch, capsys):
    from hub_server import HubTestServer, use_hub_server

    with HubTestServer() as server:
        use_hub_server(monkeypatch, server, cache_dir=tmp_path / "hf-cache")
        args = recipe_args("someone/no-such-model", tmp_path / "out", "--train_dir", digits_dir / "train")
        with pytest.raises(SystemExit) as exited:
            run_cli(recipe.main, args)
    assert exited.value.code == 2
    assert "someone/no-such-model is not a local folder and is not a valid model identifier" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_cli_turns_user_errors_into_exit_2_and_keeps_other_tracebacks(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MM_HF_DEBUG", raising=False)

    def bad_input(argv):
        raise DataError("data.csv: row 3 has no label; fill it in")

    with pytest.raises(SystemExit) as exited:
        run_cli(bad_input, ["--output_dir", "o"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: data.csv: row 3 has no label; fill it in" in err and "--traceback" in err

    for argv in (["--traceback"], ["--traceback", "true"], ["--traceback=yes"]):
        with pytest.raises(DataError):
            run_cli(bad_input, argv)
    with pytest.raises(SystemExit):
        run_cli(bad_input, ["--traceback", "false"])
    config = tmp_path / "run.yaml"
    config.write_text("traceback: true\n")
    with pytest.raises(DataError):  # a --config file's traceback: true is honoured too
        run_cli(bad_input, ["--config", str(config)])
    monkeypatch.setenv("MM_HF_DEBUG", "1")
    with pytest.raises(DataError):
        run_cli(bad_input, [])
    monkeypatch.delenv("MM_HF_DEBUG")

    def bug(argv):
        raise KeyError("validation")

    with pytest.raises(KeyError):  # not a user error: the traceback stays
        run_cli(bug, [])


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_accepts_traceback_and_ends_with_run_cli(name):
    module = load_recipe(name)
    parsed = parse_args(module.ARGUMENT_TYPES, ["--output_dir", "o", "--traceback"])
    assert next(a for a in parsed if isinstance(a, FinetuneArguments)).traceback is True
    with open(os.path.join(REPO, "recipes", f"{name}.py")) as f:
        assert f.read().rstrip().endswith('if __name__ == "__main__":\n    run_cli(main)')


def test_argument_errors_are_user_errors(tmp_path):
    types = (ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)
    with pytest.raises(UserError, match="--finetune_strategy must be one of"):
        parse_args(types, ["--output_dir", "o", "--finetune_strategy", "lorra"])
    # TrainingArguments' own checks on flag values
    with pytest.raises(UserError, match="invalid arguments: --load_best_model_at_end requires the save and eval"):
        parse_args(
            types,
            ["--output_dir", "o", "--load_best_model_at_end", "--eval_strategy", "steps", "--save_strategy", "epoch"],
        )
    with pytest.raises(UserError, match=r"unknown key\(s\) in --config"):
        config = tmp_path / "c.yaml"
        config.write_text("learnin_rate: 0.1\n")
        parse_args(types, ["--config", str(config)])


# ------------------------------------------------------------------------------ in process, before training


def test_no_held_out_split_is_refused_before_training(tiny_vtde, digits_dir, tmp_path):
    out = tmp_path / "out"
    args = recipe_args(tiny_vtde, out, "--train_dir", digits_dir / "train", "--train_val_split", "0", "--do_eval")
    with pytest.raises(DataError, match="nothing to evaluate on") as caught:
        recipe.main(args)
    assert "--validation_dir" in str(caught.value) and "--train_val_split 0.15" in str(caught.value)
    assert not out.exists()


def test_before_after_protocol_refuses_train_alone_before_touching_the_trainer():
    # The fusion recipes' loader accepts a train split alone; their protocol then had nothing to evaluate on.
    with pytest.raises(DataError, match="nothing to evaluate on"):
        train_and_evaluate(None, {"train": [0, 1]}, None, None, before_label="zero-shot")


def test_single_class_training_data_is_refused(tiny_vtde, digits_dir, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(digits_dir / "train" / "zero", train / "zero")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"single class \('zero'\); a classifier needs at least two classes") as caught:
        recipe.main(recipe_args(tiny_vtde, out, "--train_dir", train, "--test_dir", digits_dir / "test"))
    assert f"{train}/<class name>/<file>" in str(caught.value)
    assert not out.exists()


def test_single_class_in_a_label_column_is_refused():
    import datasets

    train = datasets.Dataset.from_dict({"label": ["cat"] * 4})
    with pytest.raises(DataError, match="every training label in column 'label' is 'cat'.*--label_column"):
        encode_labels({"train": train}, ["label"], "single_label_classification", sources={"train": "t.csv"})


def test_too_few_rows_per_class_for_a_stratified_split_warn_and_split_at_random(tmp_path, caplog):
    for c in range(10):  # 60 rows over 10 classes: 15 % holds out 9 rows, fewer than the classes
        (tmp_path / f"class{c}").mkdir()
        for i in range(6):
            Image.new("L", (4, 4), c).save(tmp_path / f"class{c}" / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="mm_hf.data.loading"):
        splits = load_classification_splits(DataArguments(train_dir=str(tmp_path)), "image", "label")
    assert (len(splits["train"]), len(splits["validation"])) == (51, 9)
    assert "holds out 9 of 60 training rows, fewer than the 10 classes" in caplog.text
    assert "not stratified" in caplog.text and "--train_val_split 0.17" in caplog.text
    # the suggested fraction gives a stratified split: every class on both sides
    splits = load_classification_splits(DataArguments(train_dir=str(tmp_path), train_val_split=0.17), "image", "label")
    assert len(set(splits["validation"]["labels"])) == 10 and len(set(splits["train"]["labels"])) == 10


def test_train_val_split_out_of_range_names_the_flag(digits_dir):
    with pytest.raises(UserError, match="--train_val_split 15.0: the fraction .* between 0 and 1"):
        load_classification_splits(
            DataArguments(train_dir=str(digits_dir / "train"), train_val_split=15.0), "image", "label"
        )


def test_model_that_is_a_file_or_a_missing_folder_is_refused_at_parse_time(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match="is a file: pass the folder holding it"):
        ModelArguments(model_name_or_path=str(weights))
    with pytest.raises(UserError, match="no such folder"):
        ModelArguments(model_name_or_path=str(tmp_path / "missing"))
    ModelArguments(model_name_or_path="openai/clip-vit-base-patch32")  # a Hub id is left to the Hub


def test_contrastive_strategy_on_a_classifier_names_the_flag(tiny_vtde, digits_dir, tmp_path):
    out = tmp_path / "out"
    args = recipe_args(tiny_vtde, out, "--train_dir", digits_dir / "train", "--finetune_strategy", "lock_text")
    with pytest.raises(UserError, match="--finetune_strategy must be one of .* for a classifier, got 'lock_text'"):
        recipe.main(args)
    assert not (out / "model.safetensors").exists()


def test_malformed_csv_error_names_the_line(tmp_path):
    from mm_hf.data.loading import read_data_file

    path = tmp_path / "train.csv"
    path.write_text("image,label\na.png,zero\nb.png,one,extra\n")
    # The datasets library's own message ("An error occurred while generating the dataset") names nothing.
    with pytest.raises(DataError, match=r"train\.csv: cannot parse as CSV: .*Expected 2 fields in line 3, saw 3"):
        read_data_file(str(path), cache_dir=str(tmp_path / "cache"))
