"""What the datasets and transforms take from a video besides its frames: its sound track (`load_video_audio`), the
up-front check of a whole split (`check_videos`, every frame decoded), and the batch key of frames decoded before the
transform (`VIDEO_FRAMES_KEY`)."""

from __future__ import annotations

import functools

import datasets
import numpy as np

from ..audio import load_audio
from ..validation import BadSampleError, check_samples
from .containers import Packets, VideoSource, naming_errors, resolve_source, video_stream
from .frames import load_video_frames

# The batch key under which a clip's already decoded frames (a list of PIL images per row, None where missing) reach
# `MultimodalTransform`, which then uses them instead of decoding the video column: mm_hf.corruptions decodes and
# corrupts the frames before the transform.
VIDEO_FRAMES_KEY = "video_frames"


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

    open_container, name = resolve_source(source)
    with naming_errors(name):
        with open_container() as container:
            video = video_stream(container, name).index
            audio = container.streams.audio[0] if container.streams.audio else None
            # Planar float keeps the channels apart; load_audio mixes them down. Rate and layout stay.
            resampler = av.AudioResampler(format="fltp")
            decoded, packets = [], Packets()
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
