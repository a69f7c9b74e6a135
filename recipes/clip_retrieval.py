"""Contrastive image–text or audio–text fine-tuning of a dual encoder, evaluated as retrieval before and after.

    accelerate launch recipes/clip_retrieval.py --model_name_or_path openai/clip-vit-base-patch32 \
        --train_file pairs.jsonl --validation_file val.jsonl --image_column image --caption_column caption \
        --output_dir out --do_train --do_eval [--finetune_strategy lora|full|lock_image|lock_text]
    accelerate launch recipes/clip_retrieval.py --model_name_or_path laion/clap-htsat-unfused \
        --train_file clips.jsonl --validation_file val.jsonl --audio_column audio --caption_column caption \
        --output_dir out --do_train --do_eval --finetune_strategy lock_text

Data: CSV/JSONL rows of image or audio path + caption (a string, or a list of captions per item), a folder
of media with a metadata.jsonl (`file_name` + caption), or a Hub dataset with image/audio + caption columns.
Pairs beyond memory: --streaming --max_steps N reads the training pairs as a stream (also WebDataset shards:
--train_file 'shards/train-*.tar' --image_column jpg --caption_column txt), skipping and counting bad pairs
(--max_bad_fraction); the validation/test splits are read whole, as retrieval ranks against the whole gallery.
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

import sys
from dataclasses import dataclass, field

from transformers import TrainingArguments

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
from mm_hf.data.pairs import load_checked_pairs
from mm_hf.errors import run_cli
from mm_hf.measures import RetrievalMeasure
from mm_hf.models import ContrastiveDualEncoderModel
from mm_hf.models.text_length import text_max_length
from mm_hf.outputs import RunInfo, recipe_command, save_dual_encoder, save_run
from mm_hf.retrieval import PairTransform, build_media, load_dual_encoder, resolve_modality
from mm_hf.run import build_trainer, prepare_training_arguments, start_run, train_and_evaluate
from mm_hf.training import apply_strategy


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

    # 3. Data: captions cleaned, images/clips decodable, before any training (--streaming: the training pairs
    # checked as they are read, bad ones skipped and counted; the evaluation splits read whole)
    splits, skipped = load_checked_pairs(
        data_args, training_args, media, ret_args.caption_column, model_args.cache_dir, f"--{modality}_column"
    )
    push_to_hub = training_args.push_to_hub
    # Gathering negatives needs the same batch size on every process: drop the ragged last batch. No labels:
    # the loss comes from the pairs themselves (Trainer then reports eval_loss without them).
    training_args = prepare_training_arguments(
        training_args,
        ft_args,
        has_validation="validation" in splits,
        best_metric="loss",
        streaming=data_args.streaming,
        dataloader_drop_last=True,
        label_names=[],
    )

    # 4. Model: the contrastive wrapper (the loss is the model's own) and what the strategy trains
    model = ContrastiveDualEncoderModel.from_backbone(backbone, ret_args.loss, ret_args.gather_negatives, base_model)
    model = apply_strategy(model, ft_args)

    # 5. Inputs (an image or clip + one of its captions per row); evaluate the untouched model, train, evaluate again
    # Images cross from the DataLoader workers as uint8 (4x fewer bytes) and the model normalises them on its device.
    uint8 = media.accept_uint8(model)
    transforms = {
        train: PairTransform(
            media, tokenizer, train=train, augment=train and ret_args.augment, max_length=max_length, uint8=uint8
        )
        for train in (True, False)
    }
    datasets_ = {name: split.with_transform(transforms[name == "train"]) for name, split in splits.items()}
    trainer = build_trainer(model, training_args, datasets_, processor, skipped=skipped)
    measure = RetrievalMeasure(
        trainer,
        splits,
        media,
        tokenizer,
        max_length=max_length,
        zeroshot_eval_dir=ret_args.zeroshot_eval_dir,
        prompt_templates=ret_args.prompt_templates,
        validation_loss=training_args.do_eval,
        features_cache_dir=ft_args.features_cache_dir,
    )
    run = train_and_evaluate(trainer, splits, measure, ft_args, before_label="zero-shot")

    # 6. Save the dual encoder (LoRA merged), processor, results and card (and publish when --push_to_hub)
    info = RunInfo(
        pipeline_tag=media.pipeline_tag,
        task=media.task,
        base_model=base_model,
        dataset=dataset_display_name(data_args),
        command=recipe_command(argv, script="recipes/clip_retrieval.py"),
        finetune_strategy=ft_args.finetune_strategy,
    )
    config = args_to_dict(model_args, data_args, ft_args, ret_args, training_args)
    return save_run(trainer, run, info, config=config, skipped=skipped, push_to_hub=push_to_hub, save=save_dual_encoder)


if __name__ == "__main__":
    run_cli(main)
