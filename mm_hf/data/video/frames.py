"""Sampling a clip's frames: `load_video_frames` takes one frame per equal segment of the clip's span (TSN-style),
then decodes only those, by seeking to the keyframe before each (`decode_seeking`) or in one pass front to back,
whichever decodes fewer frames (`seek_plan`, seeks counted at `SEEK_COST_FRAMES`); both give exactly the same frames.
"""

from __future__ import annotations

import bisect
import random
from typing import Any

import numpy as np
from PIL import Image

from ..validation import BadSampleError
from .containers import VideoScan, VideoSource, naming_errors, resolve_source, scan_video, video_stream

# What one seek costs, in decoded frames (the demuxer's jump, flushing the decoder, restarting it): seeking is chosen
# when the frames it decodes plus this per seek stay under the clip's frame count. `python -m mm_hf.bench.pipeline
# --video` measured 1.2 ms a seek = 9 frames of a 160x120 h264 clip decoded at 8200 frames/s; forcing seeks on that
# 5-minute clip broke even (0.99x the one pass) where the plan came to ~90 % of the frames at this cost.
SEEK_COST_FRAMES = 9


def load_video_frames(
    source: VideoSource,
    num_frames: int,
    *,
    train: bool = False,
    rng: random.Random | None = None,
    decode_all: bool = False,
) -> list[Image.Image]:
    """Decode `num_frames` RGB frames sampled uniformly over the clip, in temporal order.

    The clip's span (first frame's timestamp to the last frame's end) is cut into `num_frames` equal
    segments; each yields the frame shown at the segment's centre (`train=False`) or at a uniformly
    random time within it (`train=True`, from `rng`, else the global `random`, which Trainer seeds per
    worker). For a constant frame rate and T frames, segment k gives frame `floor((k + 0.5) * T / n)`
    in evaluation. Clips with fewer than `num_frames` frames repeat frames; the result always has
    exactly `num_frames` images, upright according to the stream's display rotation. `source` is a
    path, encoded bytes or a `{"bytes", "path"}` record (bytes win; the path then only names the
    sample in errors). Raises `BadSampleError` naming the file for a missing, non-video, truncated,
    corrupt or frameless file; corruption is only seen in the frames decoded, which is every frame with
    `decode_all=True` (what `check_videos` does) and otherwise only the groups of pictures the chosen
    frames are in when seeking pays (see the module docstring).
    """
    if not isinstance(num_frames, int | np.integer) or num_frames <= 0:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    return sample_frames(source, num_frames, train=train, rng=rng, seek=False if decode_all else None)


def sample_frames(
    source: VideoSource, num_frames: int, *, train: bool, rng: random.Random | None, seek: bool | None
) -> list[Image.Image]:
    """`load_video_frames`, decoding by seeking (`seek=True`), in one pass (False), or whichever is cheaper (None)."""
    open_container, name = resolve_source(source)
    with naming_errors(name):
        with open_container() as container:
            index = video_stream(container, name).index
            scan = scan_video(container, container.streams[index], name)
        offsets = [(rng or random).random() if train else 0.5 for _ in range(num_frames)]
        targets = [scan.start + (k + u) * scan.span / num_frames for k, u in enumerate(offsets)]
        if seek is None:
            seek = _seek_pays(scan, targets)
        if seek:
            try:
                with open_container() as container:
                    return decode_seeking(container, container.streams[index], scan, targets, name)
            except _CannotSeek:
                pass  # the one pass below decodes every frame, and finds any real fault on the way
        with open_container() as container:
            return _decode_at(container, container.streams[index], scan, targets, name)


def _decode_at(container: Any, stream: Any, scan: VideoScan, targets: list[float], name: str) -> list[Image.Image]:
    """Decode front to back; for each (ascending) target time keep the frame shown at that time."""
    chosen: list[Image.Image | None] = [None] * len(targets)
    rgb: dict[int, Image.Image] = {}  # index of a decoded frame -> its image, converted once

    def image(index: int, frame: Any) -> Image.Image:
        if index not in rgb:
            rgb[index] = _upright_rgb(frame)
            return rgb[index]
        return rgb[index].copy()  # repeated frames are separate images, safe to modify one

    next_target, previous, decoded = 0, None, 0
    for index, frame in enumerate(container.decode(stream)):
        if frame.is_corrupt:
            raise BadSampleError(name, f"corrupt video: frame {index} decodes with errors")
        if scan.uses_pts and frame.pts is not None:
            time = float(frame.pts)
        else:
            time = scan.times[min(index, len(scan.times) - 1)]
        while next_target < len(targets) and time > targets[next_target]:
            # Before the first frame's time only happens through rounding: show the first frame.
            shown = previous if previous is not None else (index, frame)
            chosen[next_target] = image(*shown)
            next_target += 1
        previous, decoded = (index, frame), index + 1
    if decoded == 0:
        raise BadSampleError(name, f"zero frames: none of the {len(scan.times)} stored frames decode")
    if decoded < len(scan.times):
        raise BadSampleError(name, f"corrupt video: only {decoded} of {len(scan.times)} stored frames decode")
    for k in range(next_target, len(targets)):
        chosen[k] = image(*previous)
    return chosen


class _CannotSeek(Exception):
    """Seeking did not land where the scan said (no timestamps, an unseekable container, odd keyframes)."""


def shown_frames(scan: VideoScan, targets: list[float]) -> list[int]:
    """Index of the frame shown at each target time: the last one starting at or before it (else the first)."""
    return [max(bisect.bisect_right(scan.times, target) - 1, 0) for target in targets]


def seek_plan(scan: VideoScan, wanted: list[int]) -> list[tuple[int | None, int]]:
    """For each wanted frame (ascending, distinct): (keyframe to seek to, or None to decode on), frames decoded."""
    plan, position = [], None
    for frame in wanted:
        k = bisect.bisect_right(scan.keyframes, frame) - 1
        key = scan.keyframes[k] if k >= 0 else None
        if key is None:  # no keyframe at or before it: only decoding from the start reaches it
            plan.append((None, frame + 1 - (0 if position is None else position + 1)))
        elif position is not None and frame - position <= frame - key + SEEK_COST_FRAMES:
            plan.append((None, frame - position))  # on from the frame decoded last, no seek
        else:
            plan.append((key, frame - key + 1 + SEEK_COST_FRAMES))
        position = frame
    return plan


def _seek_pays(scan: VideoScan, targets: list[float]) -> bool:
    """Whether seeking decodes fewer frames (seeks counted at `SEEK_COST_FRAMES`) than one pass over all of them."""
    if not scan.uses_pts or not scan.keyframes:
        return False
    plan = seek_plan(scan, sorted(set(shown_frames(scan, targets))))
    return any(key is not None for key, _ in plan) and sum(cost for _, cost in plan) < len(scan.times)


def decode_seeking(container: Any, stream: Any, scan: VideoScan, targets: list[float], name: str) -> list[Image.Image]:
    """Seek to the keyframe before each chosen frame and decode forward to it; the same frames as `_decode_at`."""
    shown = shown_frames(scan, targets)
    wanted = sorted(set(shown))
    rgb: dict[int, Image.Image] = {}
    frames = None
    for frame_index, (key, _) in zip(wanted, seek_plan(scan, wanted), strict=True):
        target = scan.times[frame_index]
        if key is not None:
            try:
                container.seek(int(scan.times[key]), stream=stream, backward=True, any_frame=False)
            except Exception as error:
                raise _CannotSeek from error
            frames, start = container.decode(stream), scan.times[key]
        elif frames is None:  # the first wanted frame precedes every keyframe: decode from the start
            frames, start = container.decode(stream), scan.times[0]
        for frame in frames:
            if frame.pts is None:
                raise _CannotSeek
            if frame.pts < start:
                continue  # frames of an open group of pictures that refer to the one before the keyframe
            if frame.is_corrupt:
                raise BadSampleError(name, f"corrupt video: frame at time {frame.pts} decodes with errors")
            if frame.pts == target:
                rgb[frame_index] = _upright_rgb(frame)
                break
            if frame.pts > target:
                raise _CannotSeek
        else:
            raise _CannotSeek  # the stream ended before the frame
    seen: set[int] = set()
    chosen = []
    for frame_index in shown:  # repeated frames are separate images, safe to modify one
        chosen.append(rgb[frame_index] if frame_index not in seen else rgb[frame_index].copy())
        seen.add(frame_index)
    return chosen


def _upright_rgb(frame: Any) -> Image.Image:
    """The frame as RGB, rotated as the stream's display matrix says (like EXIF orientation for photos)."""
    image = frame.to_image()  # rgb24
    rotation = round(frame.rotation or 0) % 360  # counter-clockwise degrees
    if rotation == 0:
        return image
    transposes = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    if rotation in transposes:
        return image.transpose(transposes[rotation])
    return image.rotate(rotation, expand=True)
