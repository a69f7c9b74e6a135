"""Run setup shared by every recipe: parsing with the user's flags recorded, logging per rank, launch and
output-folder checks, and the TrainingArguments adjustments the recipes need."""

import dataclasses
import logging
import os

from .args import TRAINING_DEFAULTS, FinetuneArguments, explicit_flags, fill_defaults, parse_args
from .errors import UserError
from .host_memory import return_freed_tensors_to_os

logger = logging.getLogger(__name__)


def prepare_training_arguments(
    training_args, ft_args, has_validation: bool, best_metric: str = "accuracy", **overrides
):
    """TrainingArguments adjusted to what the recipes need; returns a new, re-validated object.

    - `remove_unused_columns=False`: images are decoded by `with_transform`, so Trainer must not drop
      the raw column first (the classic "No columns in the dataset match" error).
    - `label_names=["labels"]`: a PeftModel's forward hides `labels`, so Trainer could not infer it.
    - `batch_eval_metrics=True`: metrics stream batch by batch instead of collecting every logit.
    - with a validation split, evaluate (and save) each epoch unless the user chose otherwise: any of
      --eval_strategy / --save_strategy / --save_steps set on the command line or in the --config YAML
      (`training_args.explicit_flags`, set by `start_run`) is kept, even when equal to the default;
      early stopping turns on `load_best_model_at_end` with `best_metric` as the default criterion, and
      refuses a --save_strategy / --eval_strategy of the user's that cannot keep the best checkpoint.
    - `overrides`: recipe-specific settings (e.g. `dataloader_drop_last=True` for gathered contrastive losses).
    """
    if not training_args.output_dir:
        raise UserError("--output_dir is required")
    # Trainer's own push would upload checkpoints and its own card: recipes publish via mm_hf.publish instead.
    changes = {
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "batch_eval_metrics": True,
        "push_to_hub": False,
    }
    explicit = getattr(training_args, "explicit_flags", set())
    user_saving = explicit & {"save_strategy", "save_steps"}
    if has_validation and training_args.eval_strategy == "no" and "eval_strategy" not in explicit:
        changes["eval_strategy"] = "epoch"
        if training_args.save_strategy == "steps" and not user_saving:
            changes["save_strategy"] = "epoch"
    if ft_args.early_stopping_patience is not None:
        if not has_validation:
            raise UserError(
                "--early_stopping_patience needs a validation split (--validation_dir/--validation_file/--train_val_split)"
            )
        eval_strategy = _value(changes.get("eval_strategy", training_args.eval_strategy))
        save_strategy = _value(training_args.save_strategy)
        if eval_strategy == "no":
            raise ValueError("--early_stopping_patience needs evaluations: --eval_strategy no leaves none")
        if "save_strategy" in explicit and save_strategy != eval_strategy:
            raise ValueError(
                f"--early_stopping_patience keeps the best checkpoint, so checkpoints must follow evaluations: "
                f"--save_strategy {save_strategy} differs from --eval_strategy {eval_strategy}"
            )
        changes.update(
            load_best_model_at_end=True,
            save_strategy=eval_strategy,
            metric_for_best_model=training_args.metric_for_best_model or best_metric,
            greater_is_better=None,
        )
        if eval_strategy == "steps" and "save_steps" not in explicit:
            changes["save_steps"] = training_args.eval_steps or training_args.logging_steps
    return dataclasses.replace(training_args, **{**changes, **overrides})


def _value(strategy) -> str:
    """A strategy's name: IntervalStrategy.EPOCH, SaveStrategy.EPOCH and "epoch" all give "epoch"."""
    return getattr(strategy, "value", strategy)


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse to mix a new run into a non-empty folder unless --overwrite_output_dir is given."""
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise UserError(
            f"output folder {output_dir} exists and is not empty; pass --overwrite_output_dir to write into it "
            "or choose another --output_dir"
        )


def check_hub_strategy(training_args, explicit: set[str]) -> None:
    """Refuse a --hub_strategy the recipes cannot follow: they publish the finished output folder once, at the end
    (mm_hf.publish, also the retry path), never checkpoints during training. Only a value the user set counts:
    TrainingArguments' own default (every_save) is what the recipes replace by design."""
    strategy = _value(training_args.hub_strategy)
    if training_args.push_to_hub and "hub_strategy" in explicit and strategy != "end":
        raise ValueError(
            f"--hub_strategy {strategy} is not supported: with --push_to_hub the recipes publish the finished "
            "output folder once, after training (--hub_strategy end). Drop --hub_strategy, or publish a "
            "checkpoint folder yourself with `python -m mm_hf.publish OUTPUT_DIR/checkpoint-N --hub_model_id ...`."
        )


def check_launch(training_args) -> None:
    """Refuse a multi-process launch whose processes would not form one group.

    Without GPUs, `accelerate launch --multi_gpu` (or torchrun) starts N unconnected copies of the run that
    would all write the same output folder; only `--use_cpu true` joins them into one gloo group.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > training_args.world_size:
        raise UserError(f"launched as {launched} processes, but each would run alone: on CPU pass --use_cpu true")
    logger.info("world_size=%d (%s)", training_args.world_size, training_args.distributed_state.distributed_type)


def evaluate_before_training(trainer, dataset, metric_key_prefix: str) -> dict:
    """`trainer.evaluate` on the untouched model, leaving the model ready to be wrapped by `train()`.

    evaluate() marks the model as prepared without wrapping it in DDP, and train() then skips the wrapping:
    each process would train its own copy (transformers 5.23 + accelerate 1.15). Resetting the flag lets
    train() wrap it as usual.
    """
    metrics = trainer.evaluate(dataset, metric_key_prefix=metric_key_prefix)
    trainer.model._is_accelerate_prepared = False
    return metrics


def process_log_level(training_args) -> int:
    """This process's log level, as in transformers' example scripts: `--log_level` on the main process (mm-hf's
    progress messages, INFO, when left "passive"), `--log_level_replica` (default warning) on the others, so a
    run on N processes does not print every line N times."""
    if training_args.should_log and training_args.log_level == "passive":
        return logging.INFO
    return training_args.get_process_log_level()


def start_run(argument_types, argv):
    """Parse the recipe's arguments and set the run up: logging, launch and output-folder checks, seed.

    `argument_types` must include FinetuneArguments and TrainingArguments; returns the parsed objects in order.
    """
    import datasets
    import transformers

    parsed = parse_args(argument_types, argv)
    # What the recipes' defaults must not override: every flag the user set (CLI or --config YAML).
    explicit = explicit_flags(argv, argument_types)
    parsed = fill_defaults(parsed, TRAINING_DEFAULTS, explicit)  # checkpoint retention, logging frequency
    training_args = next(a for a in parsed if isinstance(a, transformers.TrainingArguments))
    training_args.explicit_flags = explicit
    level = process_log_level(training_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    passive_main = training_args.should_log and training_args.log_level == "passive"
    # transformers' and datasets' own INFO messages are noise unless asked for with --log_level.
    for library in (transformers.utils.logging, datasets.utils.logging):
        library.set_verbosity(logging.WARNING if passive_main else level)
    ft_args = next(a for a in parsed if isinstance(a, FinetuneArguments))
    check_launch(training_args)
    check_hub_strategy(training_args, training_args.explicit_flags)
    if training_args.do_train:
        check_output_dir(training_args.output_dir, ft_args.overwrite_output_dir)
    transformers.set_seed(training_args.seed)
    # Freed activations leave the resident set instead of staying in glibc's heap (mm_hf/host_memory.py: a CPU
    # LoRA run's peak RSS 2787 -> 1875 MB on CLIP ViT-B/32).
    return_freed_tensors_to_os()
    return parsed
