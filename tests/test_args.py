"""--config YAML defaults, CLI precedence and loud failures."""

import glob
import os
import re

import pytest
import yaml
from transformers import TrainingArguments

from mm_hf.args import (
    DataArguments,
    FinetuneArguments,
    ModelArguments,
    args_to_dict,
    explicit_flags,
    parse_args,
)
from mm_hf.errors import UserError

TYPES = (ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_yaml(tmp_path, values):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_yaml_sets_defaults_and_cli_wins(tmp_path):
    config = write_yaml(
        tmp_path,
        {
            "learning_rate": 3e-4,
            "finetune_strategy": "top_k",
            "lora_target_modules": ["q_proj", "v_proj"],
            "train_dir": "data/train",
            "num_train_epochs": 7,
        },
    )
    model, data, ft, train = parse_args(TYPES, ["--config", config, "--output_dir", "o", "--learning_rate", "1e-3"])
    assert train.learning_rate == 1e-3  # CLI beats YAML
    assert train.num_train_epochs == 7  # YAML beats the dataclass default
    assert ft.finetune_strategy == "top_k"
    assert ft.lora_target_modules == ["q_proj", "v_proj"]
    assert data.train_dir == "data/train"
    assert model.model_name_or_path == "openai/clip-vit-base-patch32"  # untouched default


def test_explicit_flags_are_the_cli_and_yaml_ones_only(tmp_path):
    config = write_yaml(tmp_path, {"num_train_epochs": 7, "lora_r": 4})
    argv = ["--config", config, "--output_dir", "o", "--learning_rate=1e-3", "--no_precompute_features", "--do_train"]
    argv += ["--merge-lora", "true"]
    parse_args(TYPES, argv)  # valid as a whole
    flags = explicit_flags(argv, TYPES)
    assert flags == {"num_train_epochs", "lora_r", "output_dir", "learning_rate", "precompute_features", "do_train",
                     "merge_lora"}  # fmt: skip
    assert explicit_flags(["--output_dir", "o"], TYPES) == {"output_dir"}  # values are never taken for flags


def test_cli_alone_uses_dataclass_defaults():
    _, _, ft, train = parse_args(TYPES, ["--output_dir", "o"])
    assert ft.finetune_strategy == "lora" and train.learning_rate == TrainingArguments("o").learning_rate


def test_unknown_yaml_key_names_file_and_suggests(tmp_path):
    config = write_yaml(tmp_path, {"learnin_rate": 1e-3})
    with pytest.raises(UserError, match=r"config\.yaml: learnin_rate \(did you mean learning_rate\?\)"):
        parse_args(TYPES, ["--config", config])


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: [1, 2\n")
    with pytest.raises(UserError, match="bad.yaml is not valid YAML"):
        parse_args(TYPES, ["--config", str(bad)])
    with pytest.raises(UserError, match="cannot read --config"):
        parse_args(TYPES, ["--config", str(tmp_path / "absent.yaml")])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must be a mapping"):
        parse_args(TYPES, ["--config", str(listy)])


def test_unknown_cli_flag_fails():
    with pytest.raises(SystemExit):
        parse_args(TYPES, ["--output_dir", "o", "--no_such_flag", "1"])


def test_choices_are_enforced():
    with pytest.raises(ValueError, match="--finetune_strategy must be one of"):
        parse_args(TYPES, ["--output_dir", "o", "--finetune_strategy", "everything"])


def test_resolved_args_drop_tokens():
    _, _, _, train = parse_args(TYPES, ["--output_dir", "o", "--hub_token", "hf_secret"])
    resolved = args_to_dict(train)
    assert "hf_secret" not in str(resolved)
    assert not any("token" in k for k in resolved)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "recipes", "configs", "*.yaml"))))
def test_shipped_configs_parse(path, config_model_folders):
    """Every shipped YAML parses against its recipe's argument dataclasses (with its model folders present, as
    after its demo's build step)."""
    from conftest import load_recipe

    with open(path) as f:
        config_model_folders(yaml.safe_load(f))

    # The recipe is the one the config's launch command names (an application's config, e.g. medical.yaml, is
    # not named after its recipe); else configs are named <recipe>[_<variant>]_demo.yaml.
    with open(path) as f:
        launched = re.search(r"recipes/(\w+)\.py", f.read())
    stem = os.path.basename(path).split(".")[0]
    recipes = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "recipes", "*.py"))]
    recipe = load_recipe(launched.group(1) if launched else max((r for r in recipes if stem.startswith(r)), key=len))
    types = recipe.ARGUMENT_TYPES
    outputs = parse_args(types, ["--config", path])
    assert len(outputs) == len(types)
