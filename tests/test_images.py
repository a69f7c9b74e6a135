"""load_image: every PIL mode to sensible RGB, every kind of bad file to a BadSampleError naming it;
check_images: validating a whole split up front."""

from __future__ import annotations

import io
import pickle

import datasets
import numpy as np
import pytest
from PIL import Image, ImageFile

from mm_hf.data.images import BadSampleError, check_images, load_image

WHITE = (255, 255, 255)


def _pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, ...]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


def _noise(size=(64, 64), seed=0) -> Image.Image:
    """Noise compresses badly, so cutting a file in half really removes pixel data."""
    values = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(values)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 255] * 255)  # index 0 red, the rest blue
    if transparent:
        image.info["transparency"] = 0
    return image


def _gradient(mode: str, low: float, high: float) -> Image.Image:
    values = np.linspace(low, high, 16).reshape(4, 4)
    dtype = {"I;16": np.uint16, "I;16B": ">u2", "I": np.int32, "F": np.float32}[mode]
    return Image.frombytes(mode, (4, 4), values.astype(dtype).tobytes())


# (case id, image, expected RGB of the top-left pixel, tolerance per channel)
MODE_CASES = [
    ("RGB", Image.new("RGB", (4, 4), (10, 20, 30)), (10, 20, 30), 0),
    ("L", Image.new("L", (4, 4), 100), (100, 100, 100), 0),
    ("1-white", Image.new("1", (4, 4), 1), WHITE, 0),
    ("1-black", Image.new("1", (4, 4), 0), (0, 0, 0), 0),
    ("LA-transparent", Image.new("LA", (4, 4), (0, 0)), WHITE, 0),
    ("LA-opaque", Image.new("LA", (4, 4), (50, 255)), (50, 50, 50), 0),
    ("P", _palette_image(transparent=False), (255, 0, 0), 0),
    ("P-transparency", _palette_image(transparent=True), WHITE, 0),
    ("RGBA-transparent-red", Image.new("RGBA", (4, 4), (255, 0, 0, 0)), WHITE, 0),
    ("RGBA-half-red", Image.new("RGBA", (4, 4), (255, 0, 0, 128)), (255, 127, 127), 1),
    ("RGBA-opaque", Image.new("RGBA", (4, 4), (1, 2, 3, 255)), (1, 2, 3), 0),
    ("CMYK-cyan", Image.new("CMYK", (4, 4), (255, 0, 0, 0)), (0, 255, 255), 0),
    ("CMYK-black", Image.new("CMYK", (4, 4), (0, 0, 0, 255)), (0, 0, 0), 0),
    ("YCbCr-red", Image.new("YCbCr", (4, 4), (76, 85, 255)), (255, 0, 0), 2),
    ("HSV-red", Image.new("HSV", (4, 4), (0, 255, 255)), (255, 0, 0), 0),
    ("LAB-white", Image.new("LAB", (4, 4), (255, 128, 128)), WHITE, 2),
]


@pytest.mark.parametrize(
    ("image", "expected", "tolerance"),
    [c[1:] for c in MODE_CASES],
    ids=[c[0] for c in MODE_CASES],
)
def test_modes_convert_to_rgb(image, expected, tolerance):
    rgb = load_image(image)
    assert rgb.size == image.size
    np.testing.assert_allclose(_pixel(rgb), expected, atol=tolerance)


@pytest.mark.parametrize(
    ("mode", "low", "high"),
    [
        ("I;16", 0, 65535),
        ("I;16B", 0, 65535),
        ("I;16", 1000, 4000),
        ("I", -1000, 100000),
        ("F", 0.0, 1.0),
    ],
)
def test_high_bit_depth_is_stretched_not_clipped(mode, low, high):
    rgb = np.asarray(load_image(_gradient(mode, low, high)))
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert (np.diff(rgb[..., 0].ravel().astype(int)) >= 0).all()  # order preserved
    assert (rgb[..., 0] == rgb[..., 2]).all()  # still grey


def test_float_image_with_nan_does_not_crash():
    values = np.array([[0.0, np.nan], [1.0, np.inf]], dtype=np.float32)
    rgb = np.asarray(load_image(Image.fromarray(values)))
    assert rgb[0, 0, 0] == 0 and rgb[1, 0, 0] == 255 and rgb[0, 1, 0] == 0


def test_sixteen_bit_png_file(tmp_path):
    path = tmp_path / "depth.png"
    _gradient("I;16", 0, 65535).save(path)
    rgb = np.asarray(load_image(path))
    assert rgb.min() == 0 and rgb.max() == 255


def test_palette_png_with_transparency_file(tmp_path):
    path = tmp_path / "icon.png"
    _palette_image(transparent=True).save(path, transparency=0)
    assert _pixel(load_image(path)) == WHITE


def test_rgb_png_with_transparent_colour(tmp_path):
    path = tmp_path / "trns.png"
    Image.new("RGB", (4, 4), (0, 0, 0)).save(path, transparency=(0, 0, 0))
    assert _pixel(load_image(path)) == WHITE


def test_cmyk_jpeg_file(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(path, quality=95)
    np.testing.assert_allclose(_pixel(load_image(path), (8, 8)), (0, 255, 255), atol=8)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (32, 16), (255, 0, 0))
    image.paste((0, 0, 255), (16, 0, 32, 16))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=95)
    upright = load_image(path)
    assert upright.size == (16, 32)
    top, bottom = _pixel(upright, (8, 4)), _pixel(upright, (8, 28))
    assert top[0] > 200 and top[2] < 50  # red on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_sources_path_bytes_and_records(tmp_path):
    data = _encode(Image.new("RGB", (5, 3), (1, 2, 3)), "PNG")
    path = _write(tmp_path / "a.png", data)
    for source in (
        path,
        str(path),
        data,
        {"bytes": data, "path": "elsewhere/missing.png"},
        {"bytes": None, "path": str(path)},
    ):
        image = load_image(source)
        assert image.size == (5, 3) and _pixel(image) == (1, 2, 3)


def test_pil_source_is_left_untouched():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    load_image(image)
    assert image.mode == "RGBA" and image.getpixel((0, 0)) == (255, 0, 0, 0)


def test_result_survives_closing_the_file(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    image = load_image(path)
    assert np.asarray(image).mean() == 9


def _assert_bad(source, *expected_in_message):
    with pytest.raises(BadSampleError) as caught:
        load_image(source)
    for text in expected_in_message:
        assert text in str(caught.value)
    return caught.value


def test_missing_file(tmp_path):
    error = _assert_bad(tmp_path / "nope.jpg", "nope.jpg", "not found")
    assert error.source == str(tmp_path / "nope.jpg")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _assert_bad(path, "notes.png", "not an image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _assert_bad(path, "empty.jpg")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("lenient_global", [False, True])
def test_truncated_files_raise(tmp_path, monkeypatch, fmt, lenient_global):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient_global)
    data = _encode(_noise(), fmt)
    path = _write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2])
    _assert_bad(path, f"cut.{fmt.lower()}", "truncated")
    # The process-wide setting is restored for everyone else.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is lenient_global


def test_truncated_record_is_named_by_its_path():
    data = _encode(_noise(), "PNG")
    _assert_bad({"bytes": data[:200], "path": "shard-3/cat.png"}, "shard-3/cat.png")


def test_zero_size_image():
    _assert_bad(Image.new("RGB", (0, 0)), "zero-size")


def test_decompression_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    warned = _write(tmp_path / "warn.png", _encode(Image.new("RGB", (12, 12)), "PNG"))  # PIL only warns
    refused = _write(tmp_path / "bomb.png", _encode(Image.new("RGB", (20, 20)), "PNG"))  # PIL raises
    with pytest.warns(Image.DecompressionBombWarning):
        _assert_bad(warned, "warn.png", "decompression-bomb")
    _assert_bad(refused, "bomb.png", "decompression-bomb")


def test_none_and_empty_record():
    _assert_bad(None, "None")
    _assert_bad({"bytes": None, "path": None}, "neither")


def test_unsupported_type_is_a_type_error():
    with pytest.raises(TypeError):
        load_image(42)


def test_bad_sample_error_pickles():
    error = pickle.loads(pickle.dumps(BadSampleError("a.png", "truncated")))
    assert (error.source, error.reason) == ("a.png", "truncated")
    assert str(error) == "Cannot use a.png: truncated"


# ----------------------------------------------------------------------------------------- check_images


@pytest.fixture
def mixed_files(tmp_path):
    """Two good images and three bad files, in dataset order; returns (paths, bad names)."""
    good_a = tmp_path / "good_a.png"
    Image.new("RGB", (4, 4), "red").save(good_a)
    good_b = tmp_path / "good_b.jpg"
    Image.new("L", (4, 4), 7).save(good_b)
    data = _encode(_noise(), "PNG")
    truncated = _write(tmp_path / "truncated.png", data[: len(data) // 2])
    text = tmp_path / "text.png"
    text.write_text("hello")
    missing = tmp_path / "missing.png"
    paths = [str(good_a), str(truncated), str(good_b), str(text), str(missing)]
    return paths, ["truncated.png", "text.png", "missing.png"]


def test_check_images_raises_listing_bad_files(mixed_files):
    paths, bad_names = mixed_files
    dataset = datasets.Dataset.from_dict({"image": paths, "labels": list(range(5))})
    with pytest.raises(BadSampleError) as caught:
        check_images(dataset, "image", skip_bad=False, split_name="validation")
    message = str(caught.value)
    assert "3 of 5" in message and "'validation'" in message and "--skip_bad_samples" in message
    for name in bad_names:
        assert name in message
    assert "good_a" not in message
    assert caught.value.source.endswith("truncated.png")


@pytest.mark.parametrize("num_proc", [None, 2])
def test_check_images_skip_bad_drops_exactly_the_bad(mixed_files, num_proc):
    paths, bad_names = mixed_files
    dataset = datasets.Dataset.from_dict({"image": paths, "labels": list(range(5))})
    kept, bad = check_images(dataset, "image", skip_bad=True, num_proc=num_proc)
    assert kept["labels"] == [0, 2]
    assert kept["image"] == [
        paths[0],
        paths[2],
    ]  # still paths: nothing decoded was stored
    assert kept.column_names == dataset.column_names
    assert [source.rsplit("/", 1)[-1] for source, _ in bad] == bad_names
    assert all(reason for _, reason in bad)


def test_check_images_clean_dataset_is_returned_as_is(mixed_files):
    paths, _ = mixed_files
    dataset = datasets.Dataset.from_dict({"image": [paths[0], paths[2]]})
    kept, bad = check_images(dataset, "image", skip_bad=False)
    assert kept is dataset and bad == []


def test_check_images_on_image_records(mixed_files):
    paths, _ = mixed_files
    good = _encode(Image.new("RGB", (4, 4)), "PNG")
    records = [
        {"bytes": good, "path": None},
        {"bytes": b"garbage", "path": None},
        {"bytes": None, "path": paths[0]},
    ]
    dataset = datasets.Dataset.from_dict({"image": records}).cast_column("image", datasets.Image(decode=False))
    kept, bad = check_images(dataset, "image", skip_bad=True, split_name="test")
    assert len(kept) == 2
    assert [source for source, _ in bad] == ["row 1 of test"]


def test_check_images_on_decoding_image_column(mixed_files):
    paths, _ = mixed_files
    dataset = datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())
    kept, bad = check_images(dataset, "image", skip_bad=True)
    assert len(kept) == 2 and len(bad) == 3
    assert kept.features["image"] == datasets.Image()  # the caller's decoding feature is kept
    assert isinstance(kept[0]["image"], Image.Image)


def test_check_images_every_image_bad(mixed_files):
    paths, _ = mixed_files
    dataset = datasets.Dataset.from_dict({"image": paths[3:]})
    with pytest.raises(BadSampleError, match="Every image is bad"):
        check_images(dataset, "image", skip_bad=True)


def test_check_images_unknown_column():
    with pytest.raises(KeyError, match="img"):
        check_images(datasets.Dataset.from_dict({"image": ["a.png"]}), "img", skip_bad=True)
