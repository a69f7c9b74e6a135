"""Fine-tune a CLIP-family dual encoder for image classification, starting from its zero-shot head.

    accelerate launch recipes/clip_imagecls.py --model_name_or_path openai/clip-vit-base-patch32 \
        --dataset_name <hub dataset> --output_dir out --do_train --do_eval --do_predict \
        --finetune_strategy lora --num_train_epochs 5 --per_device_train_batch_size 16 --learning_rate 1e-5

Local data: --train_dir/--validation_dir/--test_dir (one sub-folder per class) or
--train_file/--validation_file/--test_file (CSV/JSONL with an image path column and a label column);
defaults from a YAML file with --config recipes/configs/clip_imagecls.yaml (the CLI wins).

The classifier head starts as CLIP's zero-shot classifier (prompt-ensembled class-name embeddings),
so the test split is evaluated before training (zero-shot) and after, side by side.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

import transformers
from transformers import AutoProcessor, EarlyStoppingCallback, Trainer, TrainingArguments, default_data_collator

from mm_hf.args import DataArguments, FinetuneArguments, ModelArguments, args_to_dict, parse_args
from mm_hf.data.images import check_images
from mm_hf.data.loading import dataset_display_name, load_classification_splits
from mm_hf.data.transforms import build_image_transform
from mm_hf.features import precompute_image_features
from mm_hf.hub import write_model_card, write_run_info
from mm_hf.metrics.streaming import ClassificationMetrics
from mm_hf.models import DEFAULT_PROMPT_TEMPLATES, build_clip_classifier
from mm_hf.outputs import (
    recipe_command,
    save_model,
    update_all_results,
    write_classification_outputs,
    write_run_config,
    write_training_curves,
)
from mm_hf.publish import publish_run
from mm_hf.reports import format_before_after_table
from mm_hf.training import (
    apply_finetune_strategy,
    check_launch,
    check_output_dir,
    evaluate_before_training,
    prepare_training_arguments,
    trainable_parameters,
)

logger = logging.getLogger(__name__)


@dataclass
class ClassifierArguments:
    image_column_name: str = field(default="image", metadata={"help": "Column holding images or image paths."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding class labels."})
    head_init: str = field(
        default="zeroshot",
        metadata={
            "help": "Head initialisation: zeroshot (class-prompt text embeddings) or random.",
            "choices": ["zeroshot", "random"],
        },
    )
    prompt_templates: list[str] | None = field(
        default=None, metadata={"help": "Prompt templates with {} for the class name, ensembled (default: CLIP's 7)."}
    )
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout on the image embedding before the head."})
    learn_logit_scale: bool = field(default=True, metadata={"help": "Train the head's temperature."})
    augment: bool = field(
        default=True, metadata={"help": "Random resized crop (+ flip, see --hflip) on training images."}
    )
    hflip: bool = field(
        default=True, metadata={"help": "Random horizontal flips in augmentation (off for text, digits...)."}
    )
    crop_scale_min: float = field(
        default=0.5, metadata={"help": "Smallest image area fraction kept by the random crop."}
    )


ARGUMENT_TYPES = (ModelArguments, DataArguments, FinetuneArguments, ClassifierArguments, TrainingArguments)


def main(argv=None):
    # 1. Arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, data_args, ft_args, cls_args, training_args = parse_args(ARGUMENT_TYPES, argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    check_launch(training_args)
    if training_args.do_train:
        check_output_dir(training_args.output_dir, ft_args.overwrite_output_dir)
    transformers.set_seed(training_args.seed)

    # 2. Data: every split validated (columns, labels, decodable images) before any training
    with training_args.main_process_first(desc="loading data"):  # one download/cache build, then the others read it
        splits = load_classification_splits(
            data_args, cls_args.image_column_name, cls_args.label_column_name, model_args.cache_dir, training_args.seed
        )
    skipped = {}
    for name in list(splits):
        splits[name], skipped[name] = check_images(
            splits[name],
            cls_args.image_column_name,
            skip_bad=data_args.skip_bad_samples,
            num_proc=data_args.preprocessing_num_workers,
            split_name=name,
        )
    labels = splits["train"].features["labels"].names
    id2label = dict(enumerate(labels))
    eval_split = "test" if "test" in splits else "validation"
    key = "test" if eval_split == "test" else "eval"  # Trainer's metric prefixes: test_*, eval_*
    push_to_hub = training_args.push_to_hub  # published by mm_hf.publish at the end, not by Trainer
    training_args = prepare_training_arguments(training_args, ft_args, has_validation="validation" in splits)

    # 3. Processor and model
    hub_kwargs = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
    }
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
    model = build_clip_classifier(
        model_args.model_name_or_path,
        id2label,
        tokenizer=processor.tokenizer,
        head_init=cls_args.head_init,
        prompt_templates=cls_args.prompt_templates or DEFAULT_PROMPT_TEMPLATES,
        head_dropout=cls_args.head_dropout,
        learn_logit_scale=cls_args.learn_logit_scale,
        **hub_kwargs,
    )
    model = apply_finetune_strategy(model, ft_args)
    trainable = trainable_parameters(model)
    logger.info("finetune_strategy=%s: %s", ft_args.finetune_strategy, trainable)

    # 4. Inputs: cached features for a linear probe, on-the-fly decoding + augmentation otherwise
    column = cls_args.image_column_name
    eval_transform = build_image_transform(processor.image_processor, train=False, image_column=column)
    if ft_args.finetune_strategy == "linear_probe" and ft_args.precompute_features:
        model.to(training_args.device)
        datasets_ = {
            name: precompute_image_features(
                model,
                ds,
                eval_transform,
                training_args.per_device_eval_batch_size,
                training_args.dataloader_num_workers,
            )
            for name, ds in splits.items()
        }
    else:
        train_transform = build_image_transform(
            processor.image_processor,
            train=cls_args.augment,
            image_column=column,
            crop_scale=(cls_args.crop_scale_min, 1.0),
            hflip=cls_args.hflip,
        )
        datasets_ = {
            name: ds.with_transform(train_transform if name == "train" else eval_transform)
            for name, ds in splits.items()
        }

    # 5. Trainer
    metrics = ClassificationMetrics(id2label)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=datasets_["train"],
        eval_dataset=datasets_.get("validation"),
        processing_class=processor,
        data_collator=default_data_collator,
        compute_metrics=metrics,
    )

    # 6. Evaluate the untouched model, train, evaluate again
    before = evaluate_before_training(trainer, datasets_[eval_split], f"zeroshot_{key}")
    before_report = metrics.last_report
    results = dict(before)
    train_runtime = None
    if training_args.do_train:
        # Early stopping watches only the evaluations made during training, not the before/after ones.
        early_stopping = None
        if ft_args.early_stopping_patience is not None:
            early_stopping = EarlyStoppingCallback(early_stopping_patience=ft_args.early_stopping_patience)
            trainer.add_callback(early_stopping)
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_runtime = train_result.metrics.get("train_runtime")
        results.update(train_result.metrics, train_samples=len(datasets_["train"]))
        if early_stopping is not None:
            trainer.remove_callback(early_stopping)
    if "validation" in datasets_ and eval_split != "validation":
        results.update(
            trainer.evaluate(datasets_["validation"], metric_key_prefix="eval"),
            eval_samples=len(datasets_["validation"]),
        )
    after = trainer.evaluate(datasets_[eval_split], metric_key_prefix=key)
    after[f"{key}_samples"] = len(datasets_[eval_split])
    results.update(after)
    before_label = "zero-shot" if cls_args.head_init == "zeroshot" else "random head"
    table = format_before_after_table({k.removeprefix("zeroshot_"): v for k, v in before.items()}, after).replace(
        "before (zero-shot)", f"before ({before_label})"
    )
    skipped_total = sum(len(v) for v in skipped.values())
    if skipped_total:
        results["skipped_bad_samples"] = skipped_total

    # 7. Save the model, outputs and model card (and publish when --push_to_hub)
    command = recipe_command(argv, script="recipes/clip_imagecls.py")
    saved_as = save_model(trainer, training_args.output_dir, merge_lora=ft_args.merge_lora)
    if trainer.is_world_process_zero():
        out = training_args.output_dir
        report_text = write_classification_outputs(out, metrics.last_report)
        write_classification_outputs(out, before_report, prefix="zeroshot_")
        write_training_curves(trainer, out)
        results = update_all_results(out, results)
        write_run_config(out, args_to_dict(model_args, data_args, ft_args, cls_args, training_args), command)
        with open(os.path.join(out, "before_after.md"), "w") as f:
            f.write(table)
        write_run_info(
            out,
            task="image-classification",
            pipeline_tag="image-classification",
            base_model=model_args.model_name_or_path,
            dataset=dataset_display_name(data_args),
            command=command,
            eval_split=key,
            before_label=before_label,
            finetune_strategy=ft_args.finetune_strategy,
            saved_as=saved_as,
            trainable=trainable,
            train_runtime=train_runtime,
        )
        write_model_card(out)
        print(f"\nEvaluation on the {eval_split} split ({len(datasets_[eval_split])} samples):\n\n{table}")
        print(report_text)
        if skipped_total:
            print(
                f"Skipped {skipped_total} unreadable samples: "
                + "; ".join(f"{src} ({why})" for bad in skipped.values() for src, why in bad[:5])
            )
        if push_to_hub:
            publish_run(training_args, out)
    return results


if __name__ == "__main__":
    main()
