"""Argument dataclasses shared by the recipes, and `parse_args` (YAML defaults -> CLI overrides).

Flag names follow transformers' example scripts (run_image_classification.py, ...) where the meaning is
the same, so their users can switch without relearning. Every training knob lives in TrainingArguments.
By concern: `arguments` (models, data, fine-tuning), `columns` (column flags and their aliases), `fusion` (the
fusion recipes' arguments), `parsing` (parse_args, explicit_flags, args_to_dict), `defaults` (what the recipes
fill in for flags left unset), `robustness` (shifted sets and corruptions measured at the end of a run).
"""

from .arguments import (
    AudioModelArguments,
    ClassifierLossArguments,
    DataArguments,
    FinetuneArguments,
    HubArguments,
    ModelArguments,
    check_model_source,
)
from .columns import (
    COLUMN_ALIASES,
    AudioColumnArguments,
    CaptionColumnArguments,
    ImageColumnArguments,
    LabelColumnArguments,
    column_field,
    media_column,
)
from .defaults import (
    COMMON_DEFAULTS,
    STRATEGY_DEFAULTS,
    TRAINING_DEFAULTS,
    dataloader_defaults,
    default_num_workers,
    fill_defaults,
    fill_strategy_defaults,
)
from .fusion import (
    FusionDataArguments,
    FusionModelArguments,
    FusionTrainingArguments,
)
from .parsing import (
    args_to_dict,
    explicit_flags,
    parse_args,
)
from .robustness import DEFAULT_ROBUSTNESS, RobustnessArguments

__all__ = [
    "AudioColumnArguments",
    "AudioModelArguments",
    "ClassifierLossArguments",
    "COLUMN_ALIASES",
    "COMMON_DEFAULTS",
    "DEFAULT_ROBUSTNESS",
    "CaptionColumnArguments",
    "DataArguments",
    "FinetuneArguments",
    "FusionDataArguments",
    "FusionModelArguments",
    "FusionTrainingArguments",
    "HubArguments",
    "ImageColumnArguments",
    "LabelColumnArguments",
    "ModelArguments",
    "RobustnessArguments",
    "STRATEGY_DEFAULTS",
    "TRAINING_DEFAULTS",
    "args_to_dict",
    "check_model_source",
    "column_field",
    "explicit_flags",
    "dataloader_defaults",
    "default_num_workers",
    "fill_defaults",
    "fill_strategy_defaults",
    "media_column",
    "parse_args",
]
