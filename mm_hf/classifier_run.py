"""What the two classifier recipes (`clip_imagecls.py`, `audio_cls.py`) share after building their inputs: whether
a linear probe caches its features and fits by L-BFGS, then the Trainer, the measure (own splits, --ood_dir sets,
the --robustness sweep), LP-FT's first stage, WiSE-FT's sets and the one run protocol; and the save at the end."""

import logging
from functools import partial

from .args import args_to_dict
from .data.loading import dataset_display_name
from .evaluate.shifts import RunShifts, with_shifts
from .flyp import finish_flyp
from .lp_ft import lp_ft_first_stage
from .measures import TrainerMeasure
from .metrics.streaming import ClassificationMetrics
from .outputs import RunInfo, recipe_command, save_run
from .probe import fit_classifier_head, use_lbfgs_probe
from .retention import ZeroShotRetention, with_retention
from .run import RunResult, build_trainer, train_and_evaluate

logger = logging.getLogger(__name__)


def plan_probe(ft_args, training_args, *, streaming: bool, uncacheable: str | None = None) -> tuple[bool, bool]:
    """`(cache, lbfgs)`: whether a linear probe caches the frozen tower's features of every split, and whether its
    head is then fitted by L-BFGS (mm_hf.probe). `uncacheable` names what keeps this model's features from being
    cached (e.g. "--pooling attention (learned frame scores)"); a stream is decoded as it is read, never cached.
    Refuses, before any feature is computed, a --probe_solver lbfgs that cannot be honoured."""
    if streaming:
        uncacheable = "--streaming (a stream is decoded as it is read, not cached)"
    cache = ft_args.finetune_strategy == "linear_probe" and ft_args.precompute_features and uncacheable is None
    why_uncached = uncacheable or "--precompute_features false"
    if ft_args.finetune_strategy == "linear_probe" and ft_args.precompute_features and not cache:
        logger.info("%s: the frozen backbone runs on every batch, uncached", why_uncached)
    return cache, use_lbfgs_probe(ft_args, training_args, cached=cache, why_uncached=why_uncached)


def train_classifier(
    model,
    processor,
    datasets: dict,
    splits: dict,
    eval_transform,
    id2label: dict,
    shifts: RunShifts,
    training_args,
    ft_args,
    *,
    before_label: str,
    lbfgs: bool,
    skipped=None,
    retention: ZeroShotRetention | None = None,
):
    """`(trainer, run)`: `model` (after `apply_strategy`) trained and measured by `train_and_evaluate` on
    `datasets` (cached features or on-the-fly inputs), on every shifted set of `shifts` before and after (their
    raw rows in `splits` go through `eval_transform`), with LP-FT's probe first for --finetune_strategy lp_ft, and
    WiSE-FT's α curve over the OOD sets plus `retention` (--zeroshot_eval_dir)."""
    first_stage = lp_ft_first_stage(model, splits, eval_transform, training_args, ft_args)
    metrics = ClassificationMetrics(id2label)
    trainer = build_trainer(model, training_args, datasets, processor, metrics, skipped=skipped)
    measure = with_shifts(
        TrainerMeasure(trainer, datasets, metrics), shifts, trainer, splits, eval_transform, id2label.values()
    )
    ood = {name: dataset.with_transform(eval_transform) for name, dataset in shifts.sets.items()}
    run: RunResult = train_and_evaluate(
        trainer,
        datasets,
        measure,
        ft_args,
        before_label=before_label,
        fit=partial(fit_classifier_head, model, device=training_args.device, selection=ft_args.probe_selection)
        if lbfgs
        else None,
        first_stage=first_stage,
        extra_sets=with_retention(ood, retention),
    )
    return trainer, run


def save_classifier_run(
    trainer, run, parsed: tuple, argv: list[str], *, pipeline_tag: str, script: str, skipped, push_to_hub: bool,
    head: dict | None = None,
):  # fmt: skip
    """The recipe's last step: FLYP's model made the plain classifier it trained (`finish_flyp`), then `save_run`
    (model, outputs, card; published with `push_to_hub`). `parsed`: the recipe's argument dataclasses in order, model,
    data and fine-tuning arguments first, TrainingArguments as prepared; all are saved as the resolved arguments."""
    model_args, data_args, ft_args = parsed[:3]
    finish_flyp(trainer)
    info = RunInfo(
        pipeline_tag=pipeline_tag,
        base_model=model_args.model_name_or_path,
        dataset=dataset_display_name(data_args),
        command=recipe_command(argv, script=script),
        finetune_strategy=ft_args.finetune_strategy,
        head=head,
    )
    return save_run(
        trainer, run, info, config=args_to_dict(*parsed), skipped=skipped, push_to_hub=push_to_hub,
        merge_lora=ft_args.merge_lora,
    )  # fmt: skip
