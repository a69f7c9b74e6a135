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
    default_data_collator,
)

from mm_hf.data.images import load_image
from mm_hf.data.transforms import (
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
