"""DataLoader throughput of image batches: float32 pixel values (normalised in the workers) against uint8 pixels
normalised on the batch in the main process (`build_image_transform(..., uint8=True)` + `BatchPixelNormaliser`).

    OMP_NUM_THREADS=1 python -m mm_hf.bench.loader [--images 320] [--workers 2] [--rounds 3]

Both run on the same JPEGs (`mm_hf.bench.pipeline.write_jpegs`, 256x256: a 224 px model's regime, where decoding
is cheap and moving the batch matters most) with DINOv2's processor (center crop 224), the train transform, batch
32, through a `torch.utils.data.DataLoader` with `default_data_collator` as Trainer builds it. Timed from the first
batch to the last (worker start-up excluded), each round interleaved, the ratio taken within a round; medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import BitImageProcessor, default_data_collator

from mm_hf.bench.pipeline import DINOV2_PROCESSOR, write_jpegs
from mm_hf.data.transforms import BatchPixelNormaliser, build_image_transform


def loader_speed(dataset, normalise, workers: int, batch_size: int) -> tuple[float, int]:
    """(images/s from the first batch on, bytes of one batch's pixel_values as the workers hand it over)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=default_data_collator)
    batches = iter(loader)
    first = next(batches)
    nbytes = first["pixel_values"].nelement() * first["pixel_values"].element_size()
    start, count = time.perf_counter(), 0
    for batch in batches:
        normalise(batch["pixel_values"])  # the uint8 path's extra step, on the training process
        count += len(batch["pixel_values"])
    return count / (time.perf_counter() - start), nbytes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=320, help="JPEGs (256x256) read once per round and path.")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (medians reported).")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    processor = BitImageProcessor(**DINOV2_PROCESSOR)
    normaliser = BatchPixelNormaliser(processor)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder), (256, 256), args.images)
        dataset = datasets.Dataset.from_dict({"image": paths, "labels": [0] * len(paths)})
        paths_ = {
            "float32": (dataset.with_transform(build_image_transform(processor, train=True)), lambda x: x),
            "uint8": (dataset.with_transform(build_image_transform(processor, train=True, uint8=True)), normaliser),
        }
        speeds, nbytes = {name: [] for name in paths_}, {}
        for _ in range(args.rounds):
            for name, (ds, normalise) in paths_.items():
                speed, nbytes[name] = loader_speed(ds, normalise, args.workers, args.batch_size)
                speeds[name].append(speed)
    ratio = statistics.median(u / f for f, u in zip(speeds["float32"], speeds["uint8"], strict=True))
    result = {
        "float32_img_s": statistics.median(speeds["float32"]),
        "uint8_img_s": statistics.median(speeds["uint8"]),
        "speed_ratio": ratio,
        "float32_batch_bytes": nbytes["float32"],
        "uint8_batch_bytes": nbytes["uint8"],
        "workers": args.workers,
    }
    rounds = [round(u / f, 2) for f, u in zip(speeds["float32"], speeds["uint8"], strict=True)]
    print(
        f"{args.images} images 256x256 -> 224, batch {args.batch_size}, {args.workers} workers: "
        f"float32 {result['float32_img_s']:.0f} img/s, {nbytes['float32'] / 2**20:.1f} MiB/batch; "
        f"uint8 {result['uint8_img_s']:.0f} img/s, {nbytes['uint8'] / 2**20:.1f} MiB/batch; "
        f"speed ratio {ratio:.2f}x (rounds: {rounds})"
    )
    return result


if __name__ == "__main__":
    main()
