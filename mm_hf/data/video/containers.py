"""Opening a video source and reading its timeline without decoding: a path, bytes or a `{"bytes", "path"}` record
opened with PyAV (imported inside the functions, so `mm_hf` imports without it), any failure turned into a
`BadSampleError` naming the file, and one demux pass (`scan_video`) that gives the frames' timestamps and keyframes
and catches truncated files (fewer or shorter packets than the container declares)."""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..validation import IN_MEMORY, BadSampleError, require_file

# A path, encoded bytes, or a `datasets.Video(decode=False)` record {"bytes", "path"}.
VideoSource = str | os.PathLike | bytes | Mapping[str, Any]

# Containers without frame counts whose header stores the duration (see `Packets.check_complete`).
_HEADER_DURATION_FORMATS = frozenset({"matroska", "webm"})
# A stream may end short of the declared duration by 1.5 of its packets plus this much before the file
# counts as truncated.
_DURATION_SLACK_SECONDS = 0.05


# --- opening -----------------------------------------------------------------------------------------


def resolve_source(source: VideoSource) -> tuple[Callable[[], Any], str]:
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
    require_file(path)
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
def naming_errors(name: str) -> Iterator[None]:
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


def video_stream(container: Any, name: str) -> Any:
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


class VideoScan(NamedTuple):
    times: list[float]  # presentation time of each stored frame, sorted, in the stream's time base
    start: float  # first frame's time
    span: float  # first frame's time to the last frame's end
    uses_pts: bool  # False: timestamps are missing and frames are placed one time unit apart
    keyframes: list[int]  # indices into `times` of the frames a decoder can start from, ascending


class Packets:
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


def scan_video(container: Any, stream: Any, name: str) -> VideoScan:
    """Demux every packet once to learn the video's timeline and to catch truncated files."""
    packets, times, durations, keys = Packets(), [], [], []
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
    return VideoScan(times, times[0], times[-1] + last - times[0], uses_pts, keyframes)
