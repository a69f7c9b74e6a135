"""Corruptions: deterministic per (seed, sample), change the input, grow with severity; the dataset wrapper."""

import io
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Dataset
from PIL import Image
from transformers import ViTImageProcessor, Wav2Vec2FeatureExtractor

from mm_hf.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    CorruptColumn,
    corruption_rng,
    select_corruptions,
)
from mm_hf.data.audio import AudioTransform, load_audio
from mm_hf.data.transforms import build_image_transform

SR = 16000
# Corruptions with no random draw: the seed cannot change them.
_SEEDLESS = {"gaussian_blur", "defocus_blur", "jpeg_compression", "pixelate", "brightness", "contrast", "gain"}
_SEEDLESS |= {"clipping", "vorbis_compression"}


def _textured_image(size=96, seed=0) -> Image.Image:
    """Smooth colour gradients, flat squares with sharp edges and fine grain: every corruption has something to hit."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    x = np.stack([0.5 + 0.3 * np.sin(6 * xx + 2 * yy + shift) for shift in range(3)], axis=-1)
    for _ in range(12):
        top, left = rng.integers(0, size - 16, size=2)
        side = rng.integers(6, 20)
        x[top : top + side, left : left + side] = rng.uniform(size=3)
    x += rng.normal(0, 0.03, x.shape)
    return Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8))


def _psnr(clean, corrupted) -> float:
    a, b = np.asarray(clean, dtype=np.float64), np.asarray(corrupted, dtype=np.float64)
    return float(10 * np.log10(255**2 / np.mean((a - b) ** 2)))


def _chirp(seconds=1.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    rng = np.random.default_rng(0)
    return (0.3 * np.sin(2 * np.pi * 300 * t * (1 + t)) * np.exp(-t) + 0.02 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def _snr_db(clean, corrupted) -> float:
    clean = clean.astype(np.float64)
    return float(10 * np.log10(np.mean(clean**2) / np.mean((corrupted.astype(np.float64) - clean) ** 2)))


@pytest.mark.parametrize("name", sorted(CORRUPTIONS["image"]))
def test_image_corruption_is_deterministic_changes_the_image_and_grows_with_severity(name):
    corrupt, clean = CORRUPTIONS["image"][name], _textured_image()
    first = corrupt(clean, 3, corruption_rng(0, 7, name))
    assert first.mode == "RGB" and first.size == clean.size
    assert np.array_equal(np.asarray(first), np.asarray(corrupt(clean, 3, corruption_rng(0, 7, name))))
    if name not in _SEEDLESS:
        assert not np.array_equal(np.asarray(first), np.asarray(corrupt(clean, 3, corruption_rng(1, 7, name))))
    # PSNR to the clean image falls strictly from severity 1 to 5 (the same draws at every severity).
    psnr = [_psnr(clean, corrupt(clean, severity, corruption_rng(0, 7, name))) for severity in SEVERITIES]
    assert all(np.diff(psnr) < 0), psnr
    assert psnr[0] < 45, psnr  # even severity 1 changes the image visibly (45 dB ~ 1/255 rms)


def test_spatial_corruptions_scale_with_image_size():
    # The same blur at twice the resolution, then downsampled, is close to the blur at the small size: radii are
    # relative to ImageNet-C's 224 px, not absolute pixels.
    small, large = _textured_image(112), _textured_image(112).resize((224, 224), Image.Resampling.BICUBIC)
    for name in ("gaussian_blur", "defocus_blur"):
        blurred_small = CORRUPTIONS["image"][name](small, 4, None)
        blurred_large = CORRUPTIONS["image"][name](large, 4, None).resize((112, 112), Image.Resampling.BOX)
        assert _psnr(blurred_small, blurred_large) > 30, name
        assert _psnr(small, blurred_small) < 28, name


def test_blur_and_brightness_match_imagenet_c_formulas():
    # ImageNet-C's own code (make_imagenet_c.py) with scikit-image, which is only a bench extra here.
    skimage = pytest.importorskip("skimage")
    from skimage.filters import gaussian

    image = _textured_image(224)  # ImageNet-C's size: no scaling of the blur radius
    x = np.asarray(image) / 255.0
    for severity, sigma in zip(SEVERITIES, (1, 2, 3, 4, 6), strict=True):
        reference = np.clip(gaussian(x, sigma=sigma, channel_axis=-1), 0, 1) * 255
        ours = np.asarray(CORRUPTIONS["image"]["gaussian_blur"](image, severity, None), dtype=np.float64)
        assert np.abs(reference - ours).max() <= 0.51  # ours is rounded to 8 bits, the reference is not
    for severity, shift in zip(SEVERITIES, (0.1, 0.2, 0.3, 0.4, 0.5), strict=True):
        hsv = skimage.color.rgb2hsv(x)
        hsv[:, :, 2] = np.clip(hsv[:, :, 2] + shift, 0, 1)
        reference = np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255
        ours = np.asarray(CORRUPTIONS["image"]["brightness"](image, severity, None), dtype=np.float64)
        assert np.abs(reference - ours).max() <= 0.51


def test_audio_noise_hits_the_specified_snr_and_is_deterministic():
    clean = _chirp()
    for severity, snr in zip(SEVERITIES, (20, 15, 10, 5, 0), strict=True):
        noisy = CORRUPTIONS["audio"]["noise"](clean, severity, corruption_rng(0, 3, "noise"))
        assert noisy.dtype == np.float32 and noisy.shape == clean.shape
        assert _snr_db(clean, noisy) == pytest.approx(snr, abs=0.01)
    again = CORRUPTIONS["audio"]["noise"](clean, 2, corruption_rng(0, 3, "noise"))
    assert np.array_equal(again, CORRUPTIONS["audio"]["noise"](clean, 2, corruption_rng(0, 3, "noise")))
    assert not np.array_equal(again, CORRUPTIONS["audio"]["noise"](clean, 2, corruption_rng(0, 4, "noise")))
    silence = np.zeros(100, dtype=np.float32)
    assert not CORRUPTIONS["audio"]["noise"](silence, 5, corruption_rng(0, 0, "noise")).any()


def test_audio_gain_clipping_and_codec_grow_with_severity():
    clean = _chirp()
    gains = [
        20 * np.log10(np.abs(CORRUPTIONS["audio"]["gain"](clean, s, None)).max() / np.abs(clean).max())
        for s in SEVERITIES
    ]
    assert gains == pytest.approx([-6, -12, -18, -24, -30], abs=1e-3)
    clipped = [CORRUPTIONS["audio"]["clipping"](clean, s, None) for s in SEVERITIES]
    shares = [np.mean(np.abs(c) >= np.abs(c).max() - 1e-7) for c in clipped]
    assert shares == pytest.approx([0.01, 0.02, 0.05, 0.1, 0.2], abs=0.002)
    assert all(np.diff([_snr_db(clean, c) for c in clipped]) < 0)
    coded = [CORRUPTIONS["audio"]["vorbis_compression"](clean, s, None, sampling_rate=SR) for s in SEVERITIES]
    assert all(c.shape == clean.shape for c in coded)
    snr = [_snr_db(clean, c) for c in coded]
    assert all(np.diff(snr) < 0) and snr[0] < 40, snr


def test_audio_speed_resamples_by_the_severity_factor():
    clean = _chirp()
    ratios = []
    for severity in SEVERITIES:
        fast = CORRUPTIONS["audio"]["speed"](clean, severity, corruption_rng(0, 1, "speed"))
        ratios.append(len(fast) / len(clean))
        assert np.array_equal(fast, CORRUPTIONS["audio"]["speed"](clean, severity, corruption_rng(0, 1, "speed")))
    factors = np.array([1.05, 1.1, 1.2, 1.3, 1.5])
    # One direction per sample (common draw): all faster (shorter) or all slower (longer), by the factor.
    assert np.allclose(ratios, 1 / factors, atol=2e-3) or np.allclose(ratios, factors, atol=2e-3), ratios
    # A 440 Hz tone played 1.5x faster or slower is a 660 Hz or 293 Hz tone: a real resampler, not a cut.
    tone = np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32)
    peaks = set()
    for key in range(8):
        shifted = CORRUPTIONS["audio"]["speed"](tone, 5, corruption_rng(0, key, "speed"))
        peaks.add(round(np.abs(np.fft.rfft(shifted)).argmax() * SR / len(shifted)))
    assert peaks == {660, 293}


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


@pytest.mark.parametrize("name", sorted(CORRUPTIONS["text"]))
def test_text_corruption_is_deterministic_and_grows_with_severity(name):
    text = " ".join(
        ["The quick brown fox jumps over the lazy dog while the cat sleeps quietly on the warm red carpet."] * 4
    )
    corrupt = CORRUPTIONS["text"][name]
    assert corrupt(text, 3, corruption_rng(0, 5, name)) == corrupt(text, 3, corruption_rng(0, 5, name))
    assert corrupt(text, 3, corruption_rng(0, 5, name)) != corrupt(text, 3, corruption_rng(1, 5, name))
    distances = [_edit_distance(text, corrupt(text, s, corruption_rng(0, 5, name))) for s in SEVERITIES]
    assert distances[0] > 0 and all(np.diff(distances) >= 0) and distances[-1] > 3 * distances[0], distances
    if name == "word_dropout":
        kept = corrupt(text, 5, corruption_rng(0, 5, name)).split()
        assert 0.4 < len(kept) / len(text.split()) < 0.8  # 40 % dropped on average
        assert corrupt("hello", 5, corruption_rng(0, 0, name)) == "hello"  # never an empty text


def test_select_corruptions_and_bad_names():
    assert select_corruptions("all", "audio") == list(CORRUPTIONS["audio"])
    assert select_corruptions("fog, pixelate", "image") == ["fog", "pixelate"]
    with pytest.raises(ValueError, match=r"Unknown image corruptions \['snow'\].*'contrast'"):
        select_corruptions("fog,snow", "image")
    assert select_corruptions("all", "video") == list(CORRUPTIONS["image"])  # on every frame
    with pytest.raises(
        ValueError, match=r"No corruptions for modality 'tabular'.*\['audio', 'image', 'text', 'video'\]"
    ):
        select_corruptions("all", "tabular")
    with pytest.raises(ValueError, match="severity must be one of"):
        CorruptColumn(lambda b: b, modality="image", corruption="fog", severity=6)
    with pytest.raises(ValueError, match="need sampling_rate"):
        CorruptColumn(lambda b: b, modality="audio", corruption="noise", severity=1)


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_corrupt_column_feeds_the_image_transform_and_is_deterministic_per_index():
    images = [_textured_image(48, seed=i) for i in range(4)]
    dataset = Dataset.from_dict(
        {"image": [_png(im) for im in images], "labels": [0, 1, 0, 1], "sample_index": range(4)}
    )
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    transform = build_image_transform(processor, train=False)
    corrupted = CorruptColumn(
        transform, modality="image", corruption="gaussian_noise", severity=5, index_column="sample_index"
    )
    clean_batch = dataset.remove_columns("sample_index").with_transform(transform)[:4]
    batch = dataset.with_transform(corrupted)[:4]
    assert set(batch) == {"pixel_values", "labels"}  # the index column does not reach the model
    assert batch["pixel_values"][0].shape == clean_batch["pixel_values"][0].shape
    assert not torch.equal(batch["pixel_values"][0], clean_batch["pixel_values"][0])
    # The same sample gives the same corruption alone, in another batch order, and after pickling (DataLoader workers).
    reordered = dataset.select([2, 0]).with_transform(pickle.loads(pickle.dumps(corrupted)))[:2]
    assert torch.equal(reordered["pixel_values"][0], batch["pixel_values"][2])
    assert torch.equal(reordered["pixel_values"][1], batch["pixel_values"][0])
    loader = torch.utils.data.DataLoader(dataset.with_transform(corrupted), batch_size=2, num_workers=2)
    assert torch.equal(torch.cat([b["pixel_values"] for b in loader]), torch.stack(batch["pixel_values"]))
    # Without an index column the sample's content picks the draws: same image, same result in any position.
    by_content = CorruptColumn(transform, modality="image", corruption="gaussian_noise", severity=5)
    twice = Dataset.from_dict({"image": [_png(images[1]), _png(images[3]), _png(images[1])]}).with_transform(
        by_content
    )[:3]
    assert torch.equal(twice["pixel_values"][0], twice["pixel_values"][2])
    assert not torch.equal(twice["pixel_values"][0], twice["pixel_values"][1])


def test_corrupt_column_audio_and_missing_values():
    buffer = io.BytesIO()
    sf.write(buffer, _chirp(0.5), SR, format="WAV")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=False, return_attention_mask=True)
    transform = AudioTransform(extractor)
    corrupted = CorruptColumn(transform, modality="audio", corruption="noise", severity=5, sampling_rate=SR)
    record = {"bytes": buffer.getvalue(), "path": "clip.wav"}
    clean = transform({"audio": [record], "labels": [1]})
    out = corrupted({"audio": [record], "labels": [1]})
    assert out["labels"] == [1]
    decoded = load_audio(record, SR)
    # The extractor (no normalisation) passes the waveform through: the model sees the clip at 0 dB SNR.
    assert _snr_db(decoded, out["input_values"][0].numpy()) == pytest.approx(0, abs=0.01)
    assert torch.equal(clean["input_values"][0], torch.from_numpy(decoded))
    # A missing modality (None) stays missing for the fusion transform to mask.
    seen = {}
    text_wrapper = CorruptColumn(
        lambda batch: seen.update(batch) or batch, modality="text", corruption="typos", severity=5
    )
    text_wrapper({"text": [None, "a perfectly ordinary sentence with words"], "labels": [0, 1]})
    assert seen["text"][0] is None and seen["text"][1] != "a perfectly ordinary sentence with words"
