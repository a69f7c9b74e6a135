"""Fine-tune a pretrained audio encoder (wav2vec2, HuBERT, WavLM, Whisper encoder, AST, CLAP) for audio classification.

    accelerate launch recipes/audio_cls.py --model_name_or_path facebook/wav2vec2-base \
        --train_dir clips/ --output_dir out --do_train --do_eval --do_predict \
        --finetune_strategy lora --num_train_epochs 5 --per_device_train_batch_size 16 --learning_rate 3e-5

`--finetune_strategy` is one of lora (default), full, linear_probe, top_k. Local data: --train_dir/
--validation_dir/--test_dir (one sub-folder per class, e.g. clips/train/<class>/<file>.wav) or
--train_file/--validation_file/--test_file (CSV/JSONL with an audio path column and a label column, named by
--audio_column and --label_column; paths relative to the file); or --dataset_name for a Hub dataset with an Audio column. Any sample rate,
channel count and bit depth that libsndfile reads is resampled to the feature extractor's rate (mono).
Defaults from a YAML file with --config recipes/configs/audio_cls_demo.yaml (the CLI wins).

For an audio encoder the classification head is new (randomly initialised), so the test split is evaluated
before training ("untrained head", the chance baseline) and after, side by side. A CLAP audio–text model
(e.g. laion/clap-htsat-unfused) instead starts from its zero-shot classifier: the head holds the text
embeddings of class-name prompts (--prompt_templates), and the table compares zero-shot with fine-tuned.
Robust fine-tuning (README "Robust fine-tuning"): --finetune_strategy lp_ft, --wise_ft_alphas (any model) and
--loss flyp (CLAP only).
"""

import sys
from dataclasses import dataclass, field

from transformers import AutoConfig, AutoFeatureExtractor, AutoProcessor, TrainingArguments

from mm_hf.args import (
    AudioColumnArguments,
    AudioModelArguments,
    ClassifierLossArguments,
    DataArguments,
    FinetuneArguments,
    LabelColumnArguments,
    RobustnessArguments,
    fill_strategy_defaults,
)
from mm_hf.classifier_run import plan_probe, save_classifier_run, train_classifier
from mm_hf.data.audio import AudioTransform, check_audio
from mm_hf.errors import UserError, run_cli
from mm_hf.evaluate.shifts import load_run_shifts
from mm_hf.features import classifier_datasets
from mm_hf.flyp import build_dual_encoder_or_flyp, check_flyp
from mm_hf.models import build_audio_classifier
from mm_hf.models.clip_classifier import DEFAULT_AUDIO_PROMPT_TEMPLATES, is_audio_text_config
from mm_hf.run import load_checked_splits, prepare_training_arguments, start_run
from mm_hf.training import apply_strategy


@dataclass
class AudioArguments(LabelColumnArguments, AudioColumnArguments, ClassifierLossArguments):  # columns, --loss
    max_length_seconds: float = field(
        default=5.0,
        metadata={
            "help": "Clips are cut to this length: a random window in training, the first one in evaluation. "
            "Whisper then runs on this length (rounded up to whole seconds) instead of its 30 s window."
        },
    )
    freeze_feature_encoder: bool = field(
        default=True, metadata={"help": "Keep the convolutional waveform feature encoder frozen (wav2vec2-style)."}
    )
    pooling: str = field(
        default="mean",
        metadata={
            "help": "How frames become one vector: mean or attention (audio encoders; CLAP pools itself).",
            "choices": ["mean", "attention"],
        },
    )
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout on the pooled embedding before the head."})
    head_init: str = field(
        default="auto",
        metadata={
            "help": "zeroshot: head from class-prompt text embeddings (CLAP models only); random; auto: zeroshot "
            "for CLAP, random otherwise.",
            "choices": ["auto", "zeroshot", "random"],
        },
    )
    prompt_templates: list[str] | None = field(
        default=None,
        metadata={"help": "CLAP prompt templates with {} for the class name (default: 'This is a sound of {}.' + 2)."},
    )
    augment: bool = field(
        default=True, metadata={"help": "Random gain, background noise and time shift on training clips."}
    )


ARGUMENT_TYPES = (
    AudioModelArguments,
    DataArguments,
    FinetuneArguments,
    AudioArguments,
    RobustnessArguments,
    TrainingArguments,
)


def main(argv=None):
    # 1. Arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    parsed = fill_strategy_defaults(start_run(ARGUMENT_TYPES, argv))  # lr, epochs, schedule per strategy
    model_args, data_args, ft_args, audio_args, robust_args, training_args = parsed

    # 2. Feature extractor: its sampling rate is the one every clip is validated and resampled at
    hub_kwargs = model_args.hub_kwargs()
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
    audio_text = is_audio_text_config(AutoConfig.from_pretrained(model_args.model_name_or_path, **hub_kwargs))
    if audio_args.head_init == "zeroshot" and not audio_text:
        raise UserError(
            f"--head_init zeroshot needs an audio-text model (CLAP); {model_args.model_name_or_path} has no text tower"
        )
    zeroshot = audio_text and audio_args.head_init != "random"
    flyp = audio_args.loss == "flyp"
    if flyp and not audio_text:
        raise UserError(
            f"--loss flyp needs an audio-text model (CLAP); {model_args.model_name_or_path} has no text tower"
        )
    if flyp:
        check_flyp(ft_args, audio_args.head_init, training_args.explicit_flags)
    # A linear probe caches the frozen tower's output once: CLAP's audio embeddings, or an audio encoder's
    # mean-pooled frames (attention pooling learns its frame scores, so its backbone runs every batch:
    # see mm_hf.features.can_cache_pooled).
    uncacheable = None if audio_text or audio_args.pooling == "mean" else "--pooling attention (learned frame scores)"
    cache, lbfgs = plan_probe(ft_args, training_args, streaming=data_args.streaming, uncacheable=uncacheable)
    before_label = "zero-shot" if zeroshot else "untrained head"

    # 3. Data: every split validated (columns, labels, decodable audio) before any training
    column = audio_args.audio_column
    splits, skipped = load_checked_splits(
        data_args, training_args, model_args.cache_dir, column, audio_args.label_column, check_audio,
        input_flag="--audio_column", sampling_rate=feature_extractor.sampling_rate,
    )  # fmt: skip
    id2label = dict(enumerate(splits["train"].features["labels"].names))
    # --ood_dir / --ood_file sets and the --robustness sweep, measured before and after fine-tuning (mm_hf.evaluate)
    shifts, skipped_shifted = load_run_shifts(
        robust_args, data_args, training_args, model_args.cache_dir, id2label.values(), column,
        audio_args.label_column, modality="audio", input_flag="--audio_column",
        sampling_rate=feature_extractor.sampling_rate,
    )  # fmt: skip
    skipped.update(skipped_shifted)
    push_to_hub = training_args.push_to_hub  # published by mm_hf.publish at the end, not by Trainer
    training_args = prepare_training_arguments(
        training_args, ft_args, has_validation="validation" in splits, streaming=data_args.streaming
    )

    # 4. Model, then what the strategy leaves trainable: CLAP's audio tower + cosine head (zero-shot or random),
    # or any audio encoder + pooling over time + a new head
    processing_class = feature_extractor
    if audio_text:
        processing_class = AutoProcessor.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
        # --loss flyp: both towers train contrastively, the head is the text tower's (mm_hf.flyp)
        model = build_dual_encoder_or_flyp(
            model_args.model_name_or_path, id2label, processing_class.tokenizer,
            audio_args.prompt_templates or DEFAULT_AUDIO_PROMPT_TEMPLATES, flyp=flyp,
            head_init="zeroshot" if zeroshot else "random", hub_kwargs=hub_kwargs, head_dropout=audio_args.head_dropout,
        )  # fmt: skip
    else:
        model = build_audio_classifier(
            model_args.model_name_or_path,
            id2label,
            pooling=audio_args.pooling,
            head_dropout=audio_args.head_dropout,
            # Whisper runs on the clips' own length, not its 30 s window; the extractor pads to match
            feature_extractor=feature_extractor,
            max_length_seconds=audio_args.max_length_seconds,
            **hub_kwargs,
        )
    model = apply_strategy(model, ft_args, freeze_feature_encoder=audio_args.freeze_feature_encoder)

    # 5. Inputs: cached embeddings (CLAP) or pooled frames for a linear probe, clips decoded on the fly otherwise
    clips = dict(audio_column=column, max_length_seconds=audio_args.max_length_seconds, augment=audio_args.augment)
    transforms = [AudioTransform(feature_extractor, train=train, **clips) for train in (True, False)]  # train, eval
    datasets_ = classifier_datasets(model, splits, *transforms, training_args, cache, ft_args.features_cache_dir)

    # 6. Evaluate the untouched model, train (or fit a linear probe's head to convergence on the cached features by
    # L-BFGS instead of by epochs), evaluate again, on every --ood_dir / --robustness set too
    trainer, run = train_classifier(
        model, processing_class, datasets_, splits, transforms[1], id2label, shifts, training_args, ft_args,
        before_label=before_label, lbfgs=lbfgs, skipped=skipped,
    )  # fmt: skip

    # 7. Save the model (FLYP: the plain classifier, its head recomputed), outputs and model card (and publish)
    return save_classifier_run(
        trainer, run, (model_args, data_args, ft_args, audio_args, robust_args, training_args), argv,
        pipeline_tag="audio-classification", script="recipes/audio_cls.py", skipped=skipped, push_to_hub=push_to_hub,
    )  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
