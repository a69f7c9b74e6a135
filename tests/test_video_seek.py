"""Seeking video decoding: the same frames as one pass front to back, and bad files still refused by name."""

import random

import av
import numpy as np
import pytest

import mm_hf.data.video.frames as video
from mm_hf.data.validation import BadSampleError
from mm_hf.data.video import load_video_frames, write_synthetic_video

FRAMES = 40


def clip(num_frames=FRAMES, size=32):
    """Frame i: a flat colour from i (so frames differ) plus fixed noise (so the codec has real work to do)."""
    frames = np.random.default_rng(0).integers(0, 40, size=(num_frames, size, size, 3), dtype=np.uint8)
    frames[..., 0] += np.rint(np.arange(num_frames) * 200 / (num_frames - 1)).astype(np.uint8)[:, None, None]
    return frames


def load_both(path, num_frames, train, seed):
    """The frames chosen by seeking and by the one pass, on the same seed."""
    results = []
    for seek in (True, False):
        rng = random.Random(seed)
        results.append(video.sample_frames(path, num_frames, train=train, rng=rng, seek=seek))
    return results


@pytest.mark.parametrize(("suffix", "gop"), [(".mp4", 1), (".mp4", 5), (".mkv", 7), (".mp4", 16)])
def test_seeking_gives_the_frames_of_one_pass(tmp_path, monkeypatch, suffix, gop):
    path = write_synthetic_video(tmp_path / f"gop{gop}{suffix}", clip(), fps=10, gop_size=gop)
    with av.open(path) as container:
        keys = sum(p.is_keyframe for p in container.demux(video=0) if p.size)
    assert keys >= FRAMES // gop  # the clip really has that many groups of pictures to seek between
    calls, real = [], video._decode_at
    monkeypatch.setattr(video, "_decode_at", lambda *a, **k: calls.append(1) or real(*a, **k))
    for train, seed, num_frames in [(False, 0, 8), (True, 1, 8), (True, 2, 3), (True, 3, 50)]:
        calls.clear()
        seeking, one_pass = load_both(path, num_frames, train, seed)
        assert calls == [1]  # only the one pass decoded every frame: the seeking load never fell back to it
        assert len(seeking) == len(one_pass) == num_frames
        for a, b in zip(seeking, one_pass, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_load_seeks_only_when_it_pays(tmp_path, monkeypatch):
    many_keys = write_synthetic_video(tmp_path / "many.mp4", clip(120), fps=10, gop_size=4)
    one_key = write_synthetic_video(tmp_path / "one.mp4", clip(), fps=10)  # libx264: a keyframe per 250 frames
    monkeypatch.setattr(video, "_decode_at", lambda *a, **k: pytest.fail("decoded every frame"))
    assert len(load_video_frames(many_keys, 4)) == 4
    monkeypatch.undo()
    monkeypatch.setattr(video, "decode_seeking", lambda *a, **k: pytest.fail("seeked"))
    assert len(load_video_frames(one_key, 4)) == 4


def test_bad_files_are_refused_by_name_when_seeking(tmp_path):
    good = open(write_synthetic_video(tmp_path / "good.mkv", clip(), fps=10, gop_size=4), "rb").read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(BadSampleError, match="truncated") as caught:
        load_video_frames(cut, 4)
    assert caught.value.source == str(cut)
    # A garbled frame in a group of pictures far from the sampled ones is only seen by decoding every frame,
    # which is what check_videos does. (h264 in mp4: FFmpeg reports the garbled packet; from mkv it may not.)
    good = open(write_synthetic_video(tmp_path / "good.mp4", clip(80), fps=10, gop_size=4), "rb").read()
    garbled = bytearray(good)
    with av.open(str(tmp_path / "good.mp4")) as container:
        # Evaluation with 2 frames shows frames 20 and 60; the decoder's look-ahead (frame threads) stays far off 40.
        packet = [p for p in container.demux(video=0) if p.size][40]
        garbled[packet.pos : packet.pos + packet.size] = np.random.default_rng(0).bytes(packet.size)
    bad = tmp_path / "garbled.mp4"
    bad.write_bytes(bytes(garbled))
    assert len(load_video_frames(bad, 2)) == 2
    with pytest.raises(BadSampleError, match="corrupt") as caught:
        load_video_frames(bad, 2, decode_all=True)
    assert caught.value.source == str(bad)
