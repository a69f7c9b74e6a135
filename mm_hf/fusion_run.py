"""What the two fusion recipes (`fusion_imagetext_cls.py`, `video_cls.py`) share between loading their rows and
the run protocol: the processor fitted on the training rows, the model with its strategy, the Trainer and measure."""

import logging

from .data.multimodal import MultimodalColumns, check_media, load_multimodal_splits
from .data.streaming import refuse_streaming
from .data.tabular import TabularProcessor
from .fusion_features import CachedInputs, cache_encoder_outputs, fit_feature_statistics, frozen_modalities
from .measures import TaskMetrics, TrainerMeasure, evaluate_without_modalities
from .models import build_fusion_classifier
from .models.fusion import Task
from .outputs import task_report_writer
from .processing import MultimodalProcessor
from .run import build_trainer, prepare_training_arguments
from .training import apply_strategy

logger = logging.getLogger(__name__)


def load_fusion_rows(fusion_args, data_args, training_args, cache_dir, visual: str = "image"):
    """`(columns, splits, spaces)`: the rows of a fusion run with their inputs (`visual`: "image" or "video",
    then text, audio, tabular; any may be missing in a row) and labels per task, loaded on the main process first
    (one download/cache build, then the others read it)."""
    refuse_streaming(
        data_args, training_args.explicit_flags, "video_cls" if visual == "video" else "fusion_imagetext_cls"
    )
    columns = MultimodalColumns(
        **{visual: getattr(fusion_args, f"{visual}_column")},
        text=fusion_args.text_column,
        audio=fusion_args.audio_column,
        numeric=fusion_args.numeric_columns,
        categorical=fusion_args.categorical_columns,
        labels=fusion_args.label_column,
        group=fusion_args.group_column,
    )
    with training_args.main_process_first(desc="loading data"):
        splits, spaces = load_multimodal_splits(
            data_args, columns, fusion_args.problem_types(), cache_dir, training_args.seed, data_args.skip_bad_samples
        )
    return columns, splits, spaces


def fusion_processor(splits, encoders, settings, columns, data_args, model_args, checked_modalities):
    """`(processor, tabular, splits, skipped)`: the per-modality processors of `encoders` as one
    MultimodalProcessor, every media sample of `checked_modalities` decoded once to check it (bad ones dropped
    with --skip_bad_samples, reported at the end), and the tabular encoder (if any) fitted on the training rows."""
    tabular = TabularProcessor() if "tabular" in settings.modalities else None
    processor = MultimodalProcessor.from_encoders(encoders, settings, tabular, **model_args.hub_kwargs())
    splits, skipped = check_media(
        splits,
        checked_modalities,
        skip_bad=data_args.skip_bad_samples,
        num_proc=data_args.preprocessing_num_workers,
        audio_sampling_rate=getattr(processor.feature_extractor, "sampling_rate", None),
    )
    if tabular is not None:
        tabular.fit(splits["train"], columns.numeric, columns.categorical)
    return processor, tabular, splits, skipped


def fusion_model(encoders, tasks: list[Task], processor, tabular, columns, model_args, fusion_args, ft_args, **video):
    """Pretrained encoders -> pooling -> projection -> fusion -> one head per task, with what the run trains
    (`apply_strategy`, per-encoder `--*_strategy` included). `video`: num_frames, frame_pooling, temporal_pooling."""
    model = build_fusion_classifier(
        encoders,
        tasks,
        tabular_num_numeric=len(columns.numeric),
        tabular_cardinalities=tabular.cardinalities if tabular else (),
        from_pretrained_kwargs=model_args.hub_kwargs(),
        # A Whisper audio encoder runs on the clips' own length, not its 30 s window; the extractor pads to match
        audio_feature_extractor=processor.feature_extractor,
        max_length_seconds=fusion_args.max_length_seconds,
        **video,
        **model_args.config_kwargs(),
    )
    return apply_strategy(model, ft_args, model_args.encoder_strategies())


def fusion_trainer(model, processor, splits, tasks: list[Task], modalities, training_args, ft_args, fusion_args):
    """The fusion recipes' Trainer and measure: returns `(trainer, datasets, TrainerMeasure)`.

    Inputs are decoded on the fly by `processor` (train transform with augmentation for the train split), except
    those of frozen encoders, encoded once and cached (`mm_hf.fusion_features`, unless `--precompute_features
    false`); before training, the encoders' pooled features get their standardisation fitted on the train split;
    metrics come from `TaskMetrics` over every score at once (`batch_eval_metrics=False`: ROC-AUC and mAP need
    them), labels from `labels` or `labels_<task>`. After training the measured split is evaluated again with
    each modality removed (`fusion_args.ablate_modalities`).
    """
    metrics = TaskMetrics(
        tasks, threshold=fusion_args.threshold, ranking_ks=fusion_args.ranking and fusion_args.ranking_ks
    )
    training_args = prepare_training_arguments(
        training_args,
        ft_args,
        has_validation="validation" in splits,
        best_metric=metrics.best_metric(),
        label_names=fusion_args.label_names(tasks),
        batch_eval_metrics=False,
    )
    train_transform = processor.transform(train=True, augment=fusion_args.augment)
    eval_transform = processor.transform(train=False)
    batch_size, device = training_args.per_device_eval_batch_size, training_args.device
    cached = frozen_modalities(model) if ft_args.precompute_features else []
    if cached:
        logger.info(
            "frozen encoder(s) of %s: each sample encoded once and cached (those inputs are not augmented; "
            "--precompute_features false runs them every epoch)",
            cached,
        )
        model.to(device)
        workers = training_args.dataloader_num_workers
        splits = {
            name: cache_encoder_outputs(
                model,
                ds,
                eval_transform,
                cached,
                batch_size,
                device,
                workers,
                cache_dir=ft_args.features_cache_dir,
                desc=None if training_args.disable_tqdm else f"encoding {'+'.join(cached)} ({name})",
            )
            for name, ds in splits.items()
        }
        train_transform = CachedInputs(train_transform, modalities, cached)
        eval_transform = CachedInputs(eval_transform, modalities, cached)
    if training_args.do_train:
        model.to(device)
        # Cached features are cheap to read in full; without a cache, 1024 rows through the encoders suffice.
        counts = fit_feature_statistics(
            model, splits["train"], eval_transform, batch_size, device, None if cached else 1024, training_args.seed
        )
        logger.info("feature standardisation fitted on %s training rows per modality", counts)
    datasets = {n: ds.with_transform(train_transform if n == "train" else eval_transform) for n, ds in splits.items()}
    trainer = build_trainer(model, training_args, datasets, processor, metrics)
    ablate = fusion_args.ablate_modalities

    def ablations(split, key):
        return evaluate_without_modalities(trainer, splits[split], eval_transform, modalities, key) if ablate else {}

    measure = TrainerMeasure(
        trainer,
        datasets,
        metrics,
        table_metrics=metrics.table_metrics(modalities if ablate else ()),
        extra_after=ablations,
        write_report=task_report_writer(tasks),
    )
    return trainer, datasets, measure
