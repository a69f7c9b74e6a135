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


By concern: `containers` (opening a source, errors naming the file, the demux scan and truncation checks), `frames`
(sampling and decoding the chosen frames, seeking or in one pass), `dataset` (the sound track, the check of a whole
split, the decoded-frames batch key), `synthetic_clips` (clips written for tests and demos).
"""

from .containers import VideoScan, VideoSource, scan_video
from .dataset import VIDEO_FRAMES_KEY, check_videos, load_video_audio
from .frames import SEEK_COST_FRAMES, decode_seeking, load_video_frames, sample_frames, seek_plan, shown_frames
from .synthetic_clips import MOVING_SHAPE_CLASSES, default_video_codec, make_moving_shape_clip, write_synthetic_video

__all__ = [
    "MOVING_SHAPE_CLASSES",
    "SEEK_COST_FRAMES",
    "VIDEO_FRAMES_KEY",
    "VideoScan",
    "VideoSource",
    "check_videos",
    "decode_seeking",
    "default_video_codec",
    "load_video_audio",
    "load_video_frames",
    "make_moving_shape_clip",
    "sample_frames",
    "scan_video",
    "seek_plan",
    "shown_frames",
    "write_synthetic_video",
]
