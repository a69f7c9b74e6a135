"""The cases of `make bench` (mm_hf.bench.speed): per recipe and model size, the models and data built offline
(tiny models as the tests build them, random-init CLIP ViT-B/32 and Whisper-base from configs, synthetic files)
and the rows (strategies and baselines) run on them."""

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers import (
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from mm_hf.data.synthetic import write_imagetext_xor, write_video_dataset
from mm_hf.demo import build_demo_audio_encoder, write_digits_imagefolder, write_tones_audiofolder
from mm_hf.models.tiny import build_tiny_dual_encoder, build_tiny_encoders

from .memory import NUM_CLASSES, build_clip_b32, write_images

# (row, recipe flags) of the classifier recipes. The uncached probe trains its head by Trainer steps (the L-BFGS
# solver needs cached features); the cached one fits by L-BFGS, so its train figure covers the feature pass + fit.
STRATEGY_ROWS = (
    ("linear_probe (cache)", ["--finetune_strategy", "linear_probe"]),
    (
        "linear_probe (no cache)",
        ["--finetune_strategy", "linear_probe", "--precompute_features", "false", "--probe_solver", "trainer"],
    ),  # fmt: skip
    ("full", ["--finetune_strategy", "full"]),
    ("lora", ["--finetune_strategy", "lora"]),
    ("top_k", ["--finetune_strategy", "top_k"]),
)


# The benchmark's cases: models and data built offline --------------------------------------------------------


@dataclass
class Case:
    """One recipe on one model: the flags every row shares, its rows (name, extra flags) and, for the classifier
    recipes, the baselines' spec (same model, data, batch size and steps)."""

    recipe: str
    model: str  # "tiny" or "real"
    label: str  # the model and data, for the table
    unit: str  # what one sample is (image, clip, ...)
    argv: list[str]
    rows: tuple
    baseline: dict | None = None
    frames: int | None = None  # frames decoded per sample (video): the pipeline is also given in frames/s
    name: str = field(init=False)

    def __post_init__(self):
        self.name = f"{self.recipe} / {self.model}"


# (batch size, steps) per model size: enough measured steps after the first on the tiny models, two on the real
# ones: a CLIP ViT-B/32 step of 8 images at 224 px took 18.5 s on one thread of the loaded 2-core machine.
SCHEDULE = {"tiny": (16, 8), "real": (8, 3)}
# top_k is left out on the real models: its step costs between the uncached probe's and full's (tiny rows), and a
# real row costs a minute or more here.
REAL_SKIP = ("top_k",)


def common_argv(batch_size: int, steps: int, predict: bool = True) -> list[str]:
    # Evaluation and saving only before and after training, so that no step's waiting time holds an evaluation.
    argv = ["--overwrite_output_dir", "true", "--do_train", "--do_eval", *(["--do_predict"] if predict else [])]
    argv += ["--max_steps", str(steps), "--per_device_train_batch_size", str(batch_size)]
    argv += ["--per_device_eval_batch_size", str(2 * batch_size), "--dataloader_num_workers", "0"]
    return argv + ["--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


def split_dirs(root: str) -> list[str]:
    return [a for s in ("train", "validation", "test") for a in (f"--{s}_dir", os.path.join(root, s))]


def build_cases(workdir: str, models: list[str]) -> list[Case]:
    """Write each case's model and data under `workdir` (reused when there) and return the cases."""

    def once(name, build, *args, **kwargs):
        path = os.path.join(workdir, name)
        if not os.path.exists(path):
            build(path, *args, **kwargs)
        return path

    cases = []
    for size in models:
        batch, steps = SCHEDULE[size]
        # Training splits of whole batches, one more than the steps (StepTimer); small held-out splits.
        per_split = {"train": batch * (steps + 1), "validation": 2 * NUM_CLASSES, "test": 2 * batch}
        if size == "tiny":
            image_model = once("tiny-dual-encoder", build_tiny_dual_encoder)
            images = once("tiles", write_images, per_split, size=64)
            audio_model = once("tiny-wav2vec2", build_demo_audio_encoder)
            clips = once("tones-1s", write_tones_audiofolder, per_class(per_split), duration=(1.0, 1.0))
            seconds, image_label = 1.0, "tiny ViT 32 px + BERT (random), 64x64 PNG"
            audio_label = "tiny wav2vec2 (random), 1 s WAV"
        else:
            image_model = once("clip-vit-b32-random", build_clip_b32)
            images = once("jpegs-500x375", write_jpeg_classes, per_split)
            audio_model = once("whisper-base-random", build_whisper_base)
            clips = once("tones-5s", write_tones_audiofolder, per_class(per_split), duration=(5.0, 5.0))
            seconds, image_label = 5.0, "CLIP ViT-B/32 (random init, CLIPConfig()), 500x375 JPEG -> 224 px"
            audio_label = "Whisper-base (random init, 5 s window), 5 s WAV"
        run = common_argv(batch, steps)
        spec = dict(batch_size=batch, eval_batch_size=2 * batch, steps=steps, learning_rate=3e-5)
        strategies = tuple(r for r in STRATEGY_ROWS if size == "tiny" or r[0] not in REAL_SKIP)
        cases.append(Case("clip_imagecls", size, image_label, "image",
                          ["--model_name_or_path", image_model, *split_dirs(images), *run], strategies,
                          dict(spec, modality="image", model=image_model, data=images)))  # fmt: skip
        audio_argv = ["--model_name_or_path", audio_model, *split_dirs(clips), "--max_length_seconds", str(seconds)]
        cases.append(Case("audio_cls", size, audio_label, "clip", [*audio_argv, *run], strategies,
                          dict(spec, modality="audio", model=audio_model, data=clips, max_length_seconds=seconds)))  # fmt: skip
        if size != "tiny":
            continue
        # The other recipes on tiny models only, each with its default strategy: their real-size towers are the
        # same image/text/audio encoders timed above, and their own cost is in fusion layers and decoding.
        encoders = os.path.join(workdir, "tiny-encoders")
        if not os.path.isdir(encoders):
            build_tiny_encoders(encoders)
        towers = ["--vision_model_name_or_path", os.path.join(encoders, "tiny-vit")]
        towers += ["--text_model_name_or_path", os.path.join(encoders, "tiny-bert")]
        xor = once("xor", write_imagetext_xor, sizes=(batch * (steps + 1), 16, 32))
        files = [a for s in ("train", "validation", "test") for a in (f"--{s}_file", os.path.join(xor, f"{s}.jsonl"))]
        columns = ["--image_column", "image", "--text_column", "text", "--label_column", "label"]
        cases.append(Case("fusion_imagetext_cls", size, "tiny ViT + BERT, 32 px PNG + text", "row",
                          [*towers, *files, *columns, *run], (("default (full)", []),)))  # fmt: skip
        digits = once("digits", write_digits_imagefolder, max_per_class=27)  # 16 a class to train: > 8 batches of 16
        cases.append(Case("clip_retrieval", size, "tiny ViT 32 px + BERT, 8x8 PNG + captions", "pair",
                          ["--model_name_or_path", image_model, *split_dirs(digits), *common_argv(batch, steps, False)],
                          (("default (lock_text)", []),)))  # fmt: skip
        video_batch, video_steps = 4, 4
        videos = once("videos", write_video_dataset, sizes=(video_batch * (video_steps + 1), 8, 8))
        files = [
            a for s in ("train", "validation", "test") for a in (f"--{s}_file", os.path.join(videos, f"{s}.jsonl"))
        ]
        cases.append(Case("video_cls", size, "tiny ViT, 8 frames of 32 px mp4 + transcript", "video",
                          [*towers, *files, "--video_column", "video", "--text_column", "transcript",
                           "--label_column", "label", *common_argv(video_batch, video_steps)],
                          (("default (full)", []),), frames=8))  # fmt: skip
    return cases


def per_class(per_split: dict) -> tuple[int, int, int]:
    return tuple(per_split[s] // NUM_CLASSES for s in ("train", "validation", "test"))


def write_jpeg_classes(output_dir: str, per_split: dict, size=(500, 375), seed: int = 0) -> str:
    """Class folders of 500x375 JPEGs (quality 90; scikit-learn's sample photos, cropped at random and tinted per
    class): the decode cost of ordinary photos, which noise or flat tiles would misstate."""
    # Here, not at the top: every measured row imports this module, and scikit-learn would add to its peak RSS.
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    photos = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    for split, n in per_split.items():
        for i in range(n):
            label = i % NUM_CLASSES
            photo = photos[i % 2]
            top, left = rng.integers(0, 100), rng.integers(0, 200)
            crop = photo[top : top + 327, left : left + 436].astype(np.int16)
            crop[..., label % 3] = np.clip(crop[..., label % 3] + 40 * (1 + label // 3), 0, 255)
            folder = os.path.join(output_dir, split, f"class{label}")
            os.makedirs(folder, exist_ok=True)
            image = Image.fromarray(crop.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
            image.save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)
    return output_dir


def build_whisper_base(output_dir: str, seed: int = 0) -> str:
    """A random-init Whisper-base (openai/whisper-base's dimensions: d_model 512, 6 + 6 layers, 8 heads, FFN 2048)
    with the default 80-bin feature extractor, saved to `output_dir`."""
    torch.manual_seed(seed)
    dims = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8)
    WhisperModel(WhisperConfig(**dims, encoder_ffn_dim=2048, decoder_ffn_dim=2048)).save_pretrained(output_dir)
    WhisperFeatureExtractor().save_pretrained(output_dir)
    return output_dir
