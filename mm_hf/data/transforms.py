"""Image augmentation on PIL images, driven by a transformers image processor's own settings.

No torchvision: `RandomResizedCrop` and `RandomHorizontalFlip` reimplement torchvision's sampling
on PIL images, and the image processor's own rescaling and mean/std normalisation are reproduced
exactly, so the model sees the value range it was pretrained with. `build_image_transform` ties it
together for `datasets.Dataset.with_transform`.

Speed (decoding dominates): a large JPEG is decoded at 1/2, 1/4 or 1/8 scale when the crop still
keeps `DRAFT_MARGIN` times the model's input pixels per side; the crop box is drawn in
full-resolution coordinates first, so augmentation statistics do not depend on the decode scale.
Crop and resize are one PIL call, and rescale + normalise is a table lookup built from the
processor's own output for the 256 possible byte values. Evaluation does the processor's resize
and center crop with PIL, bit-identical to the processor at full resolution; for the Trainer's uint8
batches the crop is resampled in one call instead (`ProcessorGeometry`, `exact`). Measured in README.md
("Input pipeline speed").

Randomness comes from Python's `random` module unless a `random.Random` is passed in. PyTorch's
DataLoader reseeds `random` in every worker (with base_seed + worker_id, base_seed drawn anew each
epoch) and `transformers.set_seed` seeds it in the main process, so crops differ between workers and
epochs yet a seeded run is reproducible. A generator created once in the main process would instead
be copied into every worker with the same state, and all workers would draw the same crops.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import get_size_dict
from transformers.image_utils import SizeDict

from mm_hf.data.images import load_image, load_image_reduced
from mm_hf.errors import UserError
from mm_hf.models.processing_multimodal_fusion import height_width, target_size

Size = tuple[int, int]  # (height, width)
Box = tuple[int, int, int, int]  # (top, left, height, width)

# A JPEG is decoded smaller only while the region the model sees keeps at least this many source
# pixels per output pixel and side, so the final resize still antialiases. Measured on 3000x2000
# JPEGs (python -m mm_hf.bench.pipeline, DINOv2's 224 px processor): margin 2 -> train 3.6x faster
# than full decoding, crops differing by 0.24/255 on average; 1.5 -> 4.9x, 0.42/255; 1 -> 5.7x,
# 0.90/255. 1.5 meets the 4x target with half the deviation of 1.
DRAFT_MARGIN = 1.5


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
        return self.apply(image, self.get_params(image.width, image.height, rng))

    def apply(self, image: Image.Image, box: Box, reduction: int = 1) -> Image.Image:
        """Resize the crop `box`, drawn on the full-resolution image, of `image` decoded at
        1/`reduction` scale (see `load_image_reduced`) to `size`."""
        top, left, crop_height, crop_width = box
        height, width = self.size
        # resize(box=...) crops and resamples in one pass, reading only the box's pixels; PIL takes
        # a fractional box, so a reduced image is cropped at exactly the same place.
        corners = (left, top, left + crop_width, top + crop_height)
        return image.resize((width, height), resample=self.resample, box=[v / reduction for v in corners])

    def max_reduction(self, box: Box) -> float:
        """How much smaller the source may be decoded while `box` keeps `DRAFT_MARGIN` x `size`."""
        _, _, crop_height, crop_width = box
        return min(crop_height / self.size[0], crop_width / self.size[1]) / DRAFT_MARGIN


class RandomHorizontalFlip:
    """Mirror an image left-right with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> Image.Image:
        if (random if rng is None else rng).random() < self.p:
            return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image


def _is_stock_pil_processor(image_processor: Any) -> bool:
    """Whether `image_processor` is transformers' PIL backend running its stock resize -> center
    crop -> rescale -> normalise steps (CLIP, DINOv2/BiT, ViT, SigLIP, ...), which this module
    reproduces. Processors that override a step, pad, or use the torchvision backend keep running
    as they are."""
    cls = type(image_processor)
    steps = ("process_image", "_preprocess", "resize", "center_crop", "rescale", "normalize")
    return (
        isinstance(image_processor, PilBackend)
        and all(getattr(cls, step) is getattr(PilBackend, step) for step in steps)
        and not getattr(image_processor, "do_pad", False)
    )


class PixelNormaliser:
    """uint8 RGB image -> the processor's float32 (3, H, W) pixel values, by table lookup.

    Rescale and normalise act on each byte value of each channel independently, so the table is
    the processor's own output for a 256-pixel ramp: equal to running the processor, bit for bit,
    at a fraction of the cost (no float64 intermediate: one lookup per channel).
    """

    def __init__(self, image_processor: Any):
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3)
        out = image_processor(Image.fromarray(ramp), do_resize=False, do_center_crop=False)["pixel_values"][0]
        self.table = np.array(out, dtype=np.float32)[:, 0, :]  # (3, 256)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        out = np.empty((3, image.height, image.width), dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], pixels[:, :, channel], out=out[channel])
        return torch.from_numpy(out)


class BatchPixelNormaliser:
    """uint8 pixel batches (b, 3, H, W) -> the processor's float32 pixel values, on the batch's device.

    Runs after the batch has crossed the DataLoader's worker boundary as uint8 (4x fewer bytes than float32) and,
    in a Trainer run, after it has been moved to the model's device. Rescale + normalise is affine per channel, so
    its scale and shift are read off `PixelNormaliser`'s table (the processor's own output for bytes 0 and 255):
    the result matches the float path within 1e-6 (float32 rounding of one multiply-add). A multiply-add, not the
    table lookup: on one CPU core 5 ms for 32 x 3 x 224 x 224 against 73 ms for indexing. Float input passes
    through unchanged.
    """

    def __init__(self, image_processor: Any):
        table = torch.from_numpy(PixelNormaliser(image_processor).table).double()  # (3, 256)
        self.scale = ((table[:, 255] - table[:, 0]) / 255).float().view(3, 1, 1)
        self.shift = table[:, 0].float().view(3, 1, 1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            return pixels
        if pixels.device not in self._on:
            self._on[pixels.device] = (self.scale.to(pixels.device), self.shift.to(pixels.device))
        scale, shift = self._on[pixels.device]
        return pixels.to(torch.float32).mul_(scale).add_(shift)


# The batch keys that carry pixels: images (b, 3, H, W) and video frames (b, T, 3, H, W), as transformers names them.
PIXEL_KEYS = ("pixel_values", "pixel_values_videos")


def attach_pixel_normaliser(model: torch.nn.Module, image_processor: Any) -> list:
    """Let `model` take uint8 pixels (`build_image_transform(..., uint8=True)`, `MultimodalProcessor.transform(...,
    uint8=True)`) in `pixel_values` or `pixel_values_videos`.

    A forward pre-hook on every submodule whose `forward` has one of those parameters (the model itself or its fusion
    body, its vision tower, its patch embeddings) normalises a uint8 tensor with `BatchPixelNormaliser`: the
    outermost one does the work, the inner ones then see floats. So `forward` and `get_image_features` both accept
    the batches, on whatever device the Trainer moved them to. Hooks are not saved: `save_pretrained` and the saved
    processor (float pixel values, `pipeline()`) are unchanged. Returns the hook handles (`.remove()` detaches).
    """
    normalise = BatchPixelNormaliser(image_processor)
    handles = []
    for module in model.modules():
        parameters = list(inspect.signature(module.forward).parameters)
        positions = {key: parameters.index(key) for key in PIXEL_KEYS if key in parameters}
        if not positions:
            continue

        def hook(module, args, kwargs, positions=positions):
            for key, position in positions.items():
                if kwargs.get(key) is not None:
                    kwargs[key] = normalise(kwargs[key])
                elif len(args) > position and args[position] is not None:
                    args = (*args[:position], normalise(args[position]), *args[position + 1 :])
            return args, kwargs

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    if not handles:
        raise ValueError(f"{type(model).__name__} has no module taking pixel_values to normalise uint8 batches for.")
    return handles


class ProcessorGeometry:
    """The processor's eval resize and center crop as two PIL calls, on a possibly reduced image.

    Follows transformers' `PilBackend.resize`/`center_crop`: `shortest_edge` keeps the aspect ratio
    (the long side truncated to an int), `height`/`width` resizes to that size, the center crop
    pads with black when the image is smaller. `from_processor` returns None for other sizes
    (`longest_edge`, `max_height`, ...), which the processor then handles itself.

    `exact` (the default) resizes the whole image, then crops, as the processor does: the same pixels, bit for bit.
    Otherwise the crop's box is resampled to the crop size in one call, as for a reduced image: about as cheap as a
    training crop (the whole-image resize took 1.7x as long on 500x375 JPEGs at 224 px), and within 1/255 of the
    processor's pixels, for 0.0056 % of the values on those JPEGs and 8 % of a small pixel-noise image's (PIL's
    filter weights for a fractional box differ in the last bits). README.md "Input pipeline speed".
    """

    def __init__(self, size: SizeDict | None, crop: Size | None, resample: Image.Resampling, exact: bool = True):
        self.size = size
        self.crop = crop
        self.resample = resample
        self.exact = exact

    @classmethod
    def from_processor(cls, image_processor: Any, exact: bool = True) -> ProcessorGeometry | None:
        if not _is_stock_pil_processor(image_processor):
            return None
        size = None
        if image_processor.do_resize:
            size = image_processor.size
            if not isinstance(size, SizeDict):
                default_to_square = getattr(image_processor, "default_to_square", True)
                size = SizeDict(**get_size_dict(size=size, default_to_square=default_to_square))
            if size.longest_edge or not (size.shortest_edge or (size.height and size.width)):
                return None
        crop = None
        if image_processor.do_center_crop:
            crop = height_width(image_processor.crop_size)
        resample = image_processor.resample
        resample = Image.Resampling.BILINEAR if resample is None else Image.Resampling(int(resample))
        return cls(size, crop, resample, exact)

    def resized(self, width: int, height: int) -> Size:
        """(height, width) after the processor's resize of a `width` x `height` image."""
        if self.size is None:
            return height, width
        if not self.size.shortest_edge:
            return self.size.height, self.size.width
        short, long = sorted((width, height))
        new_short, new_long = self.size.shortest_edge, int(self.size.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def max_reduction(self, width: int, height: int) -> float:
        resized_height, resized_width = self.resized(width, height)
        return min(width / resized_width, height / resized_height) / DRAFT_MARGIN

    def __call__(self, image: Image.Image, full_size: tuple[int, int], reduction: int = 1) -> Image.Image:
        """`image` (full size `full_size` = (width, height), decoded at 1/`reduction`) resized and
        center-cropped as the processor would."""
        width, height = full_size
        resized_height, resized_width = self.resized(width, height)
        crop_height, crop_width = self.crop or (resized_height, resized_width)
        # Same offsets as transformers' center_crop; PIL fills outside the image with black, as
        # the processor's padding does.
        top, left = (resized_height - crop_height) // 2, (resized_width - crop_width) // 2
        fits = 0 <= top and 0 <= left  # the crop lies inside the resized image (no padding)
        if (reduction != 1 or not self.exact) and fits:
            # One call: the crop's box in the reduced image, resampled to the crop size. A drafted
            # image differs from the processor's anyway, so the last-bit rounding of a fractional
            # box does not matter here.
            x_scale, y_scale = width / resized_width / reduction, height / resized_height / reduction
            box = (left * x_scale, top * y_scale, (left + crop_width) * x_scale, (top + crop_height) * y_scale)
            return image.resize((crop_width, crop_height), resample=self.resample, box=box)
        # Otherwise resize, then crop, as the processor does: at full resolution the pixels are then
        # identical to its output (a fractional box changes PIL's filter weights in the last bit).
        if reduction != 1:
            box = (0, 0, width / reduction, height / reduction)
            image = image.resize((resized_width, resized_height), resample=self.resample, box=box)
        elif (resized_width, resized_height) != image.size:
            image = image.resize((resized_width, resized_height), resample=self.resample)
        if self.crop is None:
            return image
        return image.crop((left, top, left + crop_width, top + crop_height))


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
        uint8: bool = False,
    ):
        self.image_processor = image_processor
        self.image_column = image_column
        self.crop = crop
        self.flip = flip
        self.load = load
        stock = _is_stock_pil_processor(image_processor)
        self.normalise = PixelNormaliser(image_processor) if stock else None
        # uint8 out only where the table reproduces the processor; other processors keep their float output,
        # which BatchPixelNormaliser passes through.
        self.uint8 = uint8 and stock
        # uint8 pixels are the Trainer's batches, which meet the model only through BatchPixelNormaliser (1e-6):
        # their eval crop is the cheap one-call resample; float pixels (predict, evaluate, index, feature caches)
        # stay bit-identical to the processor's, as `pipeline()` on the saved model gives.
        self.geometry = None
        if crop is None:
            self.geometry = ProcessorGeometry.from_processor(image_processor, exact=not self.uint8)

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if self.image_column not in batch:
            raise KeyError(f"No image column {self.image_column!r} in the batch; columns are {list(batch)}.")
        out = {key: values for key, values in batch.items() if key != self.image_column}
        # One (3, H, W) float32 (or uint8) tensor per example: default_data_collator stacks them, and a list
        # (unlike one stacked tensor) also allows processors whose eval output varies in size.
        out["pixel_values"] = self._pixel_values(batch[self.image_column])
        return out

    def _pixel_values(self, sources: list) -> list[torch.Tensor]:
        if self.crop is None and self.geometry is None:  # a processor this module does not mirror
            pixel_values = self.image_processor([self.load(source) for source in sources])["pixel_values"]
            return [torch.from_numpy(np.asarray(pixels, dtype=np.float32)) for pixels in pixel_values]
        images = [self._train_image(source) if self.crop else self._eval_image(source) for source in sources]
        if self.uint8:
            # (3, H, W) views of the (H, W, 3) pixels: the collator's stack is then the only copy.
            return [torch.from_numpy(np.array(_rgb(image))).permute(2, 0, 1) for image in images]
        if self.normalise is not None:
            return [self.normalise(image) for image in images]
        # The images already have the model's input size; the processor must only rescale and
        # normalise. Its own resize/center-crop would otherwise undo the random crop's framing.
        pixel_values = self.image_processor(images, do_resize=False, do_center_crop=False)["pixel_values"]
        return [torch.from_numpy(np.asarray(pixels, dtype=np.float32)) for pixels in pixel_values]

    def _train_image(self, source: Any) -> Image.Image:
        if self.load is not load_image:  # a custom loader decodes at full size
            image = self.crop(self.load(source))
        else:
            box = None

            def plan(width: int, height: int) -> float:
                nonlocal box
                box = self.crop.get_params(width, height)  # in full-resolution coordinates
                return self.crop.max_reduction(box)

            image, reduction = load_image_reduced(source, plan)
            image = self.crop.apply(image, box, reduction)
        return self.flip(image) if self.flip is not None else image

    def _eval_image(self, source: Any) -> Image.Image:
        if self.load is not load_image:
            image = self.load(source)
            return self.geometry(image, image.size)
        full_size = None

        def plan(width: int, height: int) -> float:
            nonlocal full_size
            full_size = (width, height)
            return self.geometry.max_reduction(width, height)

        image, reduction = load_image_reduced(source, plan)
        return self.geometry(image, full_size, reduction)


def build_image_transform(
    image_processor: Any,
    *,
    train: bool,
    image_column: str = "image",
    crop_scale: tuple[float, float] = (0.5, 1.0),
    hflip: bool = True,
    load: Callable[[Any], Image.Image] = load_image,
    uint8: bool = False,
) -> Callable[[dict], dict]:
    """A batch transform for `Dataset.with_transform` that turns `image_column` into `pixel_values`.

    Each image is decoded with `load`. For training it is randomly resized-cropped to the model's
    input size (`crop_scale` of the area) and flipped if `hflip`, then rescaled and normalised as
    `image_processor` does; for evaluation it gets the processor's resize, center crop and
    normalisation. With the default `load`, large JPEGs are decoded at a reduced scale (module
    docstring); a custom `load` always decodes at full size.
    Other columns such as `labels` pass through. Use `remove_unused_columns=False` in
    `TrainingArguments`, or Trainer drops the image column before the transform sees it.
    With `uint8`, `pixel_values` are the (3, H, W) uint8 pixels instead (for the stock PIL processors; others
    stay float): 4x fewer bytes from the DataLoader's workers, normalised on the batch by the model after
    `attach_pixel_normaliser`; the eval crop is then one PIL call (`ProcessorGeometry(exact=False)`: as cheap as
    a training crop, within 1/255 of the processor's pixels). Measured in README.md ("Input pipeline speed").
    """
    if not train:
        return _BatchImageTransform(image_processor, image_column, None, None, load, uint8)
    crop = RandomResizedCrop(
        target_size(image_processor),
        scale=crop_scale,
        resample=_pil_resample(image_processor),
    )
    flip = RandomHorizontalFlip() if hflip else None
    return _BatchImageTransform(image_processor, image_column, crop, flip, load, uint8)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _pil_resample(image_processor: Any) -> Image.Resampling:
    """The processor's resampling filter as a PIL filter (bicubic when it has none PIL knows)."""
    try:
        return Image.Resampling(int(image_processor.resample))
    except (AttributeError, TypeError, ValueError):
        return Image.Resampling.BICUBIC


def classifier_image_transforms(
    model, image_processor, image_column: str, *, augment: bool, crop_scale, hflip: bool, cached: bool
) -> tuple[Callable[[dict], dict], Callable[[dict], dict], Callable[[dict], dict]]:
    """`(train, trainer_eval, eval)` transforms of an image classifier run. Unless the features are `cached` (a
    linear probe's pass runs once, outside the DataLoader), the Trainer's batches cross from the DataLoader workers
    as uint8 (4x fewer bytes) and the model, given `attach_pixel_normaliser`, normalises them on its device;
    `eval` gives float pixel values, as the saved processor does, for the passes outside the Trainer."""
    eval_transform = build_image_transform(image_processor, train=False, image_column=image_column)
    train = build_image_transform(
        image_processor, train=augment, image_column=image_column, crop_scale=crop_scale, hflip=hflip,
        uint8=not cached,
    )  # fmt: skip
    attach_pixel_normaliser(model, image_processor)
    trainer_eval = (
        eval_transform
        if cached
        else build_image_transform(image_processor, train=False, image_column=image_column, uint8=True)
    )
    return train, trainer_eval, eval_transform
