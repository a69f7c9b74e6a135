"""Audio decoding, resampling, validation, cropping and augmentation, on files written into tmp_path."""

import random

import datasets
import numpy as np
import pytest
import soundfile as sf

from mm_hf.data.audio import augment, check_audio, crop_or_pad, load_audio, mix_down
from mm_hf.data.images import BadSampleError

RATE = 16000


def sine(seconds=1.0, rate=RATE, freq=440.0, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, samples, rate=RATE, **kwargs):
    sf.write(path, samples, rate, **kwargs)
    return str(path)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_resampling_keeps_frequency_amplitude_and_duration(tmp_path):
    original = sine(rate=44100)
    path = write(tmp_path / "sine.wav", original, 44100, subtype="FLOAT")
    out = load_audio(path, RATE)
    assert out.dtype == np.float32 and out.shape == (RATE,)
    inner = out[800:-800]  # leave out the resampler's edge transients
    spectrum = np.abs(np.fft.rfft(inner * np.hanning(len(inner)), n=16 * len(inner)))
    peak_hz = np.argmax(spectrum) * RATE / (16 * len(inner))
    assert abs(peak_hz - 440.0) < 2.0
    assert rms(inner) == pytest.approx(rms(original), rel=0.01)


@pytest.mark.parametrize(
    ("name", "subtype", "tolerance"),
    [
        ("u8.wav", "PCM_U8", 1e-2),
        ("s16.wav", "PCM_16", 1e-4),
        ("s24.wav", "PCM_24", 1e-6),
        ("s32.wav", "PCM_32", 1e-6),
        ("float.wav", "FLOAT", 0.0),
        ("clip.flac", "PCM_16", 1e-4),
        ("clip.ogg", "VORBIS", None),
    ],
)
def test_formats_and_bit_depths_decode(tmp_path, name, subtype, tolerance):
    original = sine()
    out = load_audio(write(tmp_path / name, original, subtype=subtype), RATE)
    assert out.dtype == np.float32 and out.shape == original.shape
    if tolerance is None:  # lossy: compare the signal, not the samples
        assert rms(out - original) < 0.02 * rms(original)
    else:
        np.testing.assert_allclose(out, original, atol=tolerance)


def test_sources_path_bytes_and_records_agree(tmp_path):
    path = write(tmp_path / "a.flac", sine())
    data = open(path, "rb").read()
    expected = load_audio(path, RATE)
    np.testing.assert_array_equal(load_audio(data, RATE), expected)
    np.testing.assert_array_equal(load_audio({"bytes": data, "path": "a.flac"}, RATE), expected)
    np.testing.assert_array_equal(load_audio({"bytes": None, "path": path}, RATE), expected)
    np.testing.assert_array_equal(load_audio({"array": sine(), "sampling_rate": RATE}, RATE), sine())


def test_stereo_mixes_down_to_mono(tmp_path):
    left = sine()
    opposite = write(tmp_path / "opposite.wav", np.stack([left, -left], axis=1), subtype="FLOAT")
    assert np.abs(load_audio(opposite, RATE)).max() < 1e-6
    left_only = write(tmp_path / "left.wav", np.stack([left, np.zeros_like(left)], axis=1), subtype="FLOAT")
    np.testing.assert_allclose(load_audio(left_only, RATE), left / 2, atol=1e-7)
    assert load_audio(left_only, RATE, mono=False).shape == (2, RATE)


def bad_files(tmp_path):
    """Name -> path of every kind of unusable file."""
    wav = open(write(tmp_path / "good.wav", sine(), subtype="PCM_16"), "rb").read()
    files = {
        "cut_in_data.wav": wav[: len(wav) // 2],
        "cut_in_header.wav": wav[:30],
        "text.wav": b"this is not audio, just some text\n" * 20,
        "empty.wav": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    nan = sine()
    nan[100] = np.nan
    write(tmp_path / "nan.wav", nan, subtype="FLOAT")
    write(tmp_path / "zero_length.wav", np.zeros(0, np.float32), subtype="PCM_16")
    names = [*files, "nan.wav", "zero_length.wav"]
    return {name: str(tmp_path / name) for name in names}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("cut_in_data.wav", "truncated"),
        ("cut_in_header.wav", "corrupt or truncated"),
        ("text.wav", "not audio"),
        ("empty.wav", "empty file"),
        ("nan.wav", "NaN/inf"),
        ("zero_length.wav", "zero-length"),
        ("missing.wav", "file not found"),
    ],
)
def test_bad_files_raise_naming_the_file(tmp_path, name, reason):
    path = bad_files(tmp_path).get(name, str(tmp_path / name))
    with pytest.raises(BadSampleError, match=reason) as caught:
        load_audio(path, RATE)
    assert caught.value.source == path and path in str(caught.value)


def test_truncated_flac_and_ogg_raise(tmp_path):
    for name, subtype in [("a.flac", "PCM_16"), ("a.ogg", "VORBIS")]:
        data = open(write(tmp_path / name, sine(), subtype=subtype), "rb").read()
        with pytest.raises(BadSampleError, match=name):
            load_audio({"bytes": data[: len(data) // 2], "path": name}, RATE)


def test_silence_is_rejected_only_on_request(tmp_path):
    path = write(tmp_path / "silent.wav", np.zeros(RATE, np.float32))
    assert not load_audio(path, RATE).any()
    with pytest.raises(BadSampleError, match="silent") as caught:
        load_audio(path, RATE, reject_silent=True)
    assert caught.value.source == path


def test_check_audio_raises_or_drops_exactly_the_bad_ones(tmp_path):
    good = [write(tmp_path / f"good{i}.wav", sine(freq=200.0 * (i + 1))) for i in range(3)]
    silent = write(tmp_path / "silent.wav", np.zeros(RATE, np.float32))
    bad = sorted(bad_files(tmp_path).values())
    paths = [good[0], bad[0], good[1], silent, *bad[1:], good[2]]
    dataset = datasets.Dataset.from_dict({"audio": paths, "label": list(range(len(paths)))})

    with pytest.raises(BadSampleError, match=f"{len(bad)} of {len(paths)} audio clips") as caught:
        check_audio(dataset, "audio", sampling_rate=8000, skip_bad=False)
    assert bad[0] in str(caught.value)

    kept, dropped = check_audio(dataset, "audio", sampling_rate=8000, skip_bad=True)
    assert sorted(source for source, _ in dropped) == bad
    assert kept["audio"] == [good[0], good[1], silent, good[2]]
    assert kept.column_names == dataset.column_names

    kept, dropped = check_audio(dataset, "audio", sampling_rate=8000, skip_bad=True, reject_silent=True)
    assert kept["audio"] == good and len(dropped) == len(bad) + 1


def test_check_audio_accepts_an_audio_feature(tmp_path):
    paths = [write(tmp_path / "a.wav", sine()), write(tmp_path / "b.wav", np.zeros(0, np.float32))]
    dataset = datasets.Dataset.from_dict({"audio": paths}).cast_column("audio", datasets.Audio(decode=False))
    kept, dropped = check_audio(dataset, "audio", sampling_rate=RATE, skip_bad=True)
    assert len(kept) == 1 and dropped[0][0] == paths[1]


def test_crop_or_pad():
    x = np.arange(100, dtype=np.float32)
    np.testing.assert_array_equal(crop_or_pad(x, 30, train=False), x[:30])
    assert crop_or_pad(x, 300, train=True) is x  # short clips are left for the feature extractor to pad
    crops = [crop_or_pad(x, 30, train=True, rng=random.Random(seed)) for seed in range(20)]
    assert all(len(c) == 30 and np.array_equal(c, x[int(c[0]) : int(c[0]) + 30]) for c in crops)
    assert len({int(c[0]) for c in crops}) > 5
    np.testing.assert_array_equal(crop_or_pad(x, 30, train=True, rng=random.Random(3)), crops[3])


def test_augment_keeps_length_and_hits_the_requested_snr():
    x = sine()
    out = augment(x, random.Random(0))
    assert out.dtype == np.float32 and out.shape == x.shape and np.isfinite(out).all()
    assert not np.array_equal(out, x)
    np.testing.assert_array_equal(augment(x, random.Random(0)), out)
    for snr in (0.0, 10.0, 20.0, 40.0):
        noisy = augment(x, random.Random(1), gain_db=(0.0, 0.0), snr_db=(snr, snr), max_shift=0.0)
        realised = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((noisy - x).astype(np.float64) ** 2))
        assert realised == pytest.approx(snr, abs=1.0)
    silent = np.zeros(RATE, np.float32)
    assert not augment(silent, random.Random(0)).any()


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_mix_down_gives_numpys_channel_mean_exactly(tmp_path, channels):
    samples = np.random.default_rng(channels).uniform(-1, 1, size=(4001, channels)).astype(np.float32)
    mixed = mix_down(samples)
    assert mixed.dtype == np.float32 and mixed.shape == (4001,)
    assert np.array_equal(mixed, samples.mean(axis=1, dtype=np.float32))
    sf.write(tmp_path / "clip.wav", samples, 16000, subtype="FLOAT")
    assert np.array_equal(load_audio(tmp_path / "clip.wav", 16000), mixed)
