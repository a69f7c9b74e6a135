"""Decode video clips to a fixed number of RGB frames (plus the audio track), validate a dataset's videos.

Decoding uses PyAV (`av`, whose wheels bundle FFmpeg), imported inside the functions so `mm_hf` imports
without it. `load_video_frames` samples frames TSN-style: the clip's time span is cut into `num_frames`
equal segments and one frame is taken per segment, at its centre in evaluation (deterministic) or at a
random point of it in training. The file is read twice: demuxing it (cheap, nothing is decoded) gives
the frames' timestamps and keyframes and catches truncation; then only the chosen frames are decoded:
for each one, seek to the keyframe before it and decode forward to it (frames of one group of pictures
are decoded in one run). Where that would decode about as many frames as the whole clip (few keyframes:
short clips, or encoders' default of one keyframe per ~10 s), or the container cannot seek, one pass
decodes front to back instead; both give exactly the same frames. Memory stays at `num_frames` images
whatever the clip's length.

As with images and audio, a bad file raises `BadSampleError` naming it: missing, empty, not a video
(text, an image renamed .mp4, audio only), truncated (fewer frames or a shorter span than the
container declares), corrupt (a decoding error, a frame the decoder flags as corrupt, or fewer frames
decoding than were stored) or without frames. A seeking load still catches all of these except
corruption in the frames it does not decode (a garbled frame in a group of pictures no sample falls
in); `check_videos` therefore decodes every frame (`decode_all=True`) over a whole split once, up
front, and either fails with a list of the bad files or drops them.

`write_synthetic_video` and `make_moving_shape_clip` make small clips offline for tests and demos.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import io
import math
import os
import random
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
from PIL import Image

from mm_hf.data.audio import load_audio
from mm_hf.data.validation import IN_MEMORY, BadSampleError, check_samples

# A path, encoded bytes, or a `datasets.Video(decode=False)` record {"bytes", "path"}.
VideoSource = str | os.PathLike | bytes | Mapping[str, Any]

# The batch key under which a clip's already decoded frames (a list of PIL images per row, None where missing) reach
# `MultimodalTransform`, which then uses them instead of decoding the video column: mm_hf.corruptions decodes and
# corrupts the frames before the transform.
VIDEO_FRAMES_KEY = "video_frames"

# Directions of `make_moving_shape_clip`'s classes: label i moves the square MOVING_SHAPE_CLASSES[i].
MOVING_SHAPE_CLASSES = ("right", "left", "down", "up")

# Containers without frame counts whose header stores the duration (see `_Packets.check_complete`).
_HEADER_DURATION_FORMATS = frozenset({"matroska", "webm"})
# A stream may end short of the declared duration by 1.5 of its packets plus this much before the file
# counts as truncated.
_DURATION_SLACK_SECONDS = 0.05
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
    open_container, name = _resolve(source)
    with _naming_errors(name):
        with open_container() as container:
            index = _video_stream(container, name).index
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


def load_video_audio(source: VideoSource, sampling_rate: int) -> np.ndarray | None:
    """Decode the clip's (first) audio track into mono float32 at `sampling_rate` Hz, or None without one.

    Channels are averaged and the rate is converted with soxr, both by `mm_hf.data.audio.load_audio`,
    which also rejects empty or non-finite audio. The track is returned from its first sample, however
    it is offset from the video. Raises `BadSampleError` naming the file for what the container alone
    shows to be bad (missing, not a video, no video stream or frames, truncated) and for audio that
    does not decode; errors inside the video data are for `load_video_frames` to find.
    """
    if not isinstance(sampling_rate, int | np.integer) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer, got {sampling_rate!r}")
    import av

    open_container, name = _resolve(source)
    with _naming_errors(name):
        with open_container() as container:
            video = _video_stream(container, name).index
            audio = container.streams.audio[0] if container.streams.audio else None
            # Planar float keeps the channels apart; load_audio mixes them down. Rate and layout stay.
            resampler = av.AudioResampler(format="fltp")
            decoded, packets = [], _Packets()
            for packet in container.demux():
                packets.add(packet)
                if audio is not None and packet.stream.index == audio.index:
                    for frame in packet.decode():  # the final empty packet flushes the decoder
                        decoded.extend(resampler.resample(frame))
            packets.check_complete(container, name)
            if not packets.stored.get(video):
                raise BadSampleError(name, "zero frames: the video stream holds no frames")
            if audio is None:
                return None
            decoded.extend(resampler.resample(None))
    if not decoded:
        raise BadSampleError(name, "zero-length audio: the audio track decodes to no samples")
    samples = np.concatenate([frame.to_ndarray() for frame in decoded], axis=1).T  # (samples, channels)
    # The rate the samples were decoded at, which need not be the one the stream header declares.
    rate = decoded[0].sample_rate
    return load_audio({"array": samples, "sampling_rate": rate, "path": name}, int(sampling_rate))


def check_videos(
    dataset: datasets.Dataset,
    column: str,
    *,
    skip_bad: bool,
    num_proc: int | None = None,
    split_name: str = "train",
    allow_missing: bool = False,
    sampling_rate: int | None = None,
) -> tuple[datasets.Dataset, list[tuple[str, str]]]:
    """Decode every video in `dataset[column]` once, before training, to find unusable samples.

    Returns `(dataset, bad)` where `bad` lists `(source, reason)` pairs. With `skip_bad=False` any bad
    sample raises `BadSampleError` listing the first few; with `skip_bad=True` they are dropped from
    the returned dataset (which is otherwise unchanged). Samples can be paths or `datasets.Video`
    records; decoded frames are never stored. With `sampling_rate`, audio tracks are decoded and
    resampled too (a clip without one is fine).
    """
    return check_samples(
        dataset,
        column,
        functools.partial(_check_video, sampling_rate=sampling_rate),
        kind="videos",
        feature_type=datasets.Video,
        skip_bad=skip_bad,
        num_proc=num_proc,
        split_name=split_name,
        allow_missing=allow_missing,
    )


def _check_video(source: VideoSource, sampling_rate: int | None) -> None:
    load_video_frames(source, 1, decode_all=True)  # corruption anywhere in the clip, not only where frames are kept
    if sampling_rate is not None:
        load_video_audio(source, sampling_rate)


# --- opening -----------------------------------------------------------------------------------------


def _resolve(source: VideoSource) -> tuple[Callable[[], Any], str]:
    """Return a function opening a fresh PyAV container on `source` (decoding reads it twice) and its name."""
    if source is None:
        raise BadSampleError("<missing>", "no video (the value is None)")
    if isinstance(source, Mapping):
        data, path = source.get("bytes"), source.get("path")
        if data:
            return _opener(bytes(data)), str(path or IN_MEMORY)
        if path:
            return _resolve_path(Path(path))
        raise BadSampleError(IN_MEMORY, "the video record has neither 'bytes' nor 'path'")
    if isinstance(source, bytes | bytearray | memoryview):
        return _opener(bytes(source)), IN_MEMORY
    if isinstance(source, str | os.PathLike):
        return _resolve_path(Path(source))
    raise TypeError(f"Cannot load a video from a {type(source).__name__}; expected a path, bytes or dict.")


def _resolve_path(path: Path) -> tuple[Callable[[], Any], str]:
    if not path.exists():
        raise BadSampleError(path, "file not found")
    if not path.is_file():
        raise BadSampleError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise BadSampleError(path, "empty file (0 bytes)")
    return _opener(str(path)), str(path)


def _opener(file: str | bytes) -> Callable[[], Any]:
    def open_container():
        import av

        try:
            return av.open(io.BytesIO(file) if isinstance(file, bytes) else file, "r")
        except Exception as error:
            raise _Unopenable(error) from error

    return open_container


class _Unopenable(Exception):
    """FFmpeg could not open the file at all."""


@contextlib.contextmanager
def _naming_errors(name: str) -> Iterator[None]:
    """Turn any failure to read the file into a `BadSampleError` naming it."""
    try:
        yield
    except BadSampleError:
        raise
    except _Unopenable as error:
        cause = error.__cause__
        reason = "not a video file, or corrupt or truncated: FFmpeg cannot open it"
        raise BadSampleError(name, f"{reason} ({type(cause).__name__}: {cause})") from cause
    # FFmpeg reports bad data as InvalidDataError, EOFError, ...; odd metadata can even surface as
    # UnicodeDecodeError. Any of them means this sample cannot be used.
    except Exception as error:
        raise BadSampleError(name, f"corrupt or truncated file ({type(error).__name__}: {error})") from error


def _video_stream(container: Any, name: str) -> Any:
    import av

    format_name = container.format.name
    if format_name == "image2" or format_name.endswith("_pipe"):
        raise BadSampleError(name, f"an image ({format_name}), not a video")
    # Cover art in audio files shows up as a one-frame video stream marked as an attached picture.
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        found = ", ".join(s.type for s in container.streams) or "none"
        raise BadSampleError(name, f"no video stream (streams: {found})")
    return streams[0]


# --- scanning: the video's timeline and truncation checks, from packets only (no decoding) -------------


class _Scan(NamedTuple):
    times: list[float]  # presentation time of each stored frame, sorted, in the stream's time base
    start: float  # first frame's time
    span: float  # first frame's time to the last frame's end
    uses_pts: bool  # False: timestamps are missing and frames are placed one time unit apart
    keyframes: list[int]  # indices into `times` of the frames a decoder can start from, ascending


class _Packets:
    """What demuxing saw of each stream: how many packets it stores and where its latest one ends."""

    def __init__(self):
        self.stored: dict[int, int] = {}
        self.end: dict[int, float] = {}  # seconds
        self.longest: dict[int, float] = {}  # the longest packet duration, seconds
        self.cut_short: str | None = None  # the type of a stream with a packet cut off by the end of the file

    def add(self, packet: Any) -> None:
        if packet.size == 0:
            return  # the empty packets that mark the end of a stream
        index = packet.stream.index
        self.stored[index] = self.stored.get(index, 0) + 1
        if packet.is_corrupt:  # FFmpeg flags a packet the file holds fewer bytes of than its index says
            self.cut_short = self.cut_short or packet.stream.type
        if packet.pts is None or packet.time_base is None:
            return
        duration = float((packet.duration or 0) * packet.time_base)
        self.end[index] = max(self.end.get(index, -math.inf), float(packet.pts * packet.time_base) + duration)
        self.longest[index] = max(self.longest.get(index, 0.0), duration)

    def check_complete(self, container: Any, name: str) -> None:
        """Raise if the file stores fewer or shorter packets, or a shorter span, than its header declares.

        A cut mp4/mov still has its index (when it opens at all), so its streams come up short of the
        frame counts they declare. Matroska declares no frame counts, but stores the file's duration
        in its header and, when written by FFmpeg, each stream's in a DURATION tag: a stream that ends
        more than 1.5 of its packets (plus a little) short of its own duration, or the file's if no
        stream reaches that, means the file is cut, so losing only the very last packet goes
        unnoticed. Other containers may only estimate their duration from the bitrate, so it is not
        checked there.
        """
        if self.cut_short:
            raise BadSampleError(name, f"truncated or corrupt: a packet of the {self.cut_short} stream is cut short")
        streams = [s for s in container.streams if s.type in ("video", "audio")]  # not subtitles, data
        for stream in streams:
            stored = self.stored.get(stream.index, 0)
            if stored < stream.frames:
                raise BadSampleError(
                    name,
                    f"truncated: the {stream.type} stream declares {stream.frames} frames, only {stored} are stored",
                )
        if not _HEADER_DURATION_FORMATS & set(container.format.name.split(",")):
            return
        # Matroska timestamps and durations count from 0, so compare end times, not spans from the start.
        reach = {index: end + 1.5 * self.longest[index] + _DURATION_SLACK_SECONDS for index, end in self.end.items()}
        for stream in streams:
            declared = _tagged_duration(stream.metadata.get("DURATION"))
            if declared is not None and reach.get(stream.index, 0.0) < declared:
                found = self.end.get(stream.index, 0.0)
                raise BadSampleError(
                    name,
                    f"truncated: the {stream.type} stream declares {declared:.2f} s, its packets end at {found:.2f} s",
                )
        declared = (container.duration or 0) / 1_000_000
        if max(reach.values(), default=0.0) < declared:
            found = max(self.end.values(), default=0.0)
            raise BadSampleError(
                name, f"truncated: the container declares {declared:.2f} s, its packets end at {found:.2f} s"
            )


def _tagged_duration(tag: str | None) -> float | None:
    """Seconds from a Matroska DURATION tag such as "00:00:01.500000000"; None when absent or unreadable."""
    try:
        hours, minutes, seconds = (tag or "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def scan_video(container: Any, stream: Any, name: str) -> _Scan:
    """Demux every packet once to learn the video's timeline and to catch truncated files."""
    packets, times, durations, keys = _Packets(), [], [], []
    for packet in container.demux():
        packets.add(packet)
        # Packets an edit list marks as discarded are decoded but never shown.
        if packet.stream.index == stream.index and packet.size and not packet.is_discard:
            times.append(packet.pts)
            durations.append(packet.duration or 0)
            keys.append(packet.is_keyframe)
    packets.check_complete(container, name)
    if not times:
        raise BadSampleError(name, "zero frames: the video stream holds no frames")
    uses_pts = None not in times
    if uses_pts:
        order = np.argsort(times, kind="stable")
        times = [float(times[i]) for i in order]
        durations = [durations[i] for i in order]
        keyframes = [position for position, i in enumerate(order) if keys[i]]
    else:
        times = [float(i) for i in range(len(times))]
        durations = [1] * len(times)
        keyframes = []  # nothing to seek by
    gaps = np.diff(times)
    last = durations[-1] or (float(np.median(gaps)) if len(gaps) else 1.0)
    return _Scan(times, times[0], times[-1] + last - times[0], uses_pts, keyframes)


# --- decoding the chosen frames ---------------------------------------------------------------------------


def _decode_at(container: Any, stream: Any, scan: _Scan, targets: list[float], name: str) -> list[Image.Image]:
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


def shown_frames(scan: _Scan, targets: list[float]) -> list[int]:
    """Index of the frame shown at each target time: the last one starting at or before it (else the first)."""
    return [max(bisect.bisect_right(scan.times, target) - 1, 0) for target in targets]


def seek_plan(scan: _Scan, wanted: list[int]) -> list[tuple[int | None, int]]:
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


def _seek_pays(scan: _Scan, targets: list[float]) -> bool:
    """Whether seeking decodes fewer frames (seeks counted at `SEEK_COST_FRAMES`) than one pass over all of them."""
    if not scan.uses_pts or not scan.keyframes:
        return False
    plan = seek_plan(scan, sorted(set(shown_frames(scan, targets))))
    return any(key is not None for key, _ in plan) and sum(cost for _, cost in plan) < len(scan.times)


def decode_seeking(container: Any, stream: Any, scan: _Scan, targets: list[float], name: str) -> list[Image.Image]:
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


# --- synthetic clips --------------------------------------------------------------------------------------


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
