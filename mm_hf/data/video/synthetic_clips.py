"""Small clips made offline for tests and demos: `write_synthetic_video` encodes frames (and a sound track) to a
file, `make_moving_shape_clip` draws a clip whose class is its motion alone."""

from __future__ import annotations

import functools
import os
import random
from fractions import Fraction

import numpy as np

# Directions of `make_moving_shape_clip`'s classes: label i moves the square MOVING_SHAPE_CLASSES[i].
MOVING_SHAPE_CLASSES = ("right", "left", "down", "up")


@functools.cache
def default_video_codec() -> str:
    import av

    # FFmpeg lists libx264 only as an encoder, so its presence means we can write h264.
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_synthetic_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int = 8,
    audio: np.ndarray | None = None,
    sampling_rate: int = 16000,
    *,
    codec: str | None = None,
    gop_size: int | None = None,
) -> str:
    """Write `frames` (T, H, W, 3) uint8 RGB as a video file, with an optional mono audio track; returns the path.

    The container follows the extension (.mp4, .mkv, .mov, ...). Video is h264 (libx264, near-lossless
    CRF 10) when the PyAV wheel has it, else MPEG-4 Part 2; `codec` forces one. Pixels are stored as
    yuv420p, which every player reads but which needs an even height and width. `audio` (1-D float
    samples in [-1, 1] at `sampling_rate` Hz) is encoded as AAC, which mp4 and mkv both carry.
    `T = 0` writes a video stream without frames (mkv keeps it; mp4 drops the empty track). `gop_size`
    caps the frames between keyframes (the encoder's default, else: 250 for libx264, 12 for MPEG-4).
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2 or height == 0 or width == 0:
        raise ValueError(f"yuv420p needs a non-zero, even height and width, got {height}x{width}")
    codec = codec or default_video_codec()
    options = {"crf": "10"} if codec == "libx264" else {}
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps, options=options)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if gop_size is not None:
            video.codec_context.gop_size = gop_size
        if codec != "libx264":
            video.bit_rate = 8_000_000  # tiny clips: plenty, so the content survives
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sampling_rate, layout="mono")
        container.start_encoding()
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
            for start in range(0, len(samples), 1024):  # AAC's frame size
                chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = sampling_rate, start, Fraction(1, sampling_rate)
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    return str(path)


def make_moving_shape_clip(label: int, num_frames: int, size: int, rng: random.Random | None = None) -> np.ndarray:
    """A (num_frames, size, size, 3) uint8 clip of a bright square moving in direction `MOVING_SHAPE_CLASSES[label]`.

    The class is the motion alone. The square (side size // 4, random bright colour, on a dark noisy
    background) travels half the frame at constant speed along a path centred on a random point,
    drawn from the same range on both axes and for every class, so the middle frame of a clip has the
    same distribution whatever the label: one frame cannot tell the class. Averaging the frames shows
    the axis (a horizontal or vertical streak) but not the direction; only the temporal order
    separates right from left and down from up, which is what a temporal model must learn. `rng`
    (else the global `random`) makes clips reproducible.
    """
    if label not in range(len(MOVING_SHAPE_CLASSES)):
        raise ValueError(f"label must be in 0..{len(MOVING_SHAPE_CLASSES) - 1}, got {label!r}")
    if num_frames <= 0 or size < 8:
        raise ValueError(f"need num_frames >= 1 and size >= 8, got {num_frames} and {size}")
    rng = rng or random
    side, travel = size // 4, size // 2
    low, high = travel / 2, size - side - travel / 2  # the path's centre keeps the square inside
    centre = np.array([rng.uniform(low, high), rng.uniform(low, high)])  # (x, y)
    direction = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}[MOVING_SHAPE_CLASSES[label]]
    noise = np.random.default_rng(rng.getrandbits(64))
    clip = noise.integers(0, 40, size=(num_frames, size, size, 3), dtype=np.uint8)
    colour = np.array([rng.randint(160, 255) for _ in range(3)], dtype=np.uint8)
    for t in range(num_frames):
        progress = t / (num_frames - 1) - 0.5 if num_frames > 1 else 0.0  # -0.5 .. 0.5
        x, y = np.rint(centre + np.array(direction) * progress * travel).astype(int)
        clip[t, y : y + side, x : x + side] = colour
    return clip
