"""The flags of `--streaming`: what a stream has no answer to is refused up front, and how accelerate splits one."""

import dataclasses

from ...errors import UserError

# Flags that only --streaming reads, and why they are refused without it.
STREAM_ONLY_FLAGS = {
    "shuffle_buffer_size": "map-style data is shuffled whole by the Trainer's sampler",
    "class_names": "map-style data lists its classes from the training split",
    "max_bad_fraction": "map-style data is checked before training: bad samples stop the run, or are all dropped "
    "with --skip_bad_samples",
}


def check_streaming_flags(data_args, training_args, explicit: set[str]) -> None:
    """Refuse flags that cannot apply: stream-only flags without --streaming; with it, what a stream has no
    answer to (its length: --max_steps is needed, epochs, a held-out validation fraction)."""
    if not data_args.streaming:
        for name, why in STREAM_ONLY_FLAGS.items():
            if name in explicit:
                raise UserError(f"--{name} only applies with --streaming: {why}")
        return
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise UserError(
            "--streaming needs --max_steps: a stream has no length to count epochs from (pass e.g. --max_steps 10000)"
        )
    for flag in ("eval_strategy", "save_strategy", "logging_strategy"):
        if getattr(getattr(training_args, flag), "value", getattr(training_args, flag)) == "epoch":
            raise UserError(
                f"--{flag} epoch cannot apply with --streaming: the processes read streams of different lengths, so "
                f"they do not agree on where an epoch ends; use --{flag} steps"
            )
    if "train_val_split" in explicit:
        raise UserError(
            "--train_val_split cannot apply with --streaming: a stream cannot be split by class before it is read; "
            "pass a validation split (--validation_dir / --validation_file)"
        )


def refuse_streaming(data_args, explicit: set[str], recipe: str) -> None:
    """For the recipes that read their data map-style and check it fully: refuse --streaming, the flags only it
    reads, and a --validate_samples other than full, naming the recipe."""
    flags = [f"--{name}" for name in ("streaming", *STREAM_ONLY_FLAGS) if name in explicit]
    if data_args.streaming or flags:
        raise UserError(
            f"{' '.join(flags) or '--streaming'}: {recipe} does not stream its data (the recipes do); drop the "
            "flag, the data is read map-style"
        )
    require_full_validation(data_args, explicit, recipe)


def require_full_validation(data_args, explicit: set[str], recipe: str) -> None:
    """Refuse a --validate_samples other than full for `recipe`, which decodes every map-style sample up front."""
    if "validate_samples" in explicit and data_args.validate_samples != "full":
        raise UserError(
            f"--validate_samples {data_args.validate_samples}: {recipe} decodes every sample up front (full); "
            "header and none apply to clip_imagecls and audio_cls"
        )


def stream_training_arguments(training_args):
    """TrainingArguments for a streamed training split: each process reads its own shards.

    accelerate's default for an IterableDataset is to read it on the main process and send each process its
    slice of every batch (`dispatch_batches`), which leaves the decoding to one process's workers. Off, accelerate
    splits a datasets stream with datasets' own `IterableDataset.shard` (one shard list per process, as
    `datasets.distributed.split_dataset_by_node` does with whole shards). The stream is not split here
    beforehand: accelerate would split it again (each process would read half of its half). A choice of the
    user's in --accelerator_config is kept.
    """
    config = training_args.accelerator_config
    if config.dispatch_batches is not None:
        return training_args
    return dataclasses.replace(training_args, accelerator_config=dataclasses.replace(config, dispatch_batches=False))
