"""Image augmentation on PIL images, driven by a transformers image processor's own settings.

No torchvision: `RandomResizedCrop` and `RandomHorizontalFlip` reimplement torchvision's sampling
on PIL images, and the image processor still does rescaling and mean/std normalisation, so the
model sees exactly the value range it was pretrained with. `build_image_transform` ties it together
for `datasets.Dataset.with_transform`.

Randomness comes from Python's `random` module unless a `random.Random` is passed in. PyTorch's
DataLoader reseeds `random` in every worker (with base_seed + worker_id, base_seed drawn anew each
epoch) and `transformers.set_seed` seeds it in the main process, so crops differ between workers and
epochs yet a seeded run is reproducible. A generator created once in the main process would instead
be copied into every worker with the same state, and all workers would draw the same crops.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from mm_hf.data.images import load_image
from mm_hf.errors import UserError

Size = tuple[int, int]  # (height, width)


def target_size(image_processor: Any) -> Size:
    """The (height, width) the model expects from `image_processor`: its crop size when it
    center-crops, otherwise its resize target (a `shortest_edge` becomes a square)."""
    crop_size = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop_size:
        return _height_width(crop_size)
    return _height_width(image_processor.size)


def _height_width(size: Any) -> Size:
    """(height, width) from a `SizeDict`, a plain dict or an int."""
    if isinstance(size, int):
        return size, size

    def get(key: str) -> int | None:
        return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)

    for height_key, width_key in (("height", "width"), ("max_height", "max_width")):
        if get(height_key) and get(width_key):
            return int(get(height_key)), int(get(width_key))
    edge = get("shortest_edge") or get("longest_edge")
    if edge:
        return int(edge), int(edge)
    raise ValueError(f"Cannot tell the model's input size from the image processor's size {size!r}.")


class RandomResizedCrop:
    """Crop a random area and aspect ratio of an image, then resize it to `size` (height, width).

    The area is a fraction `scale` of the image and the aspect ratio (width/height) is drawn
    log-uniformly from `ratio`, as in torchvision; after 10 draws that do not fit, it falls back to
    the largest central crop within `ratio`. torchvision's default scale (0.08, 1.0) suits large
    photos; for small images (0.5, 1.0) keeps the object in view.
    """

    def __init__(
        self,
        size: Size,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        resample: Image.Resampling = Image.Resampling.BICUBIC,
    ):
        if not 0 < scale[0] <= scale[1] <= 1:
            # A user error when it comes from a recipe's --crop_scale_min.
            raise UserError(f"crop scale (--crop_scale_min, 1.0) must satisfy 0 < min <= max <= 1, got {scale}.")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}.")
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.resample = resample

    def get_params(self, width: int, height: int, rng: random.Random | None = None) -> tuple[int, int, int, int]:
        """Draw a crop box `(top, left, crop_height, crop_width)` for a `width` x `height` image."""
        rng = random if rng is None else rng
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect_ratio = math.exp(rng.uniform(*log_ratio))
            crop_width = round(math.sqrt(target_area * aspect_ratio))
            crop_height = round(math.sqrt(target_area / aspect_ratio))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = rng.randint(0, height - crop_height)
                left = rng.randint(0, width - crop_width)
                return top, left, crop_height, crop_width
        return self._central_fallback(width, height)

    def _central_fallback(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The whole image, trimmed to the nearest aspect ratio within `ratio`, centered."""
        crop_width, crop_height = width, height
        if width / height < self.ratio[0]:
            crop_height = round(width / self.ratio[0])
        elif width / height > self.ratio[1]:
            crop_width = round(height * self.ratio[1])
        return (
            (height - crop_height) // 2,
            (width - crop_width) // 2,
            crop_height,
            crop_width,
        )

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> Image.Image:
        top, left, crop_height, crop_width = self.get_params(image.width, image.height, rng)
        height, width = self.size
        # resize(box=...) crops and resamples in one pass, reading only the box's pixels.
        box = (left, top, left + crop_width, top + crop_height)
        return image.resize((width, height), resample=self.resample, box=box)


class RandomHorizontalFlip:
    """Mirror an image left-right with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> Image.Image:
        if (random if rng is None else rng).random() < self.p:
            return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image


class _BatchImageTransform:
    """The callable `build_image_transform` returns: a class rather than a closure so a dataset
    carrying it pickles into spawned DataLoader workers (macOS, Windows)."""

    def __init__(
        self,
        image_processor: Any,
        image_column: str,
        crop: RandomResizedCrop | None,
        flip: RandomHorizontalFlip | None,
        load: Callable[[Any], Image.Image],
    ):
        self.image_processor = image_processor
        self.image_column = image_column
        self.crop = crop
        self.flip = flip
        self.load = load

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if self.image_column not in batch:
            raise KeyError(f"No image column {self.image_column!r} in the batch; columns are {list(batch)}.")
        images = [self.load(source) for source in batch[self.image_column]]
        pixel_values = self._process(images)
        out = {key: values for key, values in batch.items() if key != self.image_column}
        # One (3, H, W) float32 tensor per example: default_data_collator stacks them, and a list
        # (unlike one stacked tensor) also allows processors whose eval output varies in size.
        out["pixel_values"] = [torch.from_numpy(np.asarray(pixels, dtype=np.float32)) for pixels in pixel_values]
        return out

    def _process(self, images: list[Image.Image]) -> list:
        if self.crop is None:
            return self.image_processor(images)["pixel_values"]
        images = [self._augment(image) for image in images]
        # The crop already produced the model's input size; the processor must only rescale and
        # normalise. Its own resize/center-crop would otherwise undo the random crop's framing.
        return self.image_processor(images, do_resize=False, do_center_crop=False)["pixel_values"]

    def _augment(self, image: Image.Image) -> Image.Image:
        image = self.crop(image)
        return self.flip(image) if self.flip is not None else image


def build_image_transform(
    image_processor: Any,
    *,
    train: bool,
    image_column: str = "image",
    crop_scale: tuple[float, float] = (0.5, 1.0),
    hflip: bool = True,
    load: Callable[[Any], Image.Image] = load_image,
) -> Callable[[dict], dict]:
    """A batch transform for `Dataset.with_transform` that turns `image_column` into `pixel_values`.

    Each image is decoded with `load`. For training it is randomly resized-cropped to the model's
    input size (`crop_scale` of the area) and flipped if `hflip`, then rescaled and normalised by
    `image_processor`; for evaluation the processor runs as is (resize, center crop, normalise).
    Other columns such as `labels` pass through. Use `remove_unused_columns=False` in
    `TrainingArguments`, or Trainer drops the image column before the transform sees it.
    """
    if not train:
        return _BatchImageTransform(image_processor, image_column, None, None, load)
    crop = RandomResizedCrop(
        target_size(image_processor),
        scale=crop_scale,
        resample=_pil_resample(image_processor),
    )
    flip = RandomHorizontalFlip() if hflip else None
    return _BatchImageTransform(image_processor, image_column, crop, flip, load)


def _pil_resample(image_processor: Any) -> Image.Resampling:
    """The processor's resampling filter as a PIL filter (bicubic when it has none PIL knows)."""
    try:
        return Image.Resampling(int(image_processor.resample))
    except (AttributeError, TypeError, ValueError):
        return Image.Resampling.BICUBIC
