"""Fine-tune a CLIP-family dual encoder for image classification, starting from its zero-shot head when it is any good.

    accelerate launch recipes/clip_imagecls.py --model_name_or_path openai/clip-vit-base-patch32 \
        --dataset_name <hub dataset> --output_dir out --do_train --do_eval --do_predict \
        --finetune_strategy lora --num_train_epochs 5 --per_device_train_batch_size 16 --learning_rate 1e-5

Local data: --train_dir/--validation_dir/--test_dir (one sub-folder per class) or
--train_file/--validation_file/--test_file (CSV/JSONL with an image path column and a label column, named by
--image_column and --label_column); defaults from a YAML file with --config recipes/configs/clip_imagecls.yaml
(the CLI wins). Data larger than the disk or than one pass of checks: --streaming --max_steps N, e.g. over
WebDataset shards: --train_file 'shards/train-*.tar' --image_column jpg --label_column cls --class_names ...

The classifier head starts as CLIP's zero-shot classifier (prompt-ensembled class-name embeddings) when that
beats chance on the validation split (--head_init auto), else at random; the test split is evaluated before
training and after, side by side. Flags left unset take per-strategy defaults (STRATEGY_DEFAULTS below).

Robust fine-tuning (README "Robust fine-tuning"): --finetune_strategy lp_ft (a converged linear probe, then
--lp_ft_second_stage full|lora from its head), --loss flyp (both towers trained contrastively against class-prompt
captions), --wise_ft_alphas 0,0.25,...,1 (weight interpolation with the zero-shot model, α chosen on validation or
--wise_ft_select NAME), each measured on every --ood_dir NAME=FOLDER set too.
"""

import sys
from dataclasses import dataclass, field

from transformers import AutoProcessor, TrainingArguments

from mm_hf.args import (
    ClassifierLossArguments,
    DataArguments,
    FinetuneArguments,
    ImageColumnArguments,
    LabelColumnArguments,
    ModelArguments,
    RobustnessArguments,
    fill_strategy_defaults,
)
from mm_hf.classifier_run import plan_probe, save_classifier_run, train_classifier
from mm_hf.data.images import check_images
from mm_hf.data.transforms import classifier_image_transforms
from mm_hf.errors import UserError, run_cli
from mm_hf.evaluate.shifts import load_run_shifts
from mm_hf.features import classifier_datasets
from mm_hf.flyp import build_dual_encoder_or_flyp, check_flyp
from mm_hf.models import DEFAULT_PROMPT_TEMPLATES, resolve_head_init
from mm_hf.retention import ZeroShotRetention
from mm_hf.run import load_checked_splits, prepare_training_arguments, start_run
from mm_hf.training import apply_strategy


@dataclass
class ClassifierArguments(LabelColumnArguments, ImageColumnArguments, ClassifierLossArguments):  # columns, --loss
    head_init: str = field(
        default="auto",
        metadata={
            "help": "Head initialisation: zeroshot (class-prompt text embeddings), random, or auto: zeroshot only "
            "if it clearly beats chance on the validation split (mm_hf.models.choose_head), else random.",
            "choices": ["auto", "zeroshot", "random"],
        },
    )
    prompt_templates: list[str] | None = field(
        default=None, metadata={"help": "Prompt templates with {} for the class name, ensembled (default: CLIP's 7)."}
    )
    # 0.1 bought nothing (small CLIP on digits: 0.197 with, 0.200 without; README "Choosing the defaults").
    head_dropout: float = field(default=0.0, metadata={"help": "Dropout on the image embedding before the head."})
    learn_logit_scale: bool = field(default=True, metadata={"help": "Train the head's temperature."})
    # Off: on digits the old crop (scale 0.5) cost 0.200 -> 0.123 and even a 0.8 one 0.310 -> 0.270 (small CLIP),
    # 0.760 -> 0.737 (DINOv2); on photo crops it was a wash (DINOv2: 0.967 without, 0.975 with). Flips mirror
    # text and digits.
    augment: bool = field(default=False, metadata={"help": "Random resized crop (+ --hflip) on training images."})
    hflip: bool = field(
        default=False, metadata={"help": "Random horizontal flips in augmentation (wrong for text, digits...)."}
    )
    crop_scale_min: float = field(
        default=0.8, metadata={"help": "Smallest image area fraction kept by the random crop."}
    )
    zeroshot_eval_dir: str | None = field(
        default=None,
        metadata={
            "help": "Class folders of an unrelated set: its zero-shot accuracy (the image tower against the text "
            "tower's prompt embeddings) before and after training, and at every WiSE-FT α: ability kept."
        },
    )


ARGUMENT_TYPES = (
    ModelArguments,
    DataArguments,
    FinetuneArguments,
    ClassifierArguments,
    RobustnessArguments,
    TrainingArguments,
)


def main(argv=None):
    # 1. Arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    parsed = fill_strategy_defaults(start_run(ARGUMENT_TYPES, argv))  # lr, epochs, schedule per strategy
    model_args, data_args, ft_args, cls_args, robust_args, training_args = parsed
    flyp = cls_args.loss == "flyp"
    if flyp:
        check_flyp(ft_args, cls_args.head_init, training_args.explicit_flags)
    # A linear probe caches the frozen tower's features of every split (and fits its head by L-BFGS on them).
    cache, lbfgs = plan_probe(ft_args, training_args, streaming=data_args.streaming)

    # 2. Data: every split validated (columns, labels, decodable images) before any training
    column = cls_args.image_column
    splits, skipped = load_checked_splits(
        data_args, training_args, model_args.cache_dir, column, cls_args.label_column, check_images,
        input_flag="--image_column",
    )  # fmt: skip
    id2label = dict(enumerate(splits["train"].features["labels"].names))
    # --ood_dir / --ood_file sets and the --robustness sweep, measured before and after fine-tuning (mm_hf.evaluate)
    shifts, skipped_shifted = load_run_shifts(
        robust_args, data_args, training_args, model_args.cache_dir, id2label.values(), column, cls_args.label_column,
        modality="image", input_flag="--image_column",
    )  # fmt: skip
    skipped.update(skipped_shifted)
    push_to_hub = training_args.push_to_hub  # published by mm_hf.publish at the end, not by Trainer
    training_args = prepare_training_arguments(
        training_args, ft_args, has_validation="validation" in splits, streaming=data_args.streaming
    )
    if data_args.streaming and cls_args.head_init == "auto" and "validation" not in splits:
        raise UserError(
            "--head_init auto measures the zero-shot head on the validation split, and with --streaming there is no "
            "training data to hold out: pass --validation_dir/--validation_file, or --head_init zeroshot/random"
        )

    # 3. Processor and model (its head is chosen in 5)
    hub_kwargs = model_args.hub_kwargs()
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
    templates = cls_args.prompt_templates or DEFAULT_PROMPT_TEMPLATES
    # --loss flyp: both towers train contrastively, the head is the text tower's (mm_hf.flyp)
    model = build_dual_encoder_or_flyp(
        model_args.model_name_or_path, id2label, processor.tokenizer, templates, flyp=flyp,
        head_init="random" if cls_args.head_init == "random" else "zeroshot", hub_kwargs=hub_kwargs,
        head_dropout=cls_args.head_dropout, learn_logit_scale=cls_args.learn_logit_scale,
    )  # fmt: skip

    # 4. Inputs: cached features for a linear probe, on-the-fly decoding + augmentation otherwise (the Trainer's
    # batches as uint8, normalised by the model on its device; `eval_transform` gives float pixel values)
    train_transform, trainer_eval, eval_transform = classifier_image_transforms(
        model, processor.image_processor, column, augment=cls_args.augment,
        crop_scale=(cls_args.crop_scale_min, 1.0), hflip=cls_args.hflip, cached=cache,
    )  # fmt: skip
    datasets_ = classifier_datasets(
        model, splits, train_transform, trainer_eval, training_args, cache, ft_args.features_cache_dir
    )

    # 5. Head (measured on the inputs just built: cached features cost no extra backbone pass) and strategy
    # The validation split, else the training split without augmentation, measures an `auto` zero-shot head.
    held_out = datasets_.get("validation") or (
        datasets_["train"] if cache else splits["train"].with_transform(eval_transform)
    )
    head = (
        {"head_init": "zeroshot"}
        if flyp
        else resolve_head_init(
            model,
            cls_args.head_init,
            held_out,
            training_args,
            measured_on="validation" if "validation" in datasets_ else "train",
        )
    )
    model = apply_strategy(model, ft_args)

    # 6. Evaluate the untouched model, train (or fit a linear probe's head to convergence on the cached features by
    # L-BFGS instead of by epochs), evaluate again, on every --ood_dir / --robustness set too
    before_label = "zero-shot" if head["head_init"] == "zeroshot" else "random head"
    retention = cls_args.zeroshot_eval_dir and ZeroShotRetention(
        model_args.model_name_or_path, cls_args.zeroshot_eval_dir, processor.tokenizer, templates, eval_transform,
        column, training_args.per_device_eval_batch_size, **hub_kwargs,
    )  # fmt: skip
    trainer, run = train_classifier(
        model, processor, datasets_, splits, eval_transform, id2label, shifts, training_args, ft_args,
        before_label=before_label, lbfgs=lbfgs, skipped=skipped, retention=retention or None,
    )  # fmt: skip

    # 7. Save the model (FLYP: the plain classifier, its head recomputed), outputs and model card (and publish)
    run.results.update({f"head_{k}" if k != "head_init" else k: v for k, v in head.items()})
    return save_classifier_run(
        trainer, run, (model_args, data_args, ft_args, cls_args, robust_args, training_args), argv,
        pipeline_tag="image-classification", script="recipes/clip_imagecls.py", skipped=skipped,
        push_to_hub=push_to_hub, head=head,
    )  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
