"""Fuse pretrained image and text encoders (plus audio and tabular features) and fine-tune one or more heads.

    accelerate launch recipes/fusion_imagetext_cls.py \
        --vision_model_name_or_path google/vit-base-patch16-224-in21k --text_model_name_or_path bert-base-uncased \
        --train_file train.jsonl --validation_file val.jsonl --test_file test.jsonl \
        --image_column image --text_column report --label_column findings \
        --problem_type multi_label_classification --fusion cross_attention \
        --output_dir out --do_train --do_eval --do_predict --finetune_strategy lora --num_train_epochs 5

E.g. an X-ray with its report (multi-label findings), a meme with its caption (sentiment), a product image +
title + user features -> click (`--numeric_columns --categorical_columns --problem_type binary_classification`,
see recipes/configs/fusion_imagetext_cls_click_demo.yaml), or each user's held-out items ranked among sampled
negatives (`--problem_type ranking --group_column user_id`: recall/ndcg@K, mrr; recipes/configs/recommendation.yaml).
Data: CSV/JSONL (media paths relative to the file) or a Hub dataset; an empty cell means the sample lacks that modality (a learned placeholder stands in). Heads:
single-label (cross-entropy), multi-label (binary cross-entropy), binary, regression (MSE); several
--label_column with one --problem_type each make a multi-task model (--loss_weights).

Data beyond memory: --streaming --max_steps N reads the training rows as a stream (CSV/JSONL/parquet files, a Hub
split, or WebDataset shards: --train_file 'shards/train-*.tar' --image_column jpg --text_column txt --label_column
cls --class_names no yes). Label spaces come from --class_names (one single-label task), a ClassLabel column or the
validation split; tabular and feature statistics from the stream's first 1024 usable rows; bad rows are skipped and
counted (--max_bad_fraction); the validation/test splits are read whole (mm_hf/data/multimodal_stream.py).

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
    RobustnessArguments,
    args_to_dict,
)
from mm_hf.data.loading import dataset_display_name
from mm_hf.errors import UserError, run_cli
from mm_hf.evaluate.shifts import load_fusion_shifts, with_shifts
from mm_hf.fusion_run import fusion_model, fusion_processor, fusion_trainer, load_fusion_rows
from mm_hf.measures import FUSION_BEFORE_LABEL
from mm_hf.outputs import fusion_run_info, recipe_command, save_run
from mm_hf.processing import ProcessorSettings
from mm_hf.run import start_run, train_and_evaluate

ARGUMENT_TYPES = (
    FusionModelArguments,
    FusionDataArguments,
    DataArguments,
    FinetuneArguments,
    RobustnessArguments,
    FusionTrainingArguments,
)


def main(argv=None):
    # 1. Arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, fusion_args, data_args, ft_args, robust_args, training_args = start_run(ARGUMENT_TYPES, argv)
    if fusion_args.video_column:
        raise UserError("--video_column: videos (frames + temporal pooling) are for recipes/video_cls.py")

    # 2. Data: rows with image/text/audio/tabular inputs (any may be missing) and labels per task
    columns, splits, spaces = load_fusion_rows(fusion_args, data_args, training_args, model_args.cache_dir)
    modalities = columns.modalities

    # 3. Processor: each encoder's own processor; every image/clip decoded once before training (a stream: as it is
    # read); tabular statistics from the training split (a stream: its first rows)
    encoders = model_args.encoders(modalities)
    settings = ProcessorSettings(modalities, fusion_args.max_seq_length, fusion_args.max_length_seconds)
    processor, tabular, splits, skipped = fusion_processor(
        splits, encoders, settings, columns, data_args, model_args, checked_modalities=modalities
    )

    # 4. Model: pretrained encoders -> pooling -> projection -> fusion -> one head per task
    tasks = fusion_args.tasks(spaces)
    # --ood_file sets and --robustness corruptions of the media/text columns, measured before and after training
    sampling_rate = getattr(processor.feature_extractor, "sampling_rate", None)
    shifts = load_fusion_shifts(
        robust_args, data_args, training_args, model_args.cache_dir, columns, tasks, sampling_rate
    )
    model = fusion_model(encoders, tasks, processor, tabular, columns, model_args, fusion_args, ft_args)

    # 5. Trainer over inputs decoded on the fly: untrained heads evaluated, trained, evaluated again (also with
    # each modality removed)
    trainer, datasets_, measure = fusion_trainer(
        model, processor, splits, tasks, modalities, training_args, ft_args, fusion_args, skipped
    )
    measure = with_shifts(measure, shifts, trainer, splits, processor.transform(train=False), tasks[0].labels)
    run = train_and_evaluate(trainer, datasets_, measure, ft_args, before_label=FUSION_BEFORE_LABEL)

    # 6. Save the model (LoRA merged), processor, reports and card (and publish when --push_to_hub)
    info = fusion_run_info(
        modalities,
        encoders,
        dataset=dataset_display_name(data_args),
        command=recipe_command(argv, script="recipes/fusion_imagetext_cls.py"),
        finetune_strategy=ft_args.finetune_strategy,
    )
    config = args_to_dict(model_args, fusion_args, data_args, ft_args, robust_args, training_args)
    return save_run(
        trainer, run, info, config=config, skipped=skipped, push_to_hub=training_args.push_to_hub, merge_lora=True
    )


if __name__ == "__main__":
    run_cli(main)
