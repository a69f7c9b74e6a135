"""What the two fusion recipes (`fusion_imagetext_cls.py`, `video_cls.py`) share between loading their rows and
the run protocol: the processor fitted on the training rows, the model with its strategy, the Trainer and measure."""

import logging

from .data.multimodal import MultimodalColumns, check_media, load_multimodal_splits
from .data.multimodal_stream import STATISTICS_ROWS, load_multimodal_stream
from .data.streaming.flags import check_streaming_flags, require_full_validation
from .data.streaming.skips import StreamedSplit, StreamSkips
from .data.tabular import TabularProcessor
from .errors import UserError
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
    (one download/cache build, then the others read it). With --streaming the training split is a `StreamedSplit`
    (`mm_hf.data.multimodal_stream`: where its label spaces and statistics come from)."""
    explicit = training_args.explicit_flags
    check_streaming_flags(data_args, training_args, explicit)
    require_full_validation(data_args, explicit, "video_cls" if visual == "video" else "fusion_imagetext_cls")
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
        if data_args.streaming:
            splits, spaces = load_multimodal_stream(
                data_args, columns, fusion_args.problem_types(), cache_dir, training_args.seed
            )
        else:
            splits, spaces = load_multimodal_splits(
                data_args, columns, fusion_args.problem_types(), cache_dir, training_args.seed,
                data_args.skip_bad_samples,
            )  # fmt: skip
    return columns, splits, spaces


def fusion_processor(splits, encoders, settings, columns, data_args, model_args, checked_modalities):
    """`(processor, tabular, splits, skipped)`: the per-modality processors of `encoders` as one
    MultimodalProcessor, every media sample of `checked_modalities` decoded once to check it (bad ones dropped
    with --skip_bad_samples, reported at the end), and the tabular encoder (if any) fitted on the training rows.

    A streamed training split is checked as it is read: `skipped` is then a `StreamSkips` (pass it to
    `fusion_trainer`), and the tabular encoder is fitted on the first `STATISTICS_ROWS` usable rows of the stream."""
    tabular = TabularProcessor() if "tabular" in settings.modalities else None
    processor = MultimodalProcessor.from_encoders(encoders, settings, tabular, **model_args.hub_kwargs())
    stream = splits["train"] if isinstance(splits["train"], StreamedSplit) else None

    def check(named, skip_bad):
        return check_media(
            named,
            checked_modalities,
            skip_bad=skip_bad,
            num_proc=data_args.preprocessing_num_workers,
            audio_sampling_rate=getattr(processor.feature_extractor, "sampling_rate", None),
        )

    checked, skipped = check({n: ds for n, ds in splits.items() if ds is not stream}, data_args.skip_bad_samples)
    splits = {**splits, **checked}
    if stream is not None:
        # The head is read only if statistics need it; its bad samples are left out there, and the stream skips and
        # counts them when it meets them.
        stream.head_check = lambda head: check({"train": head}, skip_bad=True)[0]["train"]
        skipped = StreamSkips(stream.log, skipped)
    if tabular is not None:
        tabular.fit(stream.head(STATISTICS_ROWS) if stream else splits["train"], columns.numeric, columns.categorical)
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


def fusion_trainer(
    model, processor, splits, tasks: list[Task], modalities, training_args, ft_args, fusion_args, skipped=None
):
    """The fusion recipes' Trainer and measure: returns `(trainer, datasets, TrainerMeasure)`.

    Inputs are decoded on the fly by `processor` (train transform with augmentation for the train split), except
    those of frozen encoders, encoded once and cached (`mm_hf.fusion_features`, unless `--precompute_features
    false`); before training, the encoders' pooled features get their standardisation fitted on the train split;
    metrics come from `TaskMetrics` over every score at once (`batch_eval_metrics=False`: ROC-AUC and mAP need
    them), labels from `labels` or `labels_<task>`. After training the measured split is evaluated again with
    each modality removed (`fusion_args.ablate_modalities`).

    A streamed training split (`StreamedSplit`, with its `StreamSkips` in `skipped`) is decoded as it is read: no
    encoder output is cached, and the standardisation is fitted on the rows `fusion_processor` fitted the tabular
    statistics on (its head).
    """
    explicit = getattr(training_args, "explicit_flags", set())
    if unused := sorted({"probe_solver", "probe_selection"} & explicit):
        raise UserError(
            f"{', '.join('--' + flag for flag in unused)}: the L-BFGS probe fits a classifier's single linear head; "
            "a fusion model's heads and fusion layers train by Trainer epochs (--learning_rate, --num_train_epochs, "
            "--early_stopping_patience): drop the flag."
        )
    streaming = isinstance(splits["train"], StreamedSplit)
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
        streaming=streaming,
    )
    # The Trainer's batches carry images and video frames as uint8 (4x fewer bytes from the DataLoader's workers),
    # normalised by the model on its device; the passes outside the Trainer (encoder caches, feature statistics,
    # shifted sets) take the float pixels of the saved processor.
    uint8 = processor.accept_uint8(model)
    train_transform = processor.transform(train=True, augment=fusion_args.augment, uint8=uint8)
    eval_transform = processor.transform(train=False)
    trainer_eval_transform = processor.transform(train=False, uint8=uint8)
    batch_size, device = training_args.per_device_eval_batch_size, training_args.device
    cached = frozen_modalities(model) if ft_args.precompute_features else []
    if cached and streaming:
        if "precompute_features" in explicit:
            raise UserError(
                "--precompute_features true cannot apply with --streaming: a stream is decoded as it is read, so the "
                "frozen encoders' outputs cannot be cached; drop the flag (they then run on every batch)"
            )
        logger.info("--streaming: the frozen encoder(s) of %s run on every batch, uncached", cached)
        cached = []
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
        trainer_eval_transform = CachedInputs(trainer_eval_transform, modalities, cached)
    if training_args.do_train:
        model.to(device)
        # Cached features are cheap to read in full; without a cache, 1024 rows through the encoders suffice.
        rows = splits["train"]
        if streaming:  # its head, read only when a frozen encoder's features are standardised
            rows = rows.head(STATISTICS_ROWS) if frozen_modalities(model) else []
        limit = None if cached else STATISTICS_ROWS
        counts = fit_feature_statistics(model, rows, eval_transform, batch_size, device, limit, training_args.seed)
        logger.info("feature standardisation fitted on %s training rows per modality", counts)
    datasets = {
        n: ds.with_transform(train_transform if n == "train" else trainer_eval_transform) for n, ds in splits.items()
    }
    trainer = build_trainer(model, training_args, datasets, processor, metrics, skipped=skipped)
    ablate = fusion_args.ablate_modalities

    def ablations(split, key):
        if not ablate:
            return {}
        return evaluate_without_modalities(trainer, splits[split], trainer_eval_transform, modalities, key)

    measure = TrainerMeasure(
        trainer,
        datasets,
        metrics,
        table_metrics=metrics.table_metrics(modalities if ablate else ()),
        extra_after=ablations,
        write_report=task_report_writer(tasks),
    )
    return trainer, datasets, measure
