"""Video classification from frames (+ the clip's sound track + a transcript): per-frame vision encoder, temporal
pooling over frames, fusion with audio and text, fine-tuned heads.

    accelerate launch recipes/video_cls.py --vision_model_name_or_path google/vit-base-patch16-224-in21k \
        --audio_model_name_or_path facebook/wav2vec2-base --audio_from_video \
        --text_model_name_or_path sentence-transformers/all-MiniLM-L6-v2 --text_column transcript \
        --train_file train.jsonl --validation_file val.jsonl --test_file test.jsonl --video_column video \
        --label_column label --num_frames 8 --temporal_pooling transformer --fusion cross_attention \
        --output_dir out --do_train --do_eval --do_predict --finetune_strategy lora

Videos are decoded with PyAV: `--num_frames` frames sampled uniformly (a random position in each segment while
training, segment centres in evaluation), each through the vision encoder and its spatial pooling
(--frame_pooling), then pooled over time (--temporal_pooling: mean, max, attention, or a small temporal
transformer that sees frame order). The audio modality is an --audio_column of files, or with
--audio_from_video the clip's own sound track (a clip without one counts as missing audio). Heads, tasks,
missing modalities, ablations (`test_without_video_accuracy`, ...), outputs, card and --streaming (--max_steps N;
label spaces from --class_names or the validation split; clips decoded as they are read, bad ones skipped and
counted) as in recipes/fusion_imagetext_cls.py.
"""

import sys
from dataclasses import dataclass, field

from transformers import TrainingArguments

from mm_hf.args import (
    DataArguments,
    FinetuneArguments,
    FusionDataArguments,
    FusionModelArguments,
    RobustnessArguments,
    args_to_dict,
)
from mm_hf.data.loading import dataset_display_name
from mm_hf.data.multimodal import MODALITIES
from mm_hf.errors import UserError, run_cli
from mm_hf.evaluate.shifts import load_fusion_shifts, with_shifts
from mm_hf.fusion_run import fusion_model, fusion_processor, fusion_trainer, load_fusion_rows
from mm_hf.measures import FUSION_BEFORE_LABEL
from mm_hf.outputs import add_video_auto_class, fusion_run_info, recipe_command, save_run
from mm_hf.processing import ProcessorSettings
from mm_hf.run import start_run, train_and_evaluate


@dataclass
class VideoArguments:
    num_frames: int = field(default=8, metadata={"help": "Frames sampled uniformly from each clip."})
    frame_pooling: str = field(
        default="mean", metadata={"help": "Spatial pooling of each frame's patches: cls, mean, attention, pooler."}
    )
    temporal_pooling: str = field(
        default="transformer",
        metadata={
            "help": "Pooling over frames: mean, max, attention, or transformer (sees frame order).",
            "choices": ["mean", "max", "attention", "transformer"],
        },
    )
    audio_from_video: bool = field(
        default=False, metadata={"help": "Use each clip's own sound track as the audio modality."}
    )


ARGUMENT_TYPES = (
    FusionModelArguments,
    FusionDataArguments,
    VideoArguments,
    DataArguments,
    FinetuneArguments,
    RobustnessArguments,
    TrainingArguments,
)


def main(argv=None):
    # 1. Arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    parsed = start_run(ARGUMENT_TYPES, argv)
    model_args, fusion_args, video_args, data_args, ft_args, robust_args, training_args = parsed
    if not fusion_args.video_column:
        raise UserError("--video_column is required (the column of video file paths)")
    if fusion_args.image_column:  # shared with the image fusion recipe, which refuses --video_column likewise
        raise UserError("--image_column: still images are for recipes/fusion_imagetext_cls.py (here: --video_column)")
    if video_args.audio_from_video and (fusion_args.audio_column or not model_args.audio_model_name_or_path):
        raise UserError("--audio_from_video needs --audio_model_name_or_path and no --audio_column")

    # 2. Data: video paths, optional audio files and transcripts (any may be missing), labels per task
    columns, splits, spaces = load_fusion_rows(
        fusion_args, data_args, training_args, model_args.cache_dir, visual="video"
    )
    used = set(columns.modalities) | ({"audio"} if video_args.audio_from_video else set())
    modalities = [m for m in MODALITIES if m in used]

    # 3. Processor (frames through the image processor), every clip decoded once before training (a stream: as it is
    # read), tabular statistics from the training split (a stream: its first rows)
    encoders = model_args.encoders(modalities)
    settings = ProcessorSettings(
        modalities,
        fusion_args.max_seq_length,
        fusion_args.max_length_seconds,
        num_frames=video_args.num_frames,
        audio_from_video=video_args.audio_from_video,
    )
    processor, tabular, splits, skipped = fusion_processor(
        splits, encoders, settings, columns, data_args, model_args, checked_modalities=columns.modalities
    )  # with --audio_from_video the sound tracks are checked with the videos

    # 4. Model: vision encoder per frame -> spatial + temporal pooling; audio/text encoders; fusion; heads
    tasks = fusion_args.tasks(spaces)
    # --ood_file sets and --robustness corruptions of the media/text columns, measured before and after training
    sampling_rate = getattr(processor.feature_extractor, "sampling_rate", None)
    shifts = load_fusion_shifts(
        robust_args, data_args, training_args, model_args.cache_dir, columns, tasks, sampling_rate
    )
    model = fusion_model(
        encoders,
        tasks,
        processor,
        tabular,
        columns,
        model_args,
        fusion_args,
        ft_args,
        num_frames=video_args.num_frames,
        frame_pooling=video_args.frame_pooling,
        temporal_pooling=video_args.temporal_pooling,
    )

    # 5. Trainer over clips decoded on the fly (a frozen encoder's outputs cached once): untrained heads evaluated,
    # trained, evaluated again, also with each of video / audio / text / tabular removed
    trainer, datasets_, measure = fusion_trainer(
        model, processor, splits, tasks, modalities, training_args, ft_args, fusion_args, skipped
    )
    measure = with_shifts(measure, shifts, trainer, splits, processor.transform(train=False), tasks[0].labels)
    run = train_and_evaluate(trainer, datasets_, measure, ft_args, before_label=FUSION_BEFORE_LABEL)

    # 6. Save the model (LoRA merged; it also loads as AutoModelForVideoClassification), processor, reports and card
    add_video_auto_class(model)
    info = fusion_run_info(
        modalities,
        encoders,
        dataset=dataset_display_name(data_args),
        command=recipe_command(argv, script="recipes/video_cls.py"),
        finetune_strategy=ft_args.finetune_strategy,
        eval_task_type="video-classification",
    )
    config = args_to_dict(model_args, fusion_args, video_args, data_args, ft_args, robust_args, training_args)
    return save_run(
        trainer, run, info, config=config, skipped=skipped, push_to_hub=training_args.push_to_hub, merge_lora=True
    )


if __name__ == "__main__":
    run_cli(main)
