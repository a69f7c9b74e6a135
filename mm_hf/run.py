"""The run every recipe makes, in its order: setup (`start_run`: parsing with the user's flags recorded, logging per
rank, launch and output-folder checks; `prepare_training_arguments`), the Trainer (`build_trainer`, or
`fusion_trainer` with its cached encoders and metrics), and the one protocol, `train_and_evaluate`: measure the
untouched model, train, measure again, with the measure supplied by the recipe (mm_hf.measures). The output
folder: `mm_hf.outputs.save_run`."""

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import transformers
from datasets.utils import logging as datasets_logging
from transformers import EarlyStoppingCallback, Trainer, default_data_collator

from . import fastpaths
from .args import TRAINING_DEFAULTS, FinetuneArguments, dataloader_defaults, explicit_flags, fill_defaults, parse_args
from .data.loading import load_classification_splits, require_evaluation_split
from .data.streaming.classifier import load_stream_splits
from .data.streaming.flags import check_streaming_flags, stream_training_arguments
from .data.streaming.skips import StreamedSplit, StreamSkips
from .data.validation import check_splits
from .engines import check_engine, prepare_for_engine
from .errors import UserError
from .feature_cache import configure_cache
from .flyp import FlypClassifier
from .host_memory import return_freed_tensors_to_os
from .measures import Measure
from .reports import format_before_after_table
from .run_folder import mark_unfinished, resolve_resume
from .sweeps import check_sweep_flags
from .sweeps import search as search_hyperparameters
from .training import trainable_parameters
from .wise_ft import WiseFT, format_robustness_report, measure_sets, trainer_measure

logger = logging.getLogger(__name__)


def prepare_training_arguments(
    training_args, ft_args, has_validation: bool, best_metric: str = "accuracy", streaming: bool = False, **overrides
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
    - with --hp_search, the trials are compared by `metric_for_best_model` (default `best_metric`) on the
      validation split, which is then required.
    - `streaming` (a streamed training split, `mm_hf.data.streaming`): no evaluation each epoch (a stream has none
      the processes agree on), and each process reads its own shards (`stream_training_arguments`).
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
    if streaming:
        training_args = stream_training_arguments(training_args)
    if has_validation and training_args.eval_strategy == "no" and "eval_strategy" not in explicit and not streaming:
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
    if ft_args.hp_search:
        if not has_validation:
            raise UserError(
                "--hp_search compares trials on a validation split, never on test: give --validation_dir/"
                "--validation_file/--train_val_split"
            )
        # The trials' objective (mm_hf.sweeps): the user's metric_for_best_model, else the recipe's criterion.
        if "metric_for_best_model" not in changes:
            changes["metric_for_best_model"] = training_args.metric_for_best_model or best_metric
            if "greater_is_better" not in explicit:
                changes["greater_is_better"] = None  # re-derived from the metric's name (loss: lower is better)
    return dataclasses.replace(training_args, **{**changes, **overrides})


def _value(strategy) -> str:
    """A strategy's name: IntervalStrategy.EPOCH, SaveStrategy.EPOCH and "epoch" all give "epoch"."""
    return getattr(strategy, "value", strategy)


def check_output_dir(training_args, overwrite: bool) -> None:
    """Refuse to mix a new run into a non-empty folder unless --overwrite_output_dir is given, and resolve
    --resume_from_checkpoint (auto: the last complete checkpoint of the unfinished run in --output_dir, or a fresh
    start) into `training_args.resume_from_checkpoint`: a checkpoint path or None (mm_hf.run_folder)."""
    training_args.resume_from_checkpoint = resolve_resume(
        training_args.output_dir, training_args.resume_from_checkpoint, overwrite
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


def check_dataloader_flags(training_args) -> None:
    """Refuse --dataloader_persistent_workers: transformers' Trainer then keeps the first evaluation's DataLoader
    under one key for every Dataset given to `evaluate()` (Trainer.get_eval_dataloader), and the recipes evaluate
    the validation, test and shifted sets one after another: the later ones would silently be scored on the
    first one's data."""
    if training_args.dataloader_persistent_workers:
        raise UserError(
            "--dataloader_persistent_workers true is not supported: transformers' Trainer would reuse the first "
            "evaluation's DataLoader for the test and shifted sets, scoring them on the wrong data. Drop the flag "
            "(workers are started anew per epoch and per evaluation)."
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
    # DataLoader workers from the CPU count, pinned memory only with CUDA (mm_hf.args.defaults): parser defaults, so
    # TrainingArguments checks a user's --dataloader_prefetch_factor against the workers the run will have.
    parsed = parse_args(argument_types, argv, defaults=dataloader_defaults())
    # What the recipes' defaults must not override: every flag the user set (CLI or --config YAML).
    explicit = explicit_flags(argv, argument_types)
    # Checkpoint retention, logging frequency; on a CUDA GPU also bf16 autocast, fused AdamW and TF32 for the flags
    # the user left unset (mm_hf.fastpaths).
    gpu = fastpaths.detect_gpu()
    use_cpu = next(a for a in parsed if isinstance(a, transformers.TrainingArguments)).use_cpu
    gpu_defaults = fastpaths.gpu_defaults(gpu, explicit, use_cpu=use_cpu)
    parsed = fill_defaults(parsed, {**TRAINING_DEFAULTS, **gpu_defaults}, explicit)
    training_args = next(a for a in parsed if isinstance(a, transformers.TrainingArguments))
    training_args.explicit_flags = explicit
    level = process_log_level(training_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    if not use_cpu:
        fastpaths.log_gpu_defaults(gpu, gpu_defaults)
    passive_main = training_args.should_log and training_args.log_level == "passive"
    # transformers' and datasets' own INFO messages are noise unless asked for with --log_level.
    for library in (transformers.utils.logging, datasets_logging):
        library.set_verbosity(logging.WARNING if passive_main else level)
    ft_args = next(a for a in parsed if isinstance(a, FinetuneArguments))
    check_launch(training_args)
    check_engine(training_args, merge_lora=ft_args.merge_lora)  # FSDP / DeepSpeed: GPUs only
    check_hub_strategy(training_args, training_args.explicit_flags)
    check_dataloader_flags(training_args)
    if training_args.do_train:
        check_output_dir(training_args, ft_args.overwrite_output_dir)
    check_sweep_flags(ft_args, training_args)
    configure_cache(ft_args.features_cache_dir, ft_args.features_cache_max_gb)
    transformers.set_seed(training_args.seed)
    # Freed activations leave the resident set instead of staying in glibc's heap (mm_hf/host_memory.py: a CPU
    # LoRA run's peak RSS 2787 -> 1875 MB on CLIP ViT-B/32).
    return_freed_tensors_to_os()
    return parsed


def load_checked_splits(
    data_args, training_args, cache_dir, column: str, label_column: str, check, *, input_flag: str, **check_kwargs
):
    """A classification recipe's data: every split loaded and its samples checked by `check` (`check_images`,
    `check_audio`) as --validate_samples says, before any training. Both run on the main process first: it
    downloads, builds the caches and checks; the others then read its dataset cache and its cached verdict.

    With --streaming the training split is a `mm_hf.data.streaming.StreamedSplit`, checked as it is read; only the
    validation/test splits are checked here. Returns `(splits, skipped)` as `check_splits` does (with a stream,
    a `StreamSkips`, which gathers the stream's skipped samples at the end of training: pass it to
    `build_trainer`); errors name `input_flag`, the running recipe's column flag.
    """
    check_streaming_flags(data_args, training_args, getattr(training_args, "explicit_flags", set()))
    load = load_stream_splits if data_args.streaming else load_classification_splits
    with training_args.main_process_first(desc="loading data"):
        splits = load(data_args, column, label_column, cache_dir, training_args.seed, input_flag=input_flag)
        checked = {name: ds for name, ds in splits.items() if not isinstance(ds, StreamedSplit)}
        skipped = {name: [] for name in checked}
        if data_args.validate_samples != "none":
            checked, skipped = check_splits(
                checked,
                check,
                column,
                skip_bad=data_args.skip_bad_samples,
                num_proc=data_args.preprocessing_num_workers,
                mode=data_args.validate_samples,
                cache=True,
                cache_dir=cache_dir,
                **check_kwargs,
            )
    splits = {**splits, **checked}
    train = splits["train"]
    if isinstance(train, StreamedSplit):
        return splits, StreamSkips(train.log, skipped)
    return splits, skipped


def build_trainer(model, training_args, datasets: dict, processor, compute_metrics=None, skipped=None) -> Trainer:
    """The stock Trainer of every recipe: train on `datasets["train"]`, evaluate during training on the validation
    split when there is one, batches stacked by `default_data_collator` (the transforms return tensors).

    `skipped`: what `load_checked_splits` returned; a stream's (`StreamSkips`) is a callback gathering the samples
    the training stream skipped when training ends."""
    return Trainer(
        model=prepare_for_engine(model),  # FSDP: scalar parameters as (1,) tensors (mm_hf.engines)
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("validation"),
        processing_class=processor,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics,
        callbacks=[skipped] if isinstance(skipped, StreamSkips) else None,
    )


@dataclass
class RunResult:
    """What `train_and_evaluate` measured: `results` holds every metric for all_results.json."""

    results: dict
    table: str  # the before/after Markdown table
    headline: str  # the line printed above it: split and sample count
    eval_key: str  # "test" or "eval": the Trainer prefix of the held-out split's metrics
    before_label: str
    train_runtime: float | None
    trainable: dict  # mm_hf.training.trainable_parameters of the model the protocol trained
    before_report: dict | None = None  # the measure's full reports (per class / head), None when it has none
    after_report: dict | None = None
    write_report: Callable | None = None  # write_report(output_dir, report, prefix="") -> its text
    hp_search: dict | None = None  # mm_hf.sweeps.search's summary (trials table, best flags) with --hp_search
    resumed_from: str | None = None  # the checkpoint training resumed from (--resume_from_checkpoint)
    robustness: str | None = None  # the WiSE-FT / LP-FT report (mm_hf.wise_ft.format_robustness_report), if any


def train_and_evaluate(
    trainer,
    datasets: dict,
    measure: Measure,
    ft_args,
    *,
    before_label: str,
    fit=None,
    first_stage: Callable[[], dict] | None = None,
    extra_sets: dict | None = None,
) -> RunResult:
    """The protocol of every recipe: measure the untouched model on the held-out split (test, else validation),
    train, measure again.

    `measure` (see mm_hf.measures: `TrainerMeasure`, `RetrievalMeasure`) scores the model; keys follow Trainer's
    convention: `zeroshot_test_*` before, `test_*` after (`eval_*` for validation, whose Trainer metrics are added
    after training when a test split is the measured one). Training follows `trainer.args` (--do_train,
    --resume_from_checkpoint) and `ft_args` (--early_stopping_patience: early stopping watches only the evaluations
    made during training, not the before/after ones). The trainable parameters (what the strategy left to train)
    are logged and recorded for the card. With --hp_search (mm_hf.sweeps) the trials run first, on the validation
    split, and the best trial is the one trained here. `fit(train, validation)`, when given, trains on those
    datasets instead of `trainer.train` (e.g. `mm_hf.probe.fit_classifier_head` on cached features) and returns
    what to record; its wall time is the train runtime. While training, the output folder is marked as an
    unfinished run (mm_hf.run_folder) until save_run has written it.

    Robust fine-tuning: `first_stage()` (LP-FT's linear probe, mm_hf.lp_ft) runs after the first measure and before
    training, returns what to record, and its model is measured too (`lp_<key>_*`). `--wise_ft_alphas`
    (`ft_args.wise_ft_alphas`) snapshots the weights before any training and, after it, sweeps α on the validation
    split and on `extra_sets`, keeps the best α and measures the fine-tuned model (`finetuned_<key>_*`) and the
    chosen one (`<key>_*`) on the held-out split (mm_hf.wise_ft.WiseFT). `extra_sets`: name -> dataset (the OOD
    sets, evaluated by Trainer) or name -> function of the model returning metrics (zero-shot retention,
    mm_hf.retention), which is also measured before and after training (`zeroshot_<name>_*`, `<name>_*`).
    """
    require_evaluation_split(datasets)  # the loaders of the fusion recipes accept train alone
    if ft_args.hp_search and fit is not None:
        raise UserError(
            "--hp_search searches Trainer flags, which --probe_solver lbfgs does not use (it fits the head to "
            "convergence and already chooses its L2 strength on validation): add --probe_solver trainer"
        )
    trainable = trainable_parameters(trainer.model)
    logger.info("finetune_strategy=%s: %s", ft_args.finetune_strategy, trainable)
    # The towers' attention (--attn_implementation, logged where a tower has no SDPA); on a GPU, the first training
    # step's FLOPs are counted for the MFU (mm_hf.fastpaths).
    attention = fastpaths.use_attention(trainer.model, ft_args.attn_implementation)
    gpu = None if trainer.args.use_cpu else fastpaths.detect_gpu()
    step_flops = fastpaths.StepFlops(trainer.model) if gpu is not None else None
    split = "test" if "test" in datasets else "validation"
    key = "test" if split == "test" else "eval"
    if getattr(ft_args, "wise_ft_alphas", None) and not trainer.args.do_train:
        raise UserError("--wise_ft_alphas mixes the weights before and after training: it needs --do_train")
    wise_ft = WiseFT.start(trainer, measure, datasets, ft_args, extra_sets) if trainer.args.do_train else None
    before = measure.before(split, f"zeroshot_{key}")
    before_report = measure.report
    results, train_runtime = {**before, **({"attn_implementation": attention} if attention else {})}, None
    # Sets measured by a function of the model rather than by Trainer (zero-shot retention): before and after too.
    own_measures = {name: fn for name, fn in (extra_sets or {}).items() if callable(fn)}
    for name, fn in own_measures.items():
        results.update({f"zeroshot_{name}_{k}": v for k, v in fn(trainer.model).items()})
    if isinstance(trainer.accelerator.unwrap_model(trainer.model), FlypClassifier):
        results["finetune_loss"] = "flyp"  # the robustness report names the method
    if first_stage is not None and trainer.args.do_train:
        start = time.perf_counter()
        results.update(first_stage())
        results.update(trainer_measure(measure).before(split, f"lp_{key}"), lp_seconds=time.perf_counter() - start)
        if split != "validation" and "validation" in datasets:
            results.update(trainer.evaluate(datasets["validation"], metric_key_prefix="lp_eval"))
        for name, metrics in measure_sets(trainer, extra_sets or {}).items():
            results.update({f"lp_{name}_{k}": v for k, v in metrics.items()})
    # evaluate() marks the model as prepared without wrapping it in DDP, and train() would then skip the wrapping:
    # each process would train its own copy (transformers 5.23 + accelerate 1.15). Resetting the flag lets train()
    # wrap it as usual.
    trainer.model._is_accelerate_prepared = False
    hp_search = None
    # A checkpoint path or None: start_run resolved "auto" (for training runs; others never resume).
    resumed_from = trainer.args.resume_from_checkpoint if trainer.args.do_train else None
    if trainer.args.do_train and trainer.is_world_process_zero():
        # Until save_run has written the last file, the folder is marked as an unfinished run: mm_hf.publish refuses
        # it and --resume_from_checkpoint auto continues it.
        mark_unfinished(trainer.args.output_dir, resumed_from)
    if trainer.args.do_train and fit is not None:
        start = time.perf_counter()
        results.update(fit(datasets["train"], datasets.get("validation")), **_train_samples(datasets["train"], trainer))
        train_runtime = results["train_runtime"] = time.perf_counter() - start
    elif trainer.args.do_train:
        early_stopping = None
        if ft_args.early_stopping_patience is not None:
            early_stopping = EarlyStoppingCallback(early_stopping_patience=ft_args.early_stopping_patience)
            trainer.add_callback(early_stopping)
        if ft_args.hp_search:  # trials from the untouched model; their best flags are then set on trainer.args
            hp_search = search_hyperparameters(trainer, ft_args, early_stopping)
        if step_flops is not None:
            trainer.add_callback(step_flops)
        train_result = trainer.train(resume_from_checkpoint=resumed_from)
        trainer.model_init = None  # set by the search: the retrained model is the run's model from here on
        train_runtime = train_result.metrics.get("train_runtime")
        results.update(train_result.metrics, **_train_samples(datasets["train"], trainer))
        if step_flops is not None:
            trainer.remove_callback(step_flops)
            results.update(fastpaths.train_throughput(step_flops, train_result.metrics, trainer.args, gpu.name))
        if early_stopping is not None:
            trainer.remove_callback(early_stopping)
    if wise_ft is not None:
        results.update(wise_ft.sweep(split, key))  # the model is left at the chosen α: what is measured and saved
    results.update(measure.validation(split))
    after = measure.after(split, key)
    results.update(after)
    for name, fn in own_measures.items():
        results.update({f"{name}_{k}": v for k, v in fn(trainer.model).items()})
    robustness = format_robustness_report(results, key, before_label) if trainer.args.do_train else None
    rows = measure.table_metrics(key)
    table = format_before_after_table(
        {k.removeprefix("zeroshot_"): v for k, v in before.items()},
        after,
        before_label=before_label,
        **({"metrics": rows} if rows else {}),
    )
    return RunResult(
        results,
        table,
        measure.headline(split, key),
        key,
        before_label,
        train_runtime,
        trainable,
        before_report,
        measure.report,
        measure.write_report,
        hp_search,
        resumed_from,
        robustness,
    )


def _train_samples(train, trainer) -> dict:
    """`train_samples` for all_results.json; a stream has no length: what its `StreamSkips` counted instead (the
    samples read, every pass, per process)."""
    if hasattr(train, "__len__"):
        return {"train_samples": len(train)}
    skips = [c for c in trainer.callback_handler.callbacks if isinstance(c, StreamSkips)]
    return skips[0].summary() if skips else {}
