"""What the recipes do with TrainingArguments: every flag the user set is honoured (CLI or --config YAML), the
recipes' own defaults apply only to the rest; --hub_strategy values the recipes cannot follow are refused."""

import json
import os

import pytest
import yaml
from conftest import load_recipe
from transformers import TrainingArguments

from mm_hf.args import FinetuneArguments, explicit_flags, parse_args
from mm_hf.run import prepare_training_arguments, start_run

TYPES = (FinetuneArguments, TrainingArguments)


def test_explicit_flags_from_the_command_line_and_the_yaml(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"eval_strategy": "no", "learning_rate": 0.1}))
    argv = ["--save-strategy", "steps", "--save_steps=25", "--no_precompute_features", "--config", str(config), "x"]
    assert explicit_flags(argv, TYPES) >= {"save_strategy", "save_steps", "precompute_features", "eval_strategy"}
    assert "learning_rate" in explicit_flags(argv, TYPES) and "config" not in explicit_flags(argv, TYPES)
    assert explicit_flags(["--output_dir", "out"], TYPES) == {"output_dir"}


def prepared(tmp_path, *flags, has_validation=True):
    argv = ["--output_dir", str(tmp_path), "--use_cpu", "true", *flags]
    ft_args, training_args = parse_args(TYPES, argv)
    training_args.explicit_flags = explicit_flags(argv, TYPES)
    return prepare_training_arguments(training_args, ft_args, has_validation=has_validation)


def strategies(args):
    return args.eval_strategy.value, args.save_strategy.value, args.save_steps


def test_defaults_evaluate_and_save_each_epoch_with_a_validation_split(tmp_path):
    assert strategies(prepared(tmp_path))[:2] == ("epoch", "epoch")
    assert strategies(prepared(tmp_path, has_validation=False))[:2] == ("no", "steps")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--save_strategy", "steps", "--save_steps", "25"], ("epoch", "steps", 25)),
        (["--save_steps", "25"], ("epoch", "steps", 25)),
        (["--eval_strategy", "no"], ("no", "steps", 500)),  # the default value, chosen explicitly
    ],
)
def test_user_flags_are_kept(tmp_path, flags, expected):
    assert strategies(prepared(tmp_path, *flags)) == expected


def test_early_stopping_refuses_what_cannot_keep_the_best_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="--save_strategy steps differs from --eval_strategy epoch"):
        prepared(tmp_path, "--early_stopping_patience", "2", "--save_strategy", "steps")
    with pytest.raises(ValueError, match="--eval_strategy no leaves none"):
        prepared(tmp_path, "--early_stopping_patience", "2", "--eval_strategy", "no")
    args = prepared(tmp_path, "--early_stopping_patience", "2", "--eval_strategy", "steps", "--eval_steps", "5")
    assert strategies(args) == ("steps", "steps", 5) and args.load_best_model_at_end


def test_push_to_hub_refuses_a_hub_strategy_other_than_end(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--push_to_hub", "true"]
    with pytest.raises(ValueError, match="--hub_strategy checkpoint is not supported"):
        start_run(TYPES, argv + ["--hub_strategy", "checkpoint"])
    start_run(TYPES, argv + ["--hub_strategy", "end"])
    start_run(TYPES, argv)  # TrainingArguments' default (every_save) is not the user's choice


def test_recipe_saves_at_the_steps_the_user_chose(tiny_vtde, digits_dir, tmp_path):
    """48 training images in batches of 16: 3 steps an epoch. Saving every 2 steps must give checkpoints 2 and 4,
    not one per epoch, and --eval_strategy no must not become per-epoch evaluation."""
    out = tmp_path / "out"
    load_recipe("clip_imagecls").main(
        [
            "--model_name_or_path", str(tiny_vtde), "--output_dir", str(out), "--do_train",
            "--train_dir", str(digits_dir / "train"), "--validation_dir", str(digits_dir / "validation"),
            "--max_steps", "4", "--per_device_train_batch_size", "16", "--finetune_strategy", "full",
            "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", "--save_total_limit", "3",
            "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
            "--prompt_templates", "a photo of the digit {}.",
        ]
    )  # fmt: skip
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert not [entry for entry in state["log_history"] if entry["step"] > 0 and "eval_loss" in entry]
    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert (resolved["eval_strategy"], resolved["save_strategy"], resolved["save_steps"]) == ("no", "steps", 2)


def test_start_run_fills_retention_and_logging_defaults_unless_set(tmp_path):
    """Every recipe goes through start_run: Trainer would keep every checkpoint and log every 500 steps."""
    from mm_hf.run import start_run

    base = ["--output_dir", str(tmp_path / "a"), "--use_cpu", "true"]
    _, training_args = start_run(TYPES, base)
    assert (training_args.save_total_limit, training_args.logging_steps) == (1, 0.02)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"logging_steps": 7}))
    _, training_args = start_run(TYPES, [*base, "--save_total_limit", "4", "--config", str(config)])
    assert (training_args.save_total_limit, training_args.logging_steps) == (4, 7)
    assert {"save_total_limit", "logging_steps"} <= training_args.explicit_flags


@pytest.mark.parametrize("cuda", [False, True])
def test_start_run_pins_memory_only_with_a_gpu_unless_set(tmp_path, monkeypatch, cuda):
    """Pinning without a GPU buys nothing and makes torch warn at every DataLoader; a user's flag still wins, and
    --use_cpu turns it off (TrainingArguments). cuda=True fakes the default logic's GPU branch (a faked
    `torch.cuda.is_available` would send TrainingArguments itself looking for the device)."""
    import functools

    import mm_hf.run
    from mm_hf.args import dataloader_defaults
    from mm_hf.run import start_run

    monkeypatch.setattr(mm_hf.run, "dataloader_defaults", functools.partial(dataloader_defaults, cuda=cuda))
    base = ["--output_dir", str(tmp_path / "a")]
    _, training_args = start_run(TYPES, base)
    assert training_args.dataloader_pin_memory is cuda
    _, training_args = start_run(TYPES, [*base, "--dataloader_pin_memory", str(not cuda).lower()])
    assert training_args.dataloader_pin_memory is not cuda
    _, training_args = start_run(TYPES, [*base, "--use_cpu", "true"])
    assert training_args.dataloader_pin_memory is False


def test_pin_memory_default_follows_cuda(monkeypatch):
    import torch

    from mm_hf.args import dataloader_defaults

    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert dataloader_defaults(cpus=2, processes=1)["dataloader_pin_memory"] is cuda


@pytest.mark.parametrize(("strategy", "lr"), [("lora", 1e-3), ("full", 3e-5), ("linear_probe", 3e-2)])
def test_classifier_defaults_follow_the_strategy_unless_set(tmp_path, strategy, lr):
    from mm_hf.args import fill_strategy_defaults
    from mm_hf.run import start_run

    base = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--finetune_strategy", strategy]
    _, training_args = fill_strategy_defaults(start_run(TYPES, base))
    assert (training_args.learning_rate, training_args.num_train_epochs) == (lr, 10)
    assert training_args.lr_scheduler_type.value == "cosine" and training_args.warmup_steps == 0.1
    _, training_args = fill_strategy_defaults(start_run(TYPES, [*base, "--learning_rate", "5e-5"]))
    assert training_args.learning_rate == 5e-5 and training_args.explicit_flags >= {"learning_rate"}
