"""Video decoding: TSN-style frame sampling, the audio track, every kind of bad file, check_videos;
all on tiny clips written into tmp_path by write_synthetic_video."""

import random
import subprocess
import sys
from fractions import Fraction

import av
import datasets
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mm_hf.data.validation import BadSampleError
from mm_hf.data.video import (
    MOVING_SHAPE_CLASSES,
    check_videos,
    load_video_audio,
    load_video_frames,
    make_moving_shape_clip,
    write_synthetic_video,
)

RATE = 16000
FPS = 8


def ramp(num_frames, height=32, width=48):
    """Frame i is one flat colour whose red level encodes i (and green its complement), so frames can be told apart."""
    levels = np.rint(np.arange(num_frames) * 255 / max(num_frames - 1, 1)).astype(np.uint8)
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = levels[:, None, None]
    frames[..., 1] = 255 - levels[:, None, None]
    frames[..., 2] = 64
    return frames


def frame_indices(images, num_frames):
    """Which ramp frame each decoded image is."""
    return [round(float(np.asarray(image)[..., 0].mean()) * (num_frames - 1) / 255) for image in images]


def sine(seconds, rate=RATE, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def segment_bounds(num_frames, num_segments, k):
    """The frames segment k of num_segments covers (at least partly), first and last."""
    return (k * num_frames) // num_segments, -(-(k + 1) * num_frames // num_segments) - 1


@pytest.fixture(scope="module")
def clip12(tmp_path_factory):
    return write_synthetic_video(tmp_path_factory.mktemp("clips") / "ramp12.mp4", ramp(12), FPS)


def test_round_trip_keeps_count_size_colours_and_order(tmp_path):
    frames = ramp(8)
    path = write_synthetic_video(tmp_path / "ramp.mp4", frames, FPS)
    images = load_video_frames(path, 8)
    assert len(images) == 8 and all(isinstance(im, Image.Image) and im.mode == "RGB" for im in images)
    assert {im.size for im in images} == {(48, 32)}  # (width, height): not transposed
    decoded = np.stack([np.asarray(im, dtype=np.float64) for im in images])
    np.testing.assert_allclose(decoded.mean(axis=(1, 2)), frames.mean(axis=(1, 2)), atol=3)  # R, G, B in place


@pytest.mark.parametrize(
    ("name", "codec", "num_frames", "expected"),
    [
        ("a.mp4", None, 4, [1, 4, 7, 10]),  # floor((k + 0.5) * 12 / 4)
        ("a.mkv", None, 4, [1, 4, 7, 10]),
        ("a.mp4", "mpeg4", 4, [1, 4, 7, 10]),
        ("a.mp4", None, 6, [1, 3, 5, 7, 9, 11]),
        ("a.mp4", None, 1, [6]),
    ],
)
def test_eval_sampling_takes_segment_centres(tmp_path, name, codec, num_frames, expected):
    path = write_synthetic_video(tmp_path / name, ramp(12), FPS, codec=codec)
    first, second = load_video_frames(path, num_frames), load_video_frames(path, num_frames)
    assert frame_indices(first, 12) == expected
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second, strict=True))


def test_train_sampling_varies_with_rng_and_stays_in_segments(clip12):
    draws = [
        tuple(frame_indices(load_video_frames(clip12, 4, train=True, rng=random.Random(s)), 12)) for s in range(12)
    ]
    for draw in draws:
        assert list(draw) == sorted(draw)
        for k, index in enumerate(draw):
            low, high = segment_bounds(12, 4, k)
            assert low <= index <= high
    assert len(set(draws)) > 3
    again = frame_indices(load_video_frames(clip12, 4, train=True, rng=random.Random(5)), 12)
    assert tuple(again) == draws[5]


def test_short_clips_repeat_frames_in_order(tmp_path):
    path = write_synthetic_video(tmp_path / "short.mp4", ramp(4), FPS)
    images = load_video_frames(path, 8)
    assert frame_indices(images, 4) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert images[0] is not images[1]  # repeats are separate images
    trained = frame_indices(load_video_frames(path, 8, train=True, rng=random.Random(0)), 4)
    assert len(trained) == 8 and trained == sorted(trained)
    single = write_synthetic_video(tmp_path / "single.mkv", ramp(1), FPS)
    assert len(load_video_frames(single, 5)) == 5


def test_sampling_follows_timestamps_not_frame_numbers(tmp_path):
    """A variable-frame-rate clip: frame 3 stays on screen from t=3 to t=12 (in 1/8 s)."""
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for pixels, pts in zip(ramp(8), [5, 6, 7, 8, 17, 18, 19, 20], strict=True):  # starts at 5, not 0
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    # The span 5..21 cut in 4: centres at 7, 11, 15, 19, showing frames 2, 3, 3 and 6 (by number: 1, 3, 5, 7).
    assert frame_indices(load_video_frames(path, 4), 8) == [2, 3, 3, 6]


def test_sources_path_bytes_and_records_agree(clip12):
    data = open(clip12, "rb").read()
    expected = [np.asarray(im) for im in load_video_frames(clip12, 3)]
    for source in (data, {"bytes": data, "path": "clip.mp4"}, {"bytes": None, "path": clip12}):
        assert all(
            np.array_equal(np.asarray(a), b) for a, b in zip(load_video_frames(source, 3), expected, strict=True)
        )
    with pytest.raises(BadSampleError, match="clip.mp4"):
        load_video_frames({"bytes": data[:100], "path": "clip.mp4"}, 3)


def test_display_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.mp4"
    marked = np.zeros((32, 48, 3), np.uint8)
    marked[:8, :8] = 255  # top-left corner
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.set_display_rotation(90)  # counter-clockwise, as FFmpeg's display matrix reads
        frame = av.VideoFrame.from_ndarray(marked, format="rgb24")
        frame.pts, frame.time_base = 0, Fraction(1, FPS)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    (image,) = load_video_frames(path, 1)
    pixels = np.asarray(image)
    assert image.size == (32, 48)
    assert pixels[-4, 4].mean() > 200 and pixels[4, 4].mean() < 50  # top-left went to bottom-left


def test_audio_track_round_trip(tmp_path):
    seconds, written_rate = 1.5, 22050
    path = write_synthetic_video(
        tmp_path / "a.mp4", ramp(12), FPS, audio=sine(seconds, written_rate), sampling_rate=22050
    )
    audio = load_video_audio(path, RATE)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # AAC pads the last 1024-sample frame; the encoder delay is trimmed by the container.
    assert abs(len(audio) - seconds * RATE) <= 1024 * RATE / written_rate + 1
    inner = audio[1000:-1000]
    spectrum = np.abs(np.fft.rfft(inner * np.hanning(len(inner)), n=16 * len(inner)))
    assert abs(np.argmax(spectrum) * RATE / (16 * len(inner)) - 440.0) < 3.0
    assert np.sqrt(np.mean(inner**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    assert load_video_frames(path, 2)[0].size == (48, 32)  # the audio does not disturb the video


def test_no_audio_track_gives_none(clip12):
    assert load_video_audio(clip12, RATE) is None


def test_writer_rejects_odd_sizes_and_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_synthetic_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_synthetic_video(tmp_path / "float.mp4", np.zeros((2, 32, 32, 3), np.float32))


def bad_files(tmp_path):
    """Name -> path of every kind of unusable file, each named .mp4 or .mkv."""
    good = open(write_synthetic_video(tmp_path / "good.mp4", ramp(12), FPS, audio=sine(1.5)), "rb").read()
    good_mkv = open(write_synthetic_video(tmp_path / "good.mkv", ramp(12), FPS, audio=sine(1.5)), "rb").read()
    faststart = tmp_path / "faststart.mp4"
    with (
        av.open(str(tmp_path / "good.mp4")) as source,
        av.open(str(faststart), "w", options={"movflags": "faststart"}) as out,
    ):
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    faststart_data = faststart.read_bytes()  # the index comes first, so a cut file still opens
    garbled = bytearray(good)
    with av.open(str(tmp_path / "good.mp4")) as container:
        packet = [p for p in container.demux(video=0) if p.size][6]  # a frame mid-clip becomes noise
        garbled[packet.pos : packet.pos + packet.size] = np.random.default_rng(0).bytes(packet.size)
    png = tmp_path / "png.mp4"
    Image.new("RGB", (16, 16), "red").save(png, format="PNG")
    sf.write(tmp_path / "audio_only.mp4", sine(1.0), RATE, format="WAV")
    write_synthetic_video(tmp_path / "zero_frames.mkv", ramp(12)[:0], FPS, audio=sine(1.0))
    files = {
        "cut.mp4": good[: len(good) // 2],
        "cut.mkv": good_mkv[: len(good_mkv) // 2],
        "cut_faststart.mp4": faststart_data[: len(faststart_data) // 2],
        "garbled.mp4": bytes(garbled),
        "text.mp4": b"this is not a video, just some text\n" * 20,
        "empty.mp4": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    names = [*files, "png.mp4", "audio_only.mp4", "zero_frames.mkv"]
    return {name: str(tmp_path / name) for name in names}


BAD = [
    ("cut.mp4", "corrupt or truncated"),  # the index (moov) at the end is gone
    ("cut.mkv", "truncated"),  # plays silently to the cut: caught by the declared durations
    ("cut_faststart.mp4", "truncated"),  # the index declares more than the file holds
    ("garbled.mp4", "corrupt"),
    ("text.mp4", "not a video"),
    ("png.mp4", "an image"),
    ("audio_only.mp4", "no video stream"),
    ("zero_frames.mkv", "zero frames"),
    ("empty.mp4", "empty file"),
    ("missing.mp4", "file not found"),
]


@pytest.mark.parametrize(("name", "reason"), BAD)
def test_bad_files_raise_naming_the_file(tmp_path, name, reason):
    path = bad_files(tmp_path).get(name, str(tmp_path / name))
    with pytest.raises(BadSampleError, match=reason) as caught:
        load_video_frames(path, 4)
    assert caught.value.source == path and path in str(caught.value)
    if name != "garbled.mp4":  # errors inside the video data are only found by decoding the video
        with pytest.raises(BadSampleError) as caught:
            load_video_audio(path, RATE)
        assert caught.value.source == path


def test_cut_matroska_without_stream_durations_is_caught_by_the_file_duration(tmp_path, monkeypatch):
    # Muxers other than FFmpeg's (mkvmerge) write no per-stream DURATION tags.
    monkeypatch.setattr("mm_hf.data.video.containers._tagged_duration", lambda tag: None)
    data = open(write_synthetic_video(tmp_path / "a.mkv", ramp(12), FPS), "rb").read()
    assert len(load_video_frames(tmp_path / "a.mkv", 4)) == 4
    with pytest.raises(BadSampleError, match="the container declares 1.50 s"):
        load_video_frames({"bytes": data[: len(data) // 2], "path": "cut.mkv"}, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        load_video_frames("x.mp4", 0)
    with pytest.raises(ValueError, match="sampling_rate"):
        load_video_audio("x.mp4", 0)
    with pytest.raises(BadSampleError, match="None"):
        load_video_frames(None, 4)
    with pytest.raises(TypeError):
        load_video_frames(3, 4)


def test_check_videos_raises_or_drops_exactly_the_bad_ones(tmp_path):
    good = [write_synthetic_video(tmp_path / f"good{i}.mp4", ramp(4 + i), FPS) for i in range(3)]
    bad = sorted(bad_files(tmp_path).values())
    paths = [good[0], bad[0], good[1], *bad[1:], good[2]]
    dataset = datasets.Dataset.from_dict({"video": paths, "label": list(range(len(paths)))})

    with pytest.raises(BadSampleError, match=f"{len(bad)} of {len(paths)} videos") as caught:
        check_videos(dataset, "video", skip_bad=False)
    assert bad[0] in str(caught.value)

    for num_proc in (None, 2):
        kept, dropped = check_videos(dataset, "video", skip_bad=True, num_proc=num_proc)
        assert sorted(source for source, _ in dropped) == bad
        assert kept["video"] == good and kept.column_names == dataset.column_names


def test_check_videos_decodes_audio_on_request_and_accepts_a_video_feature(tmp_path):
    with_audio = write_synthetic_video(tmp_path / "a.mp4", ramp(8), FPS, audio=sine(1.0))
    broken = bytearray(open(with_audio, "rb").read())
    with av.open(with_audio) as container:  # garble a few audio packets: the video stays intact
        for packet in [p for p in container.demux(audio=0) if p.size][5:9]:
            broken[packet.pos : packet.pos + packet.size] = np.random.default_rng(0).bytes(packet.size)
    broken_path = tmp_path / "broken_audio.mp4"
    broken_path.write_bytes(bytes(broken))
    paths = [with_audio, str(broken_path), write_synthetic_video(tmp_path / "b.mp4", ramp(8), FPS)]
    dataset = datasets.Dataset.from_dict({"video": paths}).cast_column("video", datasets.Video())
    kept, dropped = check_videos(dataset, "video", skip_bad=True)
    assert len(kept) == 3 and not dropped
    kept, dropped = check_videos(dataset, "video", skip_bad=True, sampling_rate=RATE)
    assert [source for source, _ in dropped] == [str(broken_path)]


def test_moving_shapes_differ_only_in_motion():
    clips = [make_moving_shape_clip(label, 9, 32, random.Random(0)) for label in range(len(MOVING_SHAPE_CLASSES))]
    assert all(clip.shape == (9, 32, 32, 3) and clip.dtype == np.uint8 for clip in clips)
    assert all(np.array_equal(clip[4], clips[0][4]) for clip in clips)  # the middle frame is the same
    bright = [clip.min(axis=-1) > 100 for clip in clips]  # where the square is, (T, H, W)
    right, left, down, up = bright
    assert np.array_equal(right[::-1], left) and np.array_equal(down[::-1], up)  # reversed time swaps them
    xs = [np.nonzero(frame)[1].mean() for frame in right]
    ys = [np.nonzero(frame)[0].mean() for frame in down]
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) > 0)
    assert not np.array_equal(clips[0], make_moving_shape_clip(0, 9, 32, random.Random(1)))
    with pytest.raises(ValueError, match="label"):
        make_moving_shape_clip(len(MOVING_SHAPE_CLASSES), 9, 32)


def test_moving_shape_survives_encoding(tmp_path):
    clip = make_moving_shape_clip(MOVING_SHAPE_CLASSES.index("left"), 8, 32, random.Random(0))
    images = load_video_frames(write_synthetic_video(tmp_path / "left.mp4", clip, FPS), 8)
    xs = [np.nonzero(np.asarray(im).min(axis=-1) > 100)[1].mean() for im in images]
    assert np.all(np.diff(xs) < 0)


def test_importing_mm_hf_does_not_import_av():
    code = "import sys, mm_hf.data.video; assert 'av' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
