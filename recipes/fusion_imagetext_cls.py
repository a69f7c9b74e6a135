"""Fuse pretrained image and text encoders (plus audio and tabular features) and fine-tune one or more heads.

    accelerate launch recipes/fusion_imagetext_cls.py \
        --vision_model_name_or_path google/vit-base-patch16-224-in21k --text_model_name_or_path bert-base-uncased \
        --train_file train.jsonl --validation_file val.jsonl --test_file test.jsonl \
        --image_column image --text_column report --label_column findings \
        --problem_type multi_label_classification --fusion cross_attention \
        --output_dir out --do_train --do_eval --do_predict --finetune_strategy lora --num_train_epochs 5

E.g. an X-ray with its report (multi-label findings), a meme with its caption (sentiment), a product image +
title + user features -> click (`--numeric_columns --categorical_columns --problem_type binary_classification`,
see recipes/configs/fusion_click_demo.yaml). Data: CSV/JSONL (media paths relative to the file) or a Hub
dataset; an empty cell means the sample lacks that modality (a learned placeholder stands in). Heads:
single-label (cross-entropy), multi-label (binary cross-entropy), binary, regression (MSE); several
--label_column with one --problem_type each make a multi-task model (--loss_weights).

The test split is evaluated before training (untrained heads: the chance baseline), after, and after with each
modality removed (`test_without_<modality>_<metric>`: what each modality contributes).
"""

import logging
import sys

from transformers import Trainer, TrainingArguments, default_data_collator

from mm_hf.args import DataArguments, FinetuneArguments, FusionDataArguments, FusionModelArguments, args_to_dict
from mm_hf.data.audio import check_audio
from mm_hf.data.images import check_images
from mm_hf.data.loading import dataset_display_name
from mm_hf.data.multimodal import MultimodalColumns, load_multimodal_splits
from mm_hf.data.tabular import TabularProcessor
from mm_hf.evaluation import TaskMetrics, evaluate_without_modalities, train_with_before_after
from mm_hf.models import build_fusion_classifier
from mm_hf.outputs import recipe_command, save_classification_run, task_report_writer
from mm_hf.processing import MultimodalProcessor, ProcessorSettings
from mm_hf.training import apply_fusion_strategy, prepare_training_arguments, start_run, trainable_parameters

logger = logging.getLogger(__name__)
BEFORE_LABEL = "untrained heads"
ARGUMENT_TYPES = (FusionModelArguments, FusionDataArguments, DataArguments, FinetuneArguments, TrainingArguments)


def main(argv=None):
    # 1. Arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, fusion_args, data_args, ft_args, training_args = start_run(ARGUMENT_TYPES, argv)

    # 2. Data: rows with image/text/audio/tabular inputs (any may be missing), labels per task; media checked
    columns = MultimodalColumns(
        image=fusion_args.image_column,
        text=fusion_args.text_column,
        audio=fusion_args.audio_column,
        numeric=fusion_args.numeric_columns,
        categorical=fusion_args.categorical_columns,
        labels=fusion_args.label_column,
    )
    problem_type = fusion_args.problem_type[0] if len(fusion_args.problem_type) == 1 else fusion_args.problem_type
    with training_args.main_process_first(desc="loading data"):
        splits, spaces = load_multimodal_splits(
            data_args, columns, problem_type, model_args.cache_dir, training_args.seed, data_args.skip_bad_samples
        )
    skipped = {name: [] for name in splits}
    checks = {"image": check_images, "audio": check_audio}
    for modality in (m for m in columns.modalities if m in checks):
        for name in list(splits):
            splits[name], bad = checks[modality](
                splits[name], modality, skip_bad=data_args.skip_bad_samples, split_name=name, allow_missing=True
            )
            skipped[name] += bad
    tasks = fusion_args.tasks(spaces)
    metrics = TaskMetrics(tasks, threshold=fusion_args.threshold)
    push_to_hub = training_args.push_to_hub  # published by mm_hf.publish at the end, not by Trainer
    labels = ["labels"] if len(tasks) == 1 else [f"labels_{t['name']}" for t in tasks]
    training_args = prepare_training_arguments(
        training_args,
        ft_args,
        has_validation="validation" in splits,
        best_metric=metrics.best_metric(),
        label_names=labels,
        batch_eval_metrics=False,  # metrics such as ROC-AUC and mAP need every score at once
    )

    # 3. Processor: each encoder's own processor + tabular statistics of the training split
    encoders = {
        "image": model_args.vision_model_name_or_path,
        "text": model_args.text_model_name_or_path,
        "audio": model_args.audio_model_name_or_path,
        "tabular": None,
    }
    encoders = {m: encoders[m] for m in columns.modalities}
    tabular = None
    if "tabular" in encoders:
        tabular = TabularProcessor().fit(splits["train"], columns.numeric, columns.categorical)
    settings = ProcessorSettings(
        modalities=columns.modalities,
        max_length=fusion_args.max_seq_length,
        max_length_seconds=fusion_args.max_length_seconds,
    )
    processor = MultimodalProcessor.from_encoders(encoders, settings, tabular, **model_args.hub_kwargs())

    # 4. Model: pretrained encoders -> pooling -> projection -> fusion -> one head per task
    model = build_fusion_classifier(
        encoders,
        tasks,
        tabular_num_numeric=len(columns.numeric),
        tabular_cardinalities=tabular.cardinalities if tabular else (),
        from_pretrained_kwargs=model_args.hub_kwargs(),
        fusion=model_args.fusion,
        hidden_size=model_args.hidden_size,
        fusion_num_layers=model_args.fusion_num_layers,
        fusion_num_heads=model_args.fusion_num_heads,
        tensor_rank=model_args.tensor_rank,
        image_pooling=model_args.image_pooling,
        text_pooling=model_args.text_pooling,
        audio_pooling=model_args.audio_pooling,
        head_dropout=model_args.head_dropout,
        modality_dropout=model_args.modality_dropout,
    )
    per_encoder = {"vision": model_args.vision_strategy, "text": model_args.text_strategy}
    per_encoder["audio"] = model_args.audio_strategy
    model = apply_fusion_strategy(model, ft_args, per_encoder)
    trainable = trainable_parameters(model)
    logger.info("finetune_strategy=%s (per encoder %s): %s", ft_args.finetune_strategy, per_encoder, trainable)

    # 5. Inputs decoded on the fly, and Trainer
    transforms = {True: processor.transform(train=True, augment=fusion_args.augment), False: processor.transform(False)}
    datasets_ = {name: ds.with_transform(transforms[name == "train"]) for name, ds in splits.items()}
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=datasets_["train"],
        eval_dataset=datasets_.get("validation"),
        processing_class=processor,
        data_collator=default_data_collator,
        compute_metrics=metrics,
    )

    # 6. Evaluate the untrained heads, train, evaluate again (also with each modality removed)
    def ablations(split, key):
        if not fusion_args.ablate_modalities:
            return {}
        return evaluate_without_modalities(trainer, splits[split], transforms[False], columns.modalities, key)

    run = train_with_before_after(
        trainer,
        datasets_,
        metrics,
        do_train=training_args.do_train,
        early_stopping_patience=ft_args.early_stopping_patience,
        resume_from_checkpoint=training_args.resume_from_checkpoint,
        before_label=BEFORE_LABEL,
        table_metrics=metrics.table_metrics(columns.modalities if fusion_args.ablate_modalities else ()),
        extra_after=ablations,
    )

    # 7. Save the model (LoRA merged: the encoders' adapters fold into one checkpoint), outputs and card
    return save_classification_run(
        trainer,
        command=recipe_command(argv, script="recipes/fusion_imagetext_cls.py"),
        resolved_args=args_to_dict(model_args, fusion_args, data_args, ft_args, training_args),
        results=run.results,
        report=run.after_report,
        before_report=run.before_report,
        before_after_table=run.table,
        skipped=skipped,
        merge_lora=True,
        push_to_hub=push_to_hub,
        write_reports=task_report_writer(tasks),
        task=f"multimodal ({' + '.join(columns.modalities)}) classification",
        pipeline_tag=None,
        eval_task_type="multimodal-classification",
        usage="fusion",
        base_model=" + ".join(dict.fromkeys(p for p in encoders.values() if p)),
        dataset=dataset_display_name(data_args),
        eval_split=run.eval_key,
        before_label=BEFORE_LABEL,
        finetune_strategy=ft_args.finetune_strategy,
        trainable=trainable,
        train_runtime=run.train_runtime,
    )


if __name__ == "__main__":
    main()
