"""Fuse pretrained image and text encoders (plus audio and tabular features) and fine-tune one or more heads.

    accelerate launch recipes/fusion_imagetext_cls.py \
        --vision_model_name_or_path google/vit-base-patch16-224-in21k --text_model_name_or_path bert-base-uncased \
        --train_file train.jsonl --validation_file val.jsonl --test_file test.jsonl \
        --image_column image --text_column report --label_column findings \
        --problem_type multi_label_classification --fusion cross_attention \
        --output_dir out --do_train --do_eval --do_predict --finetune_strategy lora --num_train_epochs 5

E.g. an X-ray with its report (multi-label findings), a meme with its caption (sentiment), a product image +
title + user features -> click (`--numeric_columns --categorical_columns --problem_type binary_classification`,
see recipes/configs/fusion_imagetext_cls_click_demo.yaml). Data: CSV/JSONL (media paths relative to the file) or a Hub
dataset; an empty cell means the sample lacks that modality (a learned placeholder stands in). Heads:
single-label (cross-entropy), multi-label (binary cross-entropy), binary, regression (MSE); several
--label_column with one --problem_type each make a multi-task model (--loss_weights).

The test split is evaluated before training (untrained heads: the chance baseline), after, and after with each
modality removed (`test_without_<modality>_<metric>`: what each modality contributes).
"""

import sys

from mm_hf.args import (
    DataArguments,
    FinetuneArguments,
    FusionDataArguments,
    FusionModelArguments,
    FusionTrainingArguments,
    args_to_dict,
)
from mm_hf.data.loading import dataset_display_name
from mm_hf.data.multimodal import MultimodalColumns, check_media, load_multimodal_splits
from mm_hf.data.tabular import TabularProcessor
from mm_hf.errors import UserError, run_cli
from mm_hf.measures import FUSION_BEFORE_LABEL
from mm_hf.models import build_fusion_classifier
from mm_hf.outputs import fusion_run_info, recipe_command, save_run
from mm_hf.processing import MultimodalProcessor, ProcessorSettings
from mm_hf.run import fusion_trainer, start_run, train_and_evaluate
from mm_hf.training import apply_strategy

ARGUMENT_TYPES = (FusionModelArguments, FusionDataArguments, DataArguments, FinetuneArguments, FusionTrainingArguments)


def main(argv=None):
    # 1. Arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, fusion_args, data_args, ft_args, training_args = start_run(ARGUMENT_TYPES, argv)
    if fusion_args.video_column:
        raise UserError("--video_column: videos (frames + temporal pooling) are for recipes/video_cls.py")

    # 2. Data: rows with image/text/audio/tabular inputs (any may be missing) and labels per task
    columns = MultimodalColumns(
        image=fusion_args.image_column,
        text=fusion_args.text_column,
        audio=fusion_args.audio_column,
        numeric=fusion_args.numeric_columns,
        categorical=fusion_args.categorical_columns,
        labels=fusion_args.label_column,
    )
    modalities = columns.modalities
    with training_args.main_process_first(desc="loading data"):
        splits, spaces = load_multimodal_splits(
            data_args,
            columns,
            fusion_args.problem_types(),
            model_args.cache_dir,
            training_args.seed,
            data_args.skip_bad_samples,
        )

    # 3. Processor: each encoder's own processor; every image/clip decoded once before training; tabular
    # statistics from the training split
    encoders = model_args.encoders(modalities)
    settings = ProcessorSettings(modalities, fusion_args.max_seq_length, fusion_args.max_length_seconds)
    tabular = TabularProcessor() if "tabular" in modalities else None
    processor = MultimodalProcessor.from_encoders(encoders, settings, tabular, **model_args.hub_kwargs())
    splits, skipped = check_media(
        splits,
        modalities,
        skip_bad=data_args.skip_bad_samples,
        num_proc=data_args.preprocessing_num_workers,
        audio_sampling_rate=getattr(processor.feature_extractor, "sampling_rate", None),
    )
    if tabular is not None:
        tabular.fit(splits["train"], columns.numeric, columns.categorical)

    # 4. Model: pretrained encoders -> pooling -> projection -> fusion -> one head per task
    tasks = fusion_args.tasks(spaces)
    model = build_fusion_classifier(
        encoders,
        tasks,
        tabular_num_numeric=len(columns.numeric),
        tabular_cardinalities=tabular.cardinalities if tabular else (),
        from_pretrained_kwargs=model_args.hub_kwargs(),
        # A Whisper audio encoder runs on the clips' own length, not its 30 s window; the extractor pads to match
        audio_feature_extractor=processor.feature_extractor,
        max_length_seconds=fusion_args.max_length_seconds,
        **model_args.config_kwargs(),
    )
    model = apply_strategy(model, ft_args, model_args.encoder_strategies())

    # 5. Trainer over inputs decoded on the fly: untrained heads evaluated, trained, evaluated again (also with
    # each modality removed)
    trainer, datasets_, measure = fusion_trainer(
        model, processor, splits, tasks, modalities, training_args, ft_args, fusion_args
    )
    run = train_and_evaluate(trainer, datasets_, measure, ft_args, before_label=FUSION_BEFORE_LABEL)

    # 6. Save the model (LoRA merged), processor, reports and card (and publish when --push_to_hub)
    info = fusion_run_info(
        modalities,
        encoders,
        dataset=dataset_display_name(data_args),
        command=recipe_command(argv, script="recipes/fusion_imagetext_cls.py"),
        finetune_strategy=ft_args.finetune_strategy,
    )
    config = args_to_dict(model_args, fusion_args, data_args, ft_args, training_args)
    return save_run(
        trainer, run, info, config=config, skipped=skipped, push_to_hub=training_args.push_to_hub, merge_lora=True
    )


if __name__ == "__main__":
    run_cli(main)
