"""Contrastive image–text or audio–text fine-tuning of a dual encoder, evaluated as retrieval before and after.

    accelerate launch recipes/clip_retrieval.py --model_name_or_path openai/clip-vit-base-patch32 \
        --train_file pairs.jsonl --validation_file val.jsonl --image_column image --caption_column caption \
        --output_dir out --do_train --do_eval [--finetune_strategy lora|full|lock_image|lock_text]
    accelerate launch recipes/clip_retrieval.py --model_name_or_path laion/clap-htsat-unfused \
        --train_file clips.jsonl --validation_file val.jsonl --audio_column audio --caption_column caption \
        --output_dir out --do_train --do_eval --finetune_strategy lock_text

Data: CSV/JSONL rows of image or audio path + caption (a string, or a list of captions per item), a folder
of media with a metadata.jsonl (`file_name` + caption), or a Hub dataset with image/audio + caption columns.
The modality follows the model (`--modality auto`): audio for an audio–text model (CLAP, whose config has
an `audio_config`), image otherwise. Audio is decoded at the feature extractor's rate and cut to the
model's window (CLAP: 10 s) or `--max_length_seconds`; `lock_image` locks the media tower, i.e. CLAP's audio
tower + projection. A new dual encoder can be assembled from any vision and text encoder:
`--vision_model_name_or_path google/vit-base-patch16-224 --text_model_name_or_path bert-base-uncased`.

The loss (symmetric InfoNCE, or SigLIP's sigmoid loss with --loss siglip) is computed over the global
batch: negatives are gathered from every process with gradients, so N processes optimise the same
objective as one process with the whole batch; CLAP keeps its two temperatures (audio->text logits scaled
by logit_scale_a, text->audio ones by logit_scale_t). The output folder holds the fine-tuned dual encoder
itself (a plain CLIPModel/SiglipModel/VisionTextDualEncoderModel/ClapModel checkpoint, LoRA merged) +
processor.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, default_data_collator

from mm_hf.args import (
    AudioColumnArguments,
    CaptionColumnArguments,
    DataArguments,
    FinetuneArguments,
    ImageColumnArguments,
    ModelArguments,
    args_to_dict,
    media_column,
)
from mm_hf.data.loading import dataset_display_name
from mm_hf.data.pairs import load_caption_splits
from mm_hf.errors import run_cli
from mm_hf.hub import write_model_card, write_run_info
from mm_hf.models import ContrastiveDualEncoderModel
from mm_hf.models.text_length import text_max_length
from mm_hf.outputs import recipe_command, update_all_results, write_run_config, write_training_curves
from mm_hf.publish import publish_run
from mm_hf.reports import format_before_after_table
from mm_hf.retrieval import PairTransform, build_media, load_dual_encoder, measure_retrieval, resolve_modality
from mm_hf.run import prepare_training_arguments, start_run
from mm_hf.training import apply_contrastive_strategy, trainable_parameters

logger = logging.getLogger(__name__)
# {m}: the modality ("image" or "audio"), as the metric keys name it.
TABLE_METRICS = ("{m}_to_text_recall@1", "{m}_to_text_recall@5", "text_to_{m}_recall@1", "text_to_{m}_recall@5",
                 "text_to_{m}_median_rank", "zeroshot_cls_accuracy")  # fmt: skip


@dataclass
class RetrievalArguments(CaptionColumnArguments, AudioColumnArguments, ImageColumnArguments):
    modality: str = field(
        default="auto",
        metadata={
            "help": "image or audio (lock_image then locks the audio tower); auto: audio for an audio-text model "
            "(CLAP: its config has an audio_config), else image.",
            "choices": ["auto", "image", "audio"],
        },
    )
    max_length_seconds: float | None = field(
        default=None,
        metadata={
            "help": "Clips are cut to this many seconds (training: a random window, evaluation: the first one); "
            "default and maximum: the model's window (CLAP: 10 s)."
        },
    )
    vision_model_name_or_path: str | None = field(
        default=None, metadata={"help": "With --text_model_name_or_path: assemble a new dual encoder from these two."}
    )
    text_model_name_or_path: str | None = field(default=None, metadata={"help": "Text encoder of a new dual encoder."})
    projection_dim: int = field(default=512, metadata={"help": "Embedding size of a newly assembled dual encoder."})
    loss: str = field(
        default="clip", metadata={"help": "clip (InfoNCE) or siglip (sigmoid).", "choices": ["clip", "siglip"]}
    )
    gather_negatives: bool = field(default=True, metadata={"help": "Loss over the global batch across processes."})
    max_seq_length: int = field(
        default=64,
        metadata={"help": "Captions are padded/truncated to this many tokens (at most the text tower's positions)."},
    )
    zeroshot_eval_dir: str | None = field(
        default=None, metadata={"help": "Class folders for zero-shot classification before/after (ability kept)."}
    )
    prompt_templates: list[str] | None = field(
        default=None,
        metadata={"help": "Prompts for --zeroshot_eval_dir (default: 'a photo of a {}.'; audio: CLAP's 3 prompts)."},
    )
    augment: bool = field(
        default=False, metadata={"help": "Training images: random resized crop; clips: random gain, noise, shift."}
    )


ARGUMENT_TYPES = (ModelArguments, DataArguments, FinetuneArguments, RetrievalArguments, TrainingArguments)


def main(argv=None):
    # 1. Arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, data_args, ft_args, ret_args, training_args = start_run(ARGUMENT_TYPES, argv)

    # 2. Processor and dual encoder (a pretrained one, or one assembled from two encoders); its modality
    backbone, processor, base_model = load_dual_encoder(
        model_args.model_name_or_path,
        vision_model_name_or_path=ret_args.vision_model_name_or_path,
        text_model_name_or_path=ret_args.text_model_name_or_path,
        projection_dim=ret_args.projection_dim,
        **model_args.hub_kwargs(),
    )
    # How the media column is validated, decoded and embedded: images, or audio clips for CLAP.
    modality = resolve_modality(ret_args.modality, backbone.config)
    column = media_column(ret_args, modality, training_args.explicit_flags)
    media = build_media(modality, processor, column, max_length_seconds=ret_args.max_length_seconds)
    tokenizer = processor.tokenizer
    # Captions never longer than the text tower has positions for (CLIP: 77), whatever --max_seq_length says.
    max_length = text_max_length(tokenizer, backbone.config, ret_args.max_seq_length)

    # 3. Data: captions cleaned, images/clips decodable, before any training
    with training_args.main_process_first(desc="loading data"):
        splits = load_caption_splits(
            data_args,
            column,
            ret_args.caption_column,
            model_args.cache_dir,
            skip_bad=data_args.skip_bad_samples,
            media_flag=f"--{modality}_column",
        )
    for name in list(splits):
        splits[name], _ = media.check(
            splits[name],
            skip_bad=data_args.skip_bad_samples,
            num_proc=data_args.preprocessing_num_workers,
            split_name=name,
        )
    eval_split = "test" if "test" in splits else "validation"
    key = "test" if eval_split == "test" else "eval"  # metric prefixes: test_*, eval_* (Trainer's convention)
    push_to_hub = training_args.push_to_hub
    # Gathering negatives needs the same batch size on every process: drop the ragged last batch. No labels:
    # the loss comes from the pairs themselves (Trainer then reports eval_loss without them).
    training_args = prepare_training_arguments(
        training_args,
        ft_args,
        has_validation="validation" in splits,
        best_metric="loss",
        dataloader_drop_last=True,
        label_names=[],
    )

    # 4. Model: the contrastive wrapper (the loss is the model's own) and what the strategy trains
    model = ContrastiveDualEncoderModel.from_backbone(backbone, ret_args.loss, ret_args.gather_negatives, base_model)
    model = apply_contrastive_strategy(model, ft_args)
    trainable = trainable_parameters(model)
    logger.info("finetune_strategy=%s: %s", ft_args.finetune_strategy, trainable)

    # 5. Inputs (an image or clip + one of its captions per row) and Trainer
    train_ds = splits["train"].with_transform(
        PairTransform(media, tokenizer, train=True, augment=ret_args.augment, max_length=max_length)
    )
    eval_ds = None
    if "validation" in splits:
        eval_ds = splits["validation"].with_transform(
            PairTransform(media, tokenizer, train=False, max_length=max_length)
        )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=processor,
        data_collator=default_data_collator,
    )

    def measure(prefix: str) -> dict:
        """Retrieval (and zero-shot classification) metrics of the current weights, on the main process."""
        if not trainer.is_world_process_zero():
            return {}
        return measure_retrieval(
            trainer.accelerator.unwrap_model(trainer.model),
            splits[eval_split],
            media,
            tokenizer,
            batch_size=training_args.per_device_eval_batch_size,
            max_length=max_length,
            prefix=f"{prefix}{key}_",
            zeroshot_eval_dir=ret_args.zeroshot_eval_dir,
            prompt_templates=ret_args.prompt_templates,
        )

    # 6. Evaluate the untouched model, train, evaluate again
    before = measure("zeroshot_")
    results = dict(before)
    train_runtime = None
    if training_args.do_train:
        if ft_args.early_stopping_patience is not None:
            trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=ft_args.early_stopping_patience))
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_runtime = train_result.metrics.get("train_runtime")
        results.update(train_result.metrics, train_samples=len(splits["train"]))
    if eval_ds is not None and training_args.do_eval:
        results.update(trainer.evaluate(eval_ds, metric_key_prefix="eval"))
    after = measure("")
    results.update(after)

    # 7. Save the dual encoder (LoRA merged), processor, results and card
    out = training_args.output_dir
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        trained = trainer.accelerator.unwrap_model(trainer.model)
        trained = trained.merge_and_unload() if hasattr(trained, "peft_config") else trained
        trained.backbone.save_pretrained(out)
        processor.save_pretrained(out)
        command = recipe_command(argv, script="recipes/clip_retrieval.py")
        table = format_before_after_table(
            {k.removeprefix("zeroshot_"): v for k, v in before.items()},
            after,
            metrics=[f"{key}_{m.format(m=media.name)}" for m in TABLE_METRICS],
        )
        with open(os.path.join(out, "before_after.md"), "w") as f:
            f.write(table)
        write_training_curves(trainer, out)
        update_all_results(out, results)
        write_run_config(out, args_to_dict(model_args, data_args, ft_args, ret_args, training_args), command)
        write_run_info(
            out,
            task=media.task,
            pipeline_tag=media.pipeline_tag,
            base_model=base_model,
            dataset=dataset_display_name(data_args),
            command=command,
            eval_split=key,
            before_label="before fine-tuning",
            finetune_strategy=ft_args.finetune_strategy,
            saved_as="full",
            trainable=trainable,
            train_runtime=train_runtime,
        )
        write_model_card(out)
        print(f"\nRetrieval on the {eval_split} split ({len(splits[eval_split])} {media.plural}):\n\n{table}")
        if push_to_hub:
            publish_run(training_args, out)
    return results


if __name__ == "__main__":
    run_cli(main)
