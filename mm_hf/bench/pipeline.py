"""Input pipeline speed per core: images (`build_image_transform` against the full-decode pipeline it replaced),
video (seeking against one decoding pass) and audio (decode + resample).

    OMP_NUM_THREADS=1 python -m mm_hf.bench.pipeline [--rounds 5] [--images 12] [--batch_size 8]
    OMP_NUM_THREADS=1 python -m mm_hf.bench.pipeline --video [--rounds 3]
    OMP_NUM_THREADS=1 python -m mm_hf.bench.pipeline --audio [--rounds 5]

The baseline is the pipeline `build_image_transform` ran before draft decoding (and what the transformers
example scripts do): `load_image` decodes every pixel, then `RandomResizedCrop` + flip and the image processor's
rescale/normalise (train), or the processor as is (eval). Both run on the same JPEGs (sklearn's sample photos,
resized to 3000x2000 and 500x375, quality 90) with DINOv2's processor settings (shortest edge 256, center crop
224, bicubic). Two "after" pipelines: `float`, `build_image_transform` as `mm_hf.predict`/`evaluate` run it
(float32 pixels per image, bit-identical to the processor's at full resolution), and `uint8`, what the recipes'
Trainer batches are: `uint8=True` per image and the batch stacked, a DataLoader worker's share, alone and then
with the batch normalised by `BatchPixelNormaliser`, which the model does in the training process (on the
accelerator when there is one; timed here on the CPU, as a CPU-only run pays it). Runs are interleaved round by
round, each pipeline taking every place in the order in turn, and each ratio is taken within a round, since the
machine is shared and noisy; the table gives medians, and eval / train is also a per-round ratio. It also reports
how far the reduced-decode crops are from the full-decode ones on the same seed (mean |difference| in 0..255
units) and how far each eval path is from the image processor.

`--video` times `load_video_frames` (which seeks when that decodes fewer frames) against the same call decoding
every frame (the path before seeking), on a 5-minute 25 fps clip (160x120 h264, a keyframe every 2 s) and on the
demo's clips (`write_video_dataset`: 1 s, 8 frames), in evaluation and training (seeded) for 8 and 32 frames,
interleaved round by round; then, on the long clip, seeking forced on against off as the number of sampled frames
grows (where seeking stops paying) and what one seek costs in decoded frames (`SEEK_COST_FRAMES`).
`--audio` times `load_audio` (soundfile decode, mix-down to mono, soxr HQ resample) on 5 s 44.1 kHz stereo WAV
(16-bit PCM) and FLAC clips to 16 kHz mono, and the decode alone.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from transformers import BitImageProcessor

from mm_hf.data.audio import decode_source, load_audio
from mm_hf.data.images import load_image
from mm_hf.data.synthetic import write_video_dataset
from mm_hf.data.transforms import (
    BatchPixelNormaliser,
    RandomHorizontalFlip,
    RandomResizedCrop,
    build_image_transform,
    target_size,
)
from mm_hf.data.video import (
    SEEK_COST_FRAMES,
    decode_seeking,
    default_video_codec,
    sample_frames,
    scan_video,
    seek_plan,
    shown_frames,
)

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


class Uint8Batches:
    """What the recipes' Trainer runs on: `build_image_transform(..., uint8=True)` per image and the batch stacked
    (the collator), both in a DataLoader worker; with `normalise`, also `BatchPixelNormaliser` on the batch, which
    the model runs in the training process: on the accelerator when there is one, else on the CPU (timed here)."""

    def __init__(self, processor, train: bool, normalise: bool = False):
        self.transform = build_image_transform(processor, train=train, uint8=True)
        self.normalise = BatchPixelNormaliser(processor) if normalise else (lambda pixels: pixels)

    def __call__(self, batch: dict) -> dict:
        return {"pixel_values": self.normalise(torch.stack(self.transform(batch)["pixel_values"]))}


def images_per_second(transform, paths: list[str], batch_size: int = 8) -> float:
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


def eval_difference(processor, paths: list[str], std, transform) -> tuple[float, float]:
    """(mean |after - processor| in 0..255 units, share of values that differ) of eval pixels."""
    differences, shares = [], []
    for path in paths:
        a = processor(load_image(path), return_tensors="pt")["pixel_values"][0]
        b = transform({"image": [path]})["pixel_values"][0]
        units = (a - b).abs() * torch.tensor(std)[:, None, None] * 255
        differences.append(units.mean().item())
        shares.append((units > 0.5).float().mean().item())
    return float(np.mean(differences)), float(np.mean(shares))


KINDS = ("before", "float", "uint8", "uint8_normalised")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved timing rounds (medians reported).")
    parser.add_argument("--images", type=int, default=12, help="JPEGs per size, each decoded once per round.")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="Images per batch (the stack and the normalisation run per batch): default 8, TrainingArguments' "
        "per_device_train_batch_size, which the recipes keep.",
    )
    parser.add_argument("--video", action="store_true", help="Time video frame sampling instead of images.")
    parser.add_argument("--audio", action="store_true", help="Time audio decode + resample instead of images.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.video:
        return video_speed(args.rounds)
    if args.audio:
        return audio_speed(args.rounds)
    processor = BitImageProcessor(**DINOV2_PROCESSOR)
    build = {
        "before": FullDecodeTransform,
        "float": build_image_transform,
        "uint8": Uint8Batches,
        "uint8_normalised": functools.partial(Uint8Batches, normalise=True),
    }
    with tempfile.TemporaryDirectory() as folder:
        files = {size: write_jpegs(Path(folder), size, args.images) for size in SIZES}
        pipelines = {
            (mode, kind): build[kind](processor, train=mode == "train") for mode in ("train", "eval") for kind in KINDS
        }
        speeds = {}
        for round_ in range(args.rounds):
            for size in SIZES:
                for mode in ("train", "eval"):
                    # Each kind takes every place in the order in turn: none always runs first or last.
                    for kind in KINDS[round_ % len(KINDS) :] + KINDS[: round_ % len(KINDS)]:
                        speed = images_per_second(pipelines[(mode, kind)], files[size], args.batch_size)
                        speeds.setdefault((size, mode, kind), []).append(speed)
        rows = []
        for size in SIZES:
            for mode in ("train", "eval"):
                row = {"image": f"{size[0]}x{size[1]} JPEG", "mode": mode}
                before = speeds[(size, mode, "before")]
                for kind in KINDS:
                    row[f"{kind}_img_s"] = statistics.median(speeds[(size, mode, kind)])
                    ratios = (b / a for a, b in zip(before, speeds[(size, mode, kind)], strict=True))
                    row[f"{kind}_ratio"] = statistics.median(ratios)
                rows.append(row)
            for kind in KINDS[1:]:  # eval against train, round by round
                ratios = (
                    e / t for t, e in zip(speeds[(size, "train", kind)], speeds[(size, "eval", kind)], strict=True)
                )
                rows.append(
                    {"image": f"{size[0]}x{size[1]} JPEG", "eval_over_train": kind, "ratio": statistics.median(ratios)}
                )
        std = DINOV2_PROCESSOR["image_std"]
        diffs = {size: crop_difference(processor, files[size], std) for size in SIZES}
        eval_diffs = {
            (size, kind): eval_difference(processor, files[size], std, transform)
            for size in SIZES
            for kind, transform in (
                ("float", pipelines[("eval", "float")]),
                ("uint8", pipelines[("eval", "uint8_normalised")]),
            )
        }
    print(
        "| image | mode | before img/s | float img/s | ratio | uint8 img/s (worker) | ratio | "
        "uint8 + normalise on the CPU img/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in (r for r in rows if "mode" in r):
        cells = [f"{row['before_img_s']:.0f}"]
        cells += [f"{row[f'{kind}_img_s']:.0f} | {row[f'{kind}_ratio']:.2f}x" for kind in KINDS[1:]]
        print(f"| {row['image']} | {row['mode']} | {' | '.join(cells)} |")
    for row in (r for r in rows if "eval_over_train" in r):
        print(f"{row['image']}, {row['eval_over_train']}: eval / train images/s = {row['ratio']:.2f}")
    for size, diff in diffs.items():
        print(f"train crops, same seed, {size[0]}x{size[1]}: mean |after - before| = {diff:.2f} / 255")
        for kind in ("float", "uint8"):
            mean, share = eval_diffs[(size, kind)]
            print(
                f"eval {kind}, {size[0]}x{size[1]}: mean |after - image processor| = {mean:.3f} / 255, "
                f"{share:.4%} of values differ"
            )
    return rows


# --- video ---------------------------------------------------------------------------------------------------


def write_long_clip(path: Path, seconds: int = 300, fps: int = 25, size=(160, 120), keyframe_every: int = 50) -> str:
    """A clip of a square moving over a drifting gradient, streamed to h264 frame by frame (never all in memory)."""
    import av

    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).integers(0, 24, size=(height, width), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(default_video_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = keyframe_every
        for index in range(seconds * fps):
            pixels = np.empty((height, width, 3), np.uint8)
            pixels[..., 0] = (xs + index) % 256
            pixels[..., 1] = (ys * 2 + index // 3) % 256
            pixels[..., 2] = noise
            x, y = (index * 3) % (width - 24), (index * 2) % (height - 24)
            pixels[y : y + 24, x : x + 24] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def _clips_per_second(paths: list[str], num_frames: int, train: bool, seek: bool | None) -> float:

    rng = random.Random(0)
    start = time.perf_counter()
    for path in paths:
        sample_frames(path, num_frames, train=train, rng=rng, seek=seek)
    return len(paths) / (time.perf_counter() - start)


def video_speed(rounds: int) -> list[dict]:
    import av

    with tempfile.TemporaryDirectory() as folder:
        long_clip = write_long_clip(Path(folder) / "long.mp4")
        write_video_dataset(str(Path(folder) / "demo"), sizes=(16, 0, 0))
        demo = sorted(str(p) for p in (Path(folder) / "demo" / "videos").glob("*.mp4"))
        with av.open(long_clip) as container:
            scan = scan_video(container, container.streams.video[0], long_clip)
        cases = [
            (clip, files, mode, n)
            for clip, files in (("5 min, 25 fps, keyframe / 2 s", [long_clip]), ("demo, 1 s, 8 frames", demo))
            for mode in ("eval", "train")
            for n in (8, 32)
        ]
        speeds = {}
        for round_ in range(rounds):
            for clip, files, mode, n in cases:
                order = (("before", False), ("after", None))
                for kind, seek in order if round_ % 2 == 0 else order[::-1]:  # no side always runs second
                    speed = _clips_per_second(files, n, mode == "train", seek)
                    speeds.setdefault((clip, mode, n, kind), []).append(speed)
        rows = []
        for clip, _, mode, n in cases:
            before, after = speeds[(clip, mode, n, "before")], speeds[(clip, mode, n, "after")]
            rows.append(
                {
                    "clip": clip,
                    "mode": mode,
                    "frames": n,
                    "before_clips_s": statistics.median(before),
                    "after_clips_s": statistics.median(after),
                    "ratio": statistics.median(b / a for a, b in zip(before, after, strict=True)),
                }
            )
        # Where seeking stops paying: forced on against forced off as the sampled frames grow (evaluation).
        crossover = []
        for n in (8, 32, 64, 128, 256):
            targets = [scan.start + (k + 0.5) * scan.span / n for k in range(n)]
            planned = sum(cost for _, cost in seek_plan(scan, sorted(set(shown_frames(scan, targets)))))
            on = statistics.median(_clips_per_second([long_clip], n, False, True) for _ in range(max(rounds, 1)))
            off = statistics.median(_clips_per_second([long_clip], n, False, False) for _ in range(max(rounds, 1)))
            crossover.append({"frames": n, "planned_fraction": planned / len(scan.times), "seek_speedup": on / off})
        # One seek's cost in decoded frames: loading frames that are keyframes themselves decodes one frame per seek.
        frames_per_second = len(scan.times) * statistics.median(
            _clips_per_second([long_clip], 1, False, False) for _ in range(rounds)
        )
        n = len(scan.keyframes) // 4
        step = len(scan.keyframes) // n
        keys = [scan.times[scan.keyframes[i * step]] for i in range(n)]
        start = time.perf_counter()
        for _ in range(rounds):
            _sampled_at(long_clip, scan, keys)
        per_seek = (time.perf_counter() - start) / (rounds * n)
        seek_cost = per_seek * frames_per_second - 1
    print("| clip | mode | frames | before clips/s | after clips/s | ratio |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['clip']} | {row['mode']} | {row['frames']} | {row['before_clips_s']:.2f} | "
            f"{row['after_clips_s']:.2f} | {row['ratio']:.2f}x |"
        )
    print(
        f"long clip: {len(scan.times)} frames, {len(scan.keyframes)} keyframes; one pass {frames_per_second:.0f} frames/s"
    )
    for row in crossover:
        print(
            f"forced seeking, {row['frames']} frames: plans {row['planned_fraction']:.0%} of the frames "
            f"(seek cost {SEEK_COST_FRAMES}), {row['seek_speedup']:.2f}x the one pass"
        )
    print(f"one seek costs {per_seek * 1e3:.2f} ms = {seek_cost:.1f} decoded frames")
    return rows + crossover + [{"seek_cost_frames": seek_cost, "one_pass_frames_s": frames_per_second}]


def _sampled_at(path: str, scan, times: list[float]) -> None:
    """Decode the frames at `times` (keyframes) by seeking, the scan already done."""
    import av

    with av.open(path) as container:
        decode_seeking(container, container.streams.video[0], scan, times, path)


# --- audio ---------------------------------------------------------------------------------------------------


def write_audio_clips(folder: Path, count: int, seconds: float = 5.0, rate: int = 44100) -> dict[str, list[str]]:
    """`count` stereo clips (tones + noise, so FLAC has something to compress) per format."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    files = {"WAV": [], "FLAC": []}
    for index in range(count):
        left = 0.3 * np.sin(2 * math.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(t.size)
        right = 0.3 * np.sin(2 * math.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(t.size)
        samples = np.stack([left, right], axis=1)
        for kind in files:
            path = folder / f"clip{index}.{kind.lower()}"
            sf.write(path, samples, rate, subtype="PCM_16")
            files[kind].append(str(path))
    return files


def _load_audio_before(path: str, sampling_rate: int = 16000) -> np.ndarray:
    """`load_audio` as it was before `mix_down`: numpy's mean over the channel axis."""
    import soxr

    samples, rate, _ = decode_source(path)
    return soxr.resample(samples.mean(axis=1, dtype=np.float32), rate, sampling_rate, quality="HQ")


def audio_speed(rounds: int, count: int = 20) -> list[dict]:
    import soundfile as sf

    def clips_per_second(paths, step) -> float:
        start = time.perf_counter()
        for path in paths:
            step(path)
        return len(paths) / (time.perf_counter() - start)

    steps = {
        "decode only": lambda path: sf.read(path, dtype="float32"),
        "before": _load_audio_before,
        "load_audio": lambda path: load_audio(path, 16000),
    }
    with tempfile.TemporaryDirectory() as folder:
        files = write_audio_clips(Path(folder), count)
        speeds = {}
        for _ in range(rounds):
            for kind, paths in files.items():
                for label, step in steps.items():
                    speeds.setdefault((kind, label), []).append(clips_per_second(paths, step))
    rows = []
    print(
        "| 5 s, 44.1 kHz stereo, 16-bit | decode only clips/s | decode + mono + resample to 16 kHz clips/s: "
        "before | after | ratio |"
    )
    print("|---|---|---|---|---|")
    for kind in files:
        decode, before, after = (speeds[(kind, label)] for label in steps)
        ratio = statistics.median(b / a for a, b in zip(before, after, strict=True))
        row = {
            "format": kind,
            "decode_clips_s": statistics.median(decode),
            "before_clips_s": statistics.median(before),
            "after_clips_s": statistics.median(after),
            "ratio": ratio,
        }
        rows.append(row)
        print(
            f"| {kind} | {row['decode_clips_s']:.0f} | {row['before_clips_s']:.0f} | {row['after_clips_s']:.0f} | "
            f"{ratio:.2f}x |"
        )
    return rows


if __name__ == "__main__":
    main()
