"""Image input pipeline speed per core: `build_image_transform` against the full-decode pipeline it replaced.

    OMP_NUM_THREADS=1 python -m mm_hf.bench.pipeline [--rounds 5] [--images 12]

The baseline is the pipeline `build_image_transform` ran before draft decoding (and what the transformers
example scripts do): `load_image` decodes every pixel, then `RandomResizedCrop` + flip and the image processor's
rescale/normalise (train), or the processor as is (eval). Both run on the same JPEGs (sklearn's sample photos,
resized to 3000x2000 and 500x375, quality 90) with DINOv2's processor settings (shortest edge 256, center crop
224, bicubic). Runs are interleaved round by round and each ratio is taken within a round, since the machine is
shared and noisy; the table gives medians. It also reports how far the reduced-decode crops are from the
full-decode ones on the same seed (mean |difference| in 0..255 units).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from transformers import BitImageProcessor

from mm_hf.data.images import load_image
from mm_hf.data.transforms import RandomHorizontalFlip, RandomResizedCrop, build_image_transform, target_size

# DINOv2-small's preprocessor_config.json.
DINOV2_PROCESSOR = {
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "resample": 3,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
SIZES = ((3000, 2000), (500, 375))


class FullDecodeTransform:
    """The baseline: every pixel decoded, then crop/flip and the processor (train) or the processor (eval)."""

    def __init__(self, processor, train: bool, crop_scale=(0.5, 1.0)):
        self.processor = processor
        self.crop = RandomResizedCrop(target_size(processor), scale=crop_scale, resample=processor.resample)
        self.flip = RandomHorizontalFlip()
        self.train = train

    def __call__(self, batch: dict) -> dict:
        images = [load_image(path) for path in batch["image"]]
        if not self.train:
            pixels = self.processor(images)["pixel_values"]
        else:
            images = [self.flip(self.crop(image)) for image in images]
            pixels = self.processor(images, do_resize=False, do_center_crop=False)["pixel_values"]
        return {"pixel_values": [torch.from_numpy(np.asarray(p, dtype=np.float32)) for p in pixels]}


def write_jpegs(folder: Path, size: tuple[int, int], count: int) -> list[str]:
    photos = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    paths = []
    for index in range(count):
        photo = Image.fromarray(photos[index % len(photos)])
        if index % 4 >= 2:  # a mirrored variant, so files differ beyond the two photos
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"{size[0]}x{size[1]}_{index}.jpg"
        photo.resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def images_per_second(transform, paths: list[str], batch_size: int = 4) -> float:
    start = time.perf_counter()
    for offset in range(0, len(paths), batch_size):
        transform({"image": paths[offset : offset + batch_size]})
    return len(paths) / (time.perf_counter() - start)


def crop_difference(processor, paths: list[str], std) -> float:
    """Mean |after - before| (0..255 units) of train crops drawn with the same seed."""
    before, after = FullDecodeTransform(processor, train=True), build_image_transform(processor, train=True)
    differences = []
    for seed, path in enumerate(paths):
        random.seed(seed)
        a = before({"image": [path]})["pixel_values"][0]
        random.seed(seed)
        b = after({"image": [path]})["pixel_values"][0]
        differences.append(((a - b).abs() * torch.tensor(std)[:, None, None] * 255).mean().item())
    return float(np.mean(differences))


def eval_difference(processor, paths: list[str], std) -> float:
    """Mean |after - processor| (0..255 units) of eval pixels."""
    after = build_image_transform(processor, train=False)
    differences = []
    for path in paths:
        a = processor(load_image(path), return_tensors="pt")["pixel_values"][0]
        b = after({"image": [path]})["pixel_values"][0]
        differences.append(((a - b).abs() * torch.tensor(std)[:, None, None] * 255).mean().item())
    return float(np.mean(differences))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved timing rounds (medians reported).")
    parser.add_argument("--images", type=int, default=12, help="JPEGs per size, each decoded once per round.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    processor = BitImageProcessor(**DINOV2_PROCESSOR)
    with tempfile.TemporaryDirectory() as folder:
        files = {size: write_jpegs(Path(folder), size, args.images) for size in SIZES}
        pipelines = {
            (mode, kind): (build_image_transform if kind == "after" else FullDecodeTransform)(
                processor, train=mode == "train"
            )
            for mode in ("train", "eval")
            for kind in ("before", "after")
        }
        speeds = {}
        for _ in range(args.rounds):
            for size in SIZES:
                for (mode, kind), transform in pipelines.items():
                    speeds.setdefault((size, mode, kind), []).append(images_per_second(transform, files[size]))
        rows = []
        for size in SIZES:
            for mode in ("train", "eval"):
                before, after = speeds[(size, mode, "before")], speeds[(size, mode, "after")]
                ratio = statistics.median(b / a for a, b in zip(before, after, strict=True))
                rows.append(
                    {
                        "image": f"{size[0]}x{size[1]} JPEG",
                        "mode": mode,
                        "before_img_s": statistics.median(before),
                        "after_img_s": statistics.median(after),
                        "ratio": ratio,
                    }
                )
        std = DINOV2_PROCESSOR["image_std"]
        diffs = {size: crop_difference(processor, files[size], std) for size in SIZES}
        eval_diffs = {size: eval_difference(processor, files[size], std) for size in SIZES}
    print("| image | mode | before img/s | after img/s | ratio |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['image']} | {row['mode']} | {row['before_img_s']:.0f} | {row['after_img_s']:.0f} | "
            f"{row['ratio']:.2f}x |"
        )
    for size, diff in diffs.items():
        print(f"train crops, same seed, {size[0]}x{size[1]}: mean |after - before| = {diff:.2f} / 255")
        print(f"eval, {size[0]}x{size[1]}: mean |after - image processor| = {eval_diffs[size]:.2f} / 255")
    return rows


if __name__ == "__main__":
    main()
