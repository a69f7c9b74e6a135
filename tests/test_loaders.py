"""uint8 image batches through the DataLoader, normalised on the batch by the model, and the DataLoader defaults."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoProcessor, CLIPModel, default_data_collator

from mm_hf.data.transforms import BatchPixelNormaliser, attach_pixel_normaliser, build_image_transform


@pytest.fixture
def photos(tmp_path):
    paths = []
    for seed, size in enumerate([(48, 40), (30, 60), (64, 64), (200, 150)]):
        values = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = tmp_path / f"img{seed}.{'jpg' if seed == 3 else 'png'}"
        Image.fromarray(values).save(path)
        paths.append(str(path))
    return paths


def _batch(transform, paths):
    dataset = datasets.Dataset.from_dict({"image": paths, "labels": list(range(len(paths)))})
    loader = DataLoader(dataset.with_transform(transform), batch_size=len(paths), collate_fn=default_data_collator)
    return next(iter(loader))


def test_uint8_batches_give_the_float_paths_pixels_and_logits(tiny_clip, photos):
    image_processor = AutoProcessor.from_pretrained(tiny_clip).image_processor
    floats = _batch(build_image_transform(image_processor, train=False), photos)
    uint8 = _batch(build_image_transform(image_processor, train=False, uint8=True), photos)
    assert uint8["pixel_values"].dtype == torch.uint8 and floats["pixel_values"].dtype == torch.float32
    assert uint8["pixel_values"].shape == floats["pixel_values"].shape == (4, 3, 30, 30)
    assert uint8["labels"].tolist() == [0, 1, 2, 3]
    # The batch normaliser reproduces the per-image float path (to float32 rounding), and passes floats through.
    torch.testing.assert_close(
        BatchPixelNormaliser(image_processor)(uint8["pixel_values"]), floats["pixel_values"], rtol=0, atol=1e-6
    )
    assert BatchPixelNormaliser(image_processor)(floats["pixel_values"]) is floats["pixel_values"]

    model = CLIPModel.from_pretrained(tiny_clip).eval()

    def embeds(pixel_values):
        return model.get_image_features(pixel_values).pooler_output

    with torch.no_grad():
        expected = embeds(floats["pixel_values"])
        handles = attach_pixel_normaliser(model, image_processor)
        ids = torch.tensor([[0, 2, 1], [0, 4, 1]])
        # Both entry points (positional and keyword pixel_values) see normalised pixels.
        torch.testing.assert_close(embeds(uint8["pixel_values"]), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(pixel_values=uint8["pixel_values"], input_ids=ids).logits_per_image,
                                   model(pixel_values=floats["pixel_values"], input_ids=ids).logits_per_image, rtol=0, atol=1e-6)  # fmt: skip
        for handle in handles:
            handle.remove()
        # Without the hooks the raw bytes would reach the model: the check above is not vacuous.
        assert not torch.allclose(embeds(uint8["pixel_values"].float()), expected, atol=1e-3)


def test_train_transform_gives_uint8_and_other_processors_stay_float(tiny_clip, photos):
    image_processor = AutoProcessor.from_pretrained(tiny_clip).image_processor
    batch = _batch(build_image_transform(image_processor, train=True, uint8=True), photos)
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (4, 3, 30, 30)
