"""Defaults the recipes choose for flags the user left unset (a flag on the command line or in --config wins)."""

import dataclasses
import logging
import os

import torch
from transformers import TrainingArguments

from .arguments import FinetuneArguments

logger = logging.getLogger(__name__)


# Checkpoint retention and logging, unless the user sets them. Trainer's own defaults keep every checkpoint with
# its optimizer state (12 copies after 12 epochs: 1 GB for ViT-B/32 with AdamW each) and log every 500 steps (one
# loss point in a 756-step run). save_total_limit=1 still keeps the best checkpoint next to the latest one while
# load_best_model_at_end needs it (Trainer protects both), and 0.02 logs every 2% of the steps: ~50 points a run.
TRAINING_DEFAULTS = {"save_total_limit": 1, "logging_steps": 0.02}


# DataLoader workers when --dataloader_num_workers is unset: decoding then runs beside the training process, not in
# it, with one core per process left to it (each process of a multi-process launch counts its share of the cores)
# and at most 4 workers per process. Below 4 cores per process it stays 0: on this project's 2-core machine one
# worker made the clip_imagecls demo (3 epochs, a 3-layer ViT at 32 px, 1074 8x8 PNG digits) slower, 15.1 -> 21.3 s
# and 21.9 -> 33.1 s wall in two interleaved pairs: the worker competes with the training process for the second
# core and is started anew for every epoch and evaluation. The threshold and the cap of 4 are not measured (no
# larger CPU machine here). Tests set MM_HF_DATALOADER_WORKERS=0 (tests/conftest.py) for the same
# reason: 2 workers made three clip_imagecls tests 12.0 -> 16.3 s. README "Choosing the defaults".
# `dataloader_persistent_workers` stays off: transformers' Trainer keeps a persistent evaluation DataLoader under
# one key for every Dataset passed to `evaluate()`, so the test and shifted sets would be scored on the first
# evaluation's data (mm_hf.run.check_dataloader_flags refuses the flag).
# `dataloader_pin_memory` (Trainer's default: on) only where CUDA is: page-locked batches go to the GPU by DMA,
# without a staging copy, but without a GPU pinning buys nothing and torch warns at every DataLoader (every
# evaluation). `--use_cpu` turns it off in TrainingArguments itself.
# `dataloader_prefetch_factor` stays unset, i.e. torch's 2 batches per worker: the image recipes' batches are uint8
# (4.6 MiB for 32 images at 224 px, README "Input pipeline speed"), so 4 workers x 2 hold under 40 MiB and memory
# is no reason to go lower, while more batches in flight do not speed up a pipeline slower than the model (they
# only even out uneven batches, not measured here). Setting it would also make an explicit
# --dataloader_num_workers 0 an error (TrainingArguments refuses a prefetch factor without workers).
# These defaults go to the parser (`dataloader_defaults`), below the YAML and the command line, so TrainingArguments'
# own checks see them: --dataloader_prefetch_factor alone works wherever the default gives workers.
WORKERS_ENV = "MM_HF_DATALOADER_WORKERS"
MAX_DEFAULT_WORKERS = 4
MIN_CORES_FOR_WORKERS = 4


def default_num_workers(cpus: int | None = None, processes: int | None = None) -> int:
    """`dataloader_num_workers` for a run that leaves it unset: min(4, cores per process - 1) from 4 cores per
    process on, else 0.

    `cpus` defaults to the cores this process may run on, `processes` to the launch's processes on this machine
    (LOCAL_WORLD_SIZE); the environment variable MM_HF_DATALOADER_WORKERS, when set, wins over both."""
    if os.environ.get(WORKERS_ENV, "").strip():
        return int(os.environ[WORKERS_ENV])
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = cpus // max(processes, 1)
    return 0 if cores < MIN_CORES_FOR_WORKERS else min(MAX_DEFAULT_WORKERS, cores - 1)


def dataloader_defaults(cuda: bool | None = None, cpus: int | None = None, processes: int | None = None) -> dict:
    """The DataLoader flags of a run that leaves them unset: `dataloader_num_workers` from the cores
    (`default_num_workers(cpus, processes)`) and `dataloader_pin_memory` on only with CUDA (`cuda`, default
    `torch.cuda.is_available()`)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return {"dataloader_num_workers": default_num_workers(cpus, processes), "dataloader_pin_memory": cuda}


def fill_defaults(parsed, defaults: dict, explicit: set[str]) -> tuple:
    """`parsed` (parse_args' dataclasses) with each field of `defaults` set unless the user set it (`explicit`).

    Each name is set on the dataclass that has it; changed objects are rebuilt with `dataclasses.replace`, so
    their validation (`__post_init__`) runs again. Returns the new tuple, in the same order.
    """
    out = []
    for obj in parsed:
        names = {f.name for f in dataclasses.fields(obj)}
        changes = {k: v for k, v in defaults.items() if k in names and k not in explicit}
        new = dataclasses.replace(obj, **changes) if changes else obj
        if hasattr(obj, "explicit_flags"):  # start_run's record of the user's flags is no dataclass field
            new.explicit_flags = obj.explicit_flags
        out.append(new)
    unknown = set(defaults) - {f.name for obj in parsed for f in dataclasses.fields(obj)}
    if unknown:
        raise ValueError(f"defaults for unknown argument(s): {', '.join(sorted(unknown))}")
    return tuple(out)


# The classifier recipes' (clip_imagecls, audio_cls) TrainingArguments defaults for every flag the user leaves unset (a flag on the command line or in the YAML always
# wins), measured on DINOv2-small + MiniLM and a random-init small CLIP, grey digits and colour photo crops, against
# a plain AdamW loop on the same model and data (README "Choosing the defaults"). Learning rate per strategy: every
# weight of `full` at 3e-5 (the quality bench's DINOv2-small at 112 px, 200 training images: digits 0.315 at 1e-4 ->
# 0.945 at 3e-5, photos 0.811 at both), the top layers of top_k at 1e-4 (digits 0.900), LoRA adapters at 1e-3
# (0.860 at 56 px), a linear probe on cached features at 3e-2 (0.747; 1e-3 reached 0.400 in 10 epochs).
STRATEGY_DEFAULTS = {
    "full": dict(learning_rate=3e-5),
    "top_k": dict(learning_rate=1e-4),
    "lora": dict(learning_rate=1e-3),
    "linear_probe": dict(learning_rate=3e-2),
}
# Trainer's 3 epochs, no warm-up, linear decay and no weight decay: 3 epochs cost the linear probe 0.747 -> 0.540
# (digits), warm-up 10% + cosine + weight decay 0.05 gave small CLIP 0.200 -> 0.257.
COMMON_DEFAULTS = dict(num_train_epochs=10, warmup_steps=0.1, lr_scheduler_type="cosine", weight_decay=0.05)


def fill_strategy_defaults(parsed) -> tuple:
    """`parsed` (as start_run returns it) with the learning rate, epochs and schedule of its `--finetune_strategy`
    (STRATEGY_DEFAULTS, COMMON_DEFAULTS) set wherever the user did not set them; logs what it chose."""
    ft_args = next(a for a in parsed if isinstance(a, FinetuneArguments))
    strategy = ft_args.finetune_strategy
    if strategy == "lp_ft":  # the probe stage is solved by L-BFGS: the Trainer settings are the second stage's
        strategy = ft_args.lp_ft_second_stage
    training_args = next(a for a in parsed if isinstance(a, TrainingArguments))
    defaults = {**COMMON_DEFAULTS, **STRATEGY_DEFAULTS.get(strategy, {})}
    user_set = training_args.explicit_flags  # every flag set on the command line or in --config (start_run)
    chosen = {k: v for k, v in defaults.items() if k not in user_set}
    logger.info("defaults for finetune_strategy=%s (pass a flag to change one): %s", strategy, chosen)
    return fill_defaults(parsed, defaults, user_set)
