"""Augmentation driven by real (tiny) transformers image processors, offline and on CPU."""

from __future__ import annotations

import math
import pickle
import random

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import (
    CLIPImageProcessor,
    SiglipImageProcessor,
    ViTImageProcessor,
    ViTImageProcessorPil,
    default_data_collator,
)

from mm_hf.data.images import load_image, load_image_reduced
from mm_hf.data.transforms import (
    ProcessorGeometry,
    RandomHorizontalFlip,
    RandomResizedCrop,
    build_image_transform,
    target_size,
)


def _clip():  # shortest_edge resize then a non-square center crop, to catch height/width swaps
    return CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 28, "width": 32})


def _vit():  # plain height/width resize, no crop
    return ViTImageProcessor(size={"height": 24, "width": 32})


def _siglip():
    return SiglipImageProcessor(size={"height": 16, "width": 16})


PROCESSORS = {
    "clip": (_clip, (28, 32)),
    "vit": (_vit, (24, 32)),
    "siglip": (_siglip, (16, 16)),
}


@pytest.fixture
def image_paths(tmp_path):
    paths = []
    for seed, size in enumerate([(48, 40), (30, 60), (64, 64)]):
        values = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = tmp_path / f"img{seed}.png"
        Image.fromarray(values).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("name", PROCESSORS)
def test_target_size(name):
    build, expected = PROCESSORS[name]
    assert target_size(build()) == expected


def test_target_size_without_center_crop_is_square_shortest_edge():
    processor = CLIPImageProcessor(size={"shortest_edge": 36}, do_center_crop=False)
    assert target_size(processor) == (36, 36)


# ------------------------------------------------------------------------------------ RandomResizedCrop


def test_random_resized_crop_box_stays_inside_and_respects_scale_and_ratio():
    crop = RandomResizedCrop((8, 8), scale=(0.5, 1.0))
    rng = random.Random(0)
    for _ in range(200):
        top, left, height, width = crop.get_params(100, 60, rng)
        assert 0 <= top and top + height <= 60 and 0 <= left and left + width <= 100
        assert 0.5 * 6000 * 0.9 <= height * width <= 6000  # rounding slack
        assert 3 / 4 - 0.05 <= width / height <= 4 / 3 + 0.05


def test_random_resized_crop_falls_back_to_central_crop():
    # A 2:1 crop covering the whole area never fits a square image, so all 10 draws fail.
    crop = RandomResizedCrop((8, 8), scale=(1.0, 1.0), ratio=(2.0, 2.0))
    assert crop.get_params(100, 100, random.Random(0)) == (25, 0, 50, 100)
    crop = RandomResizedCrop((8, 8), scale=(1.0, 1.0), ratio=(0.5, 0.5))
    assert crop.get_params(100, 100, random.Random(0)) == (0, 25, 100, 50)


def test_random_resized_crop_output_size_and_seed():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    crop = RandomResizedCrop((24, 32))
    first = crop(image, random.Random(3))
    assert first.size == (32, 24)  # PIL sizes are (width, height)
    assert np.array_equal(np.asarray(first), np.asarray(crop(image, random.Random(3))))


@pytest.mark.parametrize(
    "bad",
    [
        {"scale": (0.0, 1.0)},
        {"scale": (0.9, 0.5)},
        {"scale": (0.5, 1.5)},
        {"ratio": (2, 1)},
    ],
)
def test_random_resized_crop_rejects_bad_ranges(bad):
    with pytest.raises(ValueError):
        RandomResizedCrop((8, 8), **bad)


def test_horizontal_flip():
    image = Image.new("RGB", (2, 1))
    image.putpixel((0, 0), (255, 0, 0))
    assert RandomHorizontalFlip(p=1.0)(image).getpixel((1, 0)) == (255, 0, 0)
    assert RandomHorizontalFlip(p=0.0)(image).getpixel((0, 0)) == (255, 0, 0)
    flips = sum(
        RandomHorizontalFlip()(image, random.Random(seed)).getpixel((1, 0)) == (255, 0, 0) for seed in range(200)
    )
    assert 60 < flips < 140


# --------------------------------------------------------------------------------- build_image_transform


@pytest.mark.parametrize("name", PROCESSORS)
def test_eval_transform_equals_the_processor(name, image_paths):
    processor = PROCESSORS[name][0]()
    transform = build_image_transform(processor, train=False)
    out = transform({"image": image_paths, "labels": [0, 1, 2]})
    assert set(out) == {"labels", "pixel_values"} and out["labels"] == [0, 1, 2]
    for path, pixels in zip(image_paths, out["pixel_values"], strict=True):
        expected = processor(load_image(path), return_tensors="pt")["pixel_values"][0]
        assert pixels.dtype == torch.float32
        assert torch.equal(pixels, expected)


@pytest.mark.parametrize("name", PROCESSORS)
def test_train_transform_shape_randomness_and_seed(name, image_paths):
    build, (height, width) = PROCESSORS[name]
    transform = build_image_transform(build(), train=True)
    batch = {"image": image_paths, "labels": [0, 1, 2]}
    random.seed(1)
    first = transform(batch)
    second = transform(batch)
    random.seed(1)
    replay = transform(batch)
    assert "image" not in first and first["labels"] == [0, 1, 2]
    for a, b, c in zip(
        first["pixel_values"],
        second["pixel_values"],
        replay["pixel_values"],
        strict=True,
    ):
        assert a.shape == (3, height, width) and a.dtype == torch.float32
        assert not torch.equal(a, b)
        assert torch.equal(a, c)


@pytest.mark.parametrize("name", PROCESSORS)
@pytest.mark.parametrize("train", [True, False])
def test_mean_std_normalisation_is_applied(name, train, tmp_path):
    processor = PROCESSORS[name][0]()
    colour = (200, 100, 50)
    path = tmp_path / "flat.png"
    Image.new("RGB", (40, 30), colour).save(path)
    pixels = build_image_transform(processor, train=train)({"image": [str(path)]})["pixel_values"][0]
    expected = (np.array(colour) / 255.0 - np.array(processor.image_mean)) / np.array(processor.image_std)
    np.testing.assert_allclose(pixels.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(pixels.std(dim=(1, 2)).numpy(), 0, atol=1e-5)


def test_crop_scale_and_hflip_options(tmp_path):
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 32, 64))  # left half white
    path = tmp_path / "half.png"
    image.save(path)
    transform = build_image_transform(_vit(), train=True, crop_scale=(1.0, 1.0), hflip=False)
    for seed in range(5):
        random.seed(seed)
        pixels = transform({"image": [str(path)]})["pixel_values"][0]
        assert pixels[0, :, :4].mean() > pixels[0, :, -4:].mean()  # never mirrored
    with pytest.raises(ValueError):
        build_image_transform(_vit(), train=True, crop_scale=(0.0, 1.0))


def test_custom_loader_and_image_column(image_paths):
    calls = []

    def load(source):
        calls.append(source)
        return load_image(source)

    transform = build_image_transform(_vit(), train=False, image_column="photo", load=load)
    out = transform({"photo": image_paths[:1], "text": ["a cat"]})
    assert calls == image_paths[:1] and out["text"] == ["a cat"] and "photo" not in out
    with pytest.raises(KeyError, match="photo"):
        transform({"image": image_paths[:1]})


def test_with_transform_and_default_data_collator(image_paths):
    dataset = datasets.Dataset.from_dict({"image": image_paths, "labels": [0, 1, 2]})
    dataset = dataset.with_transform(build_image_transform(_clip(), train=True))
    assert dataset[0]["pixel_values"].shape == (3, 28, 32)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=default_data_collator)))
    assert batch["pixel_values"].shape == (3, 3, 28, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 1, 2]


def test_dataloader_workers_draw_different_crops(image_paths):
    # Items 0 and 1 go to different workers and are each the first draw there: with a generator
    # copied from the parent process they would be identical.
    dataset = datasets.Dataset.from_dict({"image": [image_paths[2]] * 2})
    dataset = dataset.with_transform(build_image_transform(_vit(), train=True))
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=default_data_collator)
    first, second = (batch["pixel_values"][0] for batch in loader)
    assert not torch.equal(first, second)


def test_transform_pickles_for_spawned_workers(image_paths):
    transform = pickle.loads(pickle.dumps(build_image_transform(_clip(), train=True)))
    assert transform({"image": image_paths[:1]})["pixel_values"][0].shape == (3, 28, 32)


def test_resample_follows_the_processor():
    transform = build_image_transform(ViTImageProcessor(size={"height": 8, "width": 8}, resample=0), train=True)
    assert transform.crop.resample == Image.Resampling.NEAREST
    assert math.isclose(transform.crop.scale[0], 0.5)


# ------------------------------------------------------------------- reduced (draft-mode) JPEG decoding


def _smooth_photo(width, height, seed=0):
    """A smooth, asymmetric RGB image (gradients and waves), like an upscaled photo."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    channels = [
        128 + 60 * np.sin(9 * x + phase[0]) + 50 * y,
        128 + 70 * np.cos(7 * y + 3 * x + phase[1]),
        80 + 120 * x * y + 30 * np.sin(13 * x * y + phase[2]),
    ]
    return Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))


@pytest.fixture
def large_jpegs(tmp_path):
    paths = []
    for seed, size in enumerate([(1200, 900), (800, 1000)]):
        path = tmp_path / f"large{seed}.jpg"
        _smooth_photo(*size, seed=seed).save(path, quality=90)
        paths.append(str(path))
    return paths


def _in_255_units(a, b, processor):
    std = torch.tensor(processor.image_std)[:, None, None]
    return ((a - b).abs() * std * 255).mean().item()


def test_load_image_reduced_picks_the_largest_jpeg_scale_within_the_limit(tmp_path):
    path = tmp_path / "photo.jpg"
    _smooth_photo(800, 600).save(path, quality=90)
    calls = []

    def allow(limit):
        def max_reduction(width, height):
            calls.append((width, height))
            return limit

        return max_reduction

    for limit, reduction in [(9.0, 8), (4.3, 4), (3.99, 2), (1.99, 1)]:
        image, used = load_image_reduced(str(path), allow(limit))
        assert used == reduction and image.size == (800 // reduction, 600 // reduction) and image.mode == "RGB"
    assert calls == [(800, 600)] * 4  # once per load, with the full size, before decoding
    full = np.asarray(load_image(str(path)).resize((200, 150), Image.Resampling.BOX), dtype=float)
    quarter = np.asarray(load_image_reduced(str(path), allow(4))[0], dtype=float)
    assert np.abs(full - quarter).mean() < 2  # the same picture, at a quarter of the size


def test_load_image_reduced_plans_on_the_upright_size(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    _smooth_photo(800, 600).save(path, quality=90, exif=exif.tobytes())
    sizes = []
    image, reduction = load_image_reduced(str(path), lambda w, h: sizes.append((w, h)) or 4)
    assert sizes == [(600, 800)] and reduction == 4 and image.size == (150, 200)
    assert image.size == tuple(s // 4 for s in load_image(str(path)).size)


def test_load_image_reduced_decodes_other_formats_in_full(tmp_path):
    path = tmp_path / "photo.png"
    _smooth_photo(800, 600).save(path)
    sizes = []
    image, reduction = load_image_reduced(str(path), lambda w, h: sizes.append((w, h)) or 8)
    assert reduction == 1 and sizes == [(800, 600)]
    assert np.array_equal(np.asarray(image), np.asarray(load_image(str(path))))


def _record_crops(monkeypatch):
    """Record every (box, reduction) RandomResizedCrop.apply receives."""
    calls = []
    apply = RandomResizedCrop.apply

    def recording(self, image, box, reduction=1):
        calls.append((box, reduction))
        return apply(self, image, box, reduction)

    monkeypatch.setattr(RandomResizedCrop, "apply", recording)
    return calls


def _train_outputs(transform, paths, seeds):
    outputs = []
    for seed in seeds:
        random.seed(seed)
        outputs.extend(transform({"image": paths})["pixel_values"])
    return outputs


def test_draft_decoding_keeps_crop_boxes_flips_and_pixels(large_jpegs, monkeypatch):
    calls = _record_crops(monkeypatch)
    processor = _clip()
    drafted = build_image_transform(processor, train=True, crop_scale=(0.08, 1.0))
    # A custom loader always decodes every pixel: the reference path.
    full = build_image_transform(processor, train=True, crop_scale=(0.08, 1.0), load=lambda s: load_image(s))
    seeds = range(25)
    fast = _train_outputs(drafted, large_jpegs, seeds)
    fast_calls, calls[:] = list(calls), []
    slow = _train_outputs(full, large_jpegs, seeds)
    # The same boxes in full-resolution coordinates, in the same order (so the same random stream and the same
    # flips follow); only the decode scale differs.
    assert [box for box, _ in fast_calls] == [box for box, _ in calls]
    assert {reduction for _, reduction in calls} == {1}
    assert {reduction for _, reduction in fast_calls} >= {4, 8}
    differences = [_in_255_units(a, b, processor) for a, b in zip(fast, slow, strict=True)]
    assert max(differences) < 1 and np.mean(differences) < 0.5


def test_draft_is_used_only_for_large_jpegs(tmp_path, monkeypatch):
    calls = _record_crops(monkeypatch)
    photo = _smooth_photo(1200, 900)
    png, small_jpeg = tmp_path / "large.png", tmp_path / "small.jpg"
    photo.save(png)
    photo.resize((60, 45)).save(small_jpeg, quality=90)
    processor = _clip()
    for path in (str(png), str(small_jpeg)):
        drafted = build_image_transform(processor, train=True)
        full = build_image_transform(processor, train=True, load=lambda s: load_image(s))
        fast, slow = _train_outputs(drafted, [path], range(5)), _train_outputs(full, [path], range(5))
        assert all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))
    assert {reduction for _, reduction in calls} == {1}


# ---------------------------------------------------------------------------------- lean evaluation path


@pytest.mark.parametrize(
    "build",
    [
        _clip,
        _vit,
        lambda: CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 40, "width": 24}),  # pads
    ],
    ids=["clip", "vit", "crop-larger-than-resize"],
)
def test_eval_of_large_jpegs_is_close_to_the_processor(build, large_jpegs, monkeypatch):
    reductions = []
    geometry = ProcessorGeometry.__call__
    monkeypatch.setattr(
        ProcessorGeometry,
        "__call__",
        lambda self, image, size, r=1: reductions.append(r) or geometry(self, image, size, r),
    )
    processor = build()
    out = build_image_transform(processor, train=False)({"image": large_jpegs})["pixel_values"]
    for path, pixels in zip(large_jpegs, out, strict=True):
        expected = processor(load_image(path), return_tensors="pt")["pixel_values"][0]
        assert pixels.shape == expected.shape
        assert _in_255_units(pixels, expected, processor) < 0.5
    assert min(reductions) >= 4  # drafted


@pytest.mark.parametrize(
    "processor",
    [
        CLIPImageProcessor(size={"shortest_edge": 36}, do_center_crop=False),  # variable output size
        CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 40, "width": 24}),  # pads
        ViTImageProcessor(size={"height": 24, "width": 32}, resample=Image.Resampling.NEAREST),
        ViTImageProcessor(size={"height": 24, "width": 32}, do_resize=False, do_center_crop=True, crop_size=20),
    ],
    ids=["no-center-crop", "crop-larger-than-resize", "nearest", "no-resize"],
)
def test_eval_follows_the_processor_settings_exactly(processor, image_paths):
    out = build_image_transform(processor, train=False)({"image": image_paths})["pixel_values"]
    for path, pixels in zip(image_paths, out, strict=True):
        assert torch.equal(pixels, processor(load_image(path), return_tensors="pt")["pixel_values"][0])


def test_processors_this_module_does_not_mirror_run_as_they_are(image_paths):
    class Sharpening(ViTImageProcessorPil):  # an overridden step the lean path would skip
        def rescale(self, image, scale, **kwargs):
            return super().rescale(image, scale * 1.5, **kwargs)

    for processor in (
        Sharpening(size={"height": 24, "width": 32}),
        CLIPImageProcessor(size={"shortest_edge": 20, "longest_edge": 30}, do_center_crop=False),
    ):
        transform = build_image_transform(processor, train=False)
        assert transform.geometry is None
        out = transform({"image": image_paths})["pixel_values"]
        for path, pixels in zip(image_paths, out, strict=True):
            assert torch.equal(pixels, processor(load_image(path), return_tensors="pt")["pixel_values"][0])


def test_load_image_reduced_passes_the_callers_errors_through(tmp_path):
    path = tmp_path / "photo.jpg"
    _smooth_photo(64, 48).save(path, quality=90)

    def broken(width, height):
        raise RuntimeError("planning failed")

    with pytest.raises(RuntimeError, match="planning failed"):  # not reported as a corrupt image
        load_image_reduced(str(path), broken)
