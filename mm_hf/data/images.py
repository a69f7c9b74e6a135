"""Decode images to RGB and validate a dataset's images before training starts.

A corrupt or truncated file deep in a dataset otherwise crashes a run hours in (or, worse, trains on
grey padding). `load_image` decodes one image fully and raises `BadSampleError` naming the file;
`check_images` runs it over a whole split once, up front, and either fails with a list of the bad
files or drops them. `load_image_reduced` is the same for a caller that will shrink the image
anyway: a large JPEG then decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), which skips
most of the decoding work.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from mm_hf.data.validation import IN_MEMORY, BadSampleError, check_samples, require_file

# A path, an already-open PIL image, encoded bytes, or a `datasets.Image(decode=False)` record.
ImageSource = str | os.PathLike | bytes | Image.Image | Mapping[str, Any]

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
# Greyscale modes with more than 8 bits (16-bit ints, 32-bit ints, 32-bit floats).
_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# EXIF orientations that rotate by 90 degrees (width and height swap once upright).
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# The scales libjpeg can decode at directly (PIL's `Image.draft`), largest first.
_JPEG_REDUCTIONS = (8, 4, 2)

# Called with an image's full-resolution upright (width, height) before its pixels are decoded;
# returns by how much smaller (per side) the caller can accept it.
MaxReduction = Callable[[int, int], float]


class _RefuseTruncated:
    """Make PIL raise on truncated files while we decode, whatever the process-wide setting.

    `ImageFile.LOAD_TRUNCATED_IMAGES` is a global some libraries switch on; with it, a truncated
    file "decodes" with grey padding and silently poisons training. PIL reads it at decode time, so
    we switch it off around our own decoding and restore it afterwards. The counter keeps one
    thread from restoring it while another thread is still decoding.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = False

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            self._depth += 1

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = self._saved


_refuse_truncated = _RefuseTruncated()


def load_image(source: ImageSource) -> Image.Image:
    """Fully decode `source` into a new RGB image, upright according to its EXIF orientation.

    `source` is a path, a PIL image (left untouched), encoded bytes, or a
    `datasets.Image(decode=False)` record `{"bytes": ..., "path": ...}` (bytes win; the path only
    names the sample in errors). Transparency is composited on white and >8-bit greyscale is
    stretched from its own min..max to 0..255. Raises `BadSampleError` for missing, non-image,
    corrupt, truncated, zero-size or oversized (decompression bomb) images.
    """
    return _load(source, None)[0]


def load_image_reduced(source: ImageSource, max_reduction: MaxReduction) -> tuple[Image.Image, int]:
    """`load_image`, but a JPEG may be decoded smaller: returns `(image, reduction)`.

    `max_reduction(width, height)` is called exactly once, with the full-resolution upright size,
    before any pixel is decoded (so the caller can plan a crop in full-resolution coordinates), and
    says how much smaller per side the caller accepts. A JPEG is then decoded at the largest of
    1/8, 1/4, 1/2 scale that does not exceed it; other formats, PIL images and smaller factors
    decode at full size (reduction 1). A full-resolution coordinate `x` is `x / reduction` in the
    returned image, whose size is the full size divided by `reduction`, rounded up.
    """
    return _load(source, max_reduction)


def _load(source: ImageSource, max_reduction: MaxReduction | None) -> tuple[Image.Image, int]:
    if source is None:
        raise BadSampleError("<missing>", "no image (the value is None)")
    if isinstance(source, Image.Image):
        return _no_reduction(_load_pil(source), max_reduction)
    if isinstance(source, Mapping):
        return _load_record(source, max_reduction)
    if isinstance(source, bytes | bytearray | memoryview):
        return _decode(io.BytesIO(source), IN_MEMORY, max_reduction)
    if isinstance(source, str | os.PathLike):
        return _load_path(Path(source), max_reduction)
    raise TypeError(f"Cannot load an image from a {type(source).__name__}; expected a path, bytes, PIL image or dict.")


def _no_reduction(image: Image.Image, max_reduction: MaxReduction | None) -> tuple[Image.Image, int]:
    if max_reduction is not None:
        max_reduction(image.width, image.height)  # the caller plans its crop on this size
    return image, 1


def _load_pil(image: Image.Image) -> Image.Image:
    name = getattr(image, "filename", "") or "<PIL image>"
    try:
        with _refuse_truncated:
            # copy() loads the caller's image (it may be lazily opened) without modifying it.
            return _to_upright_rgb(image.copy(), name)
    except BadSampleError:
        raise
    except Exception as error:
        raise BadSampleError(name, _describe_failure(error)) from error


def _load_record(record: Mapping[str, Any], max_reduction: MaxReduction | None) -> tuple[Image.Image, int]:
    data, path = record.get("bytes"), record.get("path")
    if data:
        return _decode(io.BytesIO(data), path or IN_MEMORY, max_reduction)
    if path:
        return _load_path(Path(path), max_reduction)
    raise BadSampleError(IN_MEMORY, "the image record has neither 'bytes' nor 'path'")


def _load_path(path: Path, max_reduction: MaxReduction | None) -> tuple[Image.Image, int]:
    require_file(path)
    return _decode(path, str(path), max_reduction)


class _CallerError(Exception):
    """Carries an exception from the caller's `max_reduction` past `_decode`'s handlers, which
    would otherwise report it as a corrupt image."""


def _decode(file: Path | io.BytesIO, name: str, max_reduction: MaxReduction | None) -> tuple[Image.Image, int]:
    try:
        with _refuse_truncated, Image.open(file) as image:
            _check_size(image, name)
            if max_reduction is None or image.format != "JPEG":
                decoded, reduction = _to_upright_rgb(image, name), None
            else:
                reduction = _draft(image, _ask(max_reduction, *_upright_size(image)))
                decoded = _to_upright_rgb(image, name)
    except BadSampleError:
        raise
    except _CallerError as error:
        raise error.__cause__ from None  # the caller's own exception, as if never wrapped
    except Image.DecompressionBombError as error:
        raise BadSampleError(name, f"{error} (decompression-bomb guard)") from error
    # PIL reports bad data with many exception types (OSError, SyntaxError, ValueError,
    # struct.error, EOFError, ...); any of them means this sample cannot be used.
    except Exception as error:
        raise BadSampleError(name, _describe_failure(error)) from error
    return _no_reduction(decoded, max_reduction) if reduction is None else (decoded, reduction)


def _ask(max_reduction: MaxReduction, width: int, height: int) -> float:
    try:
        return max_reduction(width, height)
    except Exception as error:
        raise _CallerError() from error


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once EXIF orientation is applied, read from the header alone."""
    width, height = image.size
    if image.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def _draft(image: Image.Image, max_reduction: float) -> int:
    """Ask libjpeg to decode `image` (not yet loaded) at the largest reduction <= `max_reduction`."""
    for reduction in _JPEG_REDUCTIONS:
        if reduction <= max_reduction:
            width, height = image.size
            # draft() picks the largest scale whose output still covers the requested size; asking
            # for size // reduction makes that exactly `reduction` (see PIL's JpegImageFile.draft).
            if image.draft(image.mode, (width // reduction, height // reduction)) is None:
                return 1  # a multi-tile JPEG, which PIL cannot draft
            return reduction
    return 1


def _describe_failure(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not an image file (PIL cannot identify its format)"
    return f"corrupt or truncated image ({type(error).__name__}: {error})"


def _check_size(image: Image.Image, name: str) -> None:
    """Reject empty images and decompression bombs from the header, before decoding any pixels."""
    width, height = image.size
    if width == 0 or height == 0:
        raise BadSampleError(name, f"zero-size image ({width}x{height})")
    limit = Image.MAX_IMAGE_PIXELS
    # PIL itself only warns between 1x and 2x the limit; a training set has no use for such files.
    if limit is not None and width * height > limit:
        raise BadSampleError(
            name,
            f"{width}x{height} = {width * height} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS={limit} "
            "(decompression-bomb guard); raise that limit if you trust this file",
        )


def _to_upright_rgb(image: Image.Image, name: str) -> Image.Image:
    """Decode every pixel, apply EXIF orientation, convert to RGB. `image` is ours to modify."""
    image.load()
    if image.width == 0 or image.height == 0:
        raise BadSampleError(name, f"zero-size image ({image.width}x{image.height})")
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image  # ours already: skipping convert()'s copy saves ~10 % of a small JPEG's load time
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Return a new RGB image; never shares pixels with `image`."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        return _stretch_to_8bit(image).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        # Dropping alpha would expose whatever colour transparent pixels happen to store (often
        # black); compositing on white matches how the image looks in a viewer.
        return _composite_on_white(image.convert("RGBA"))
    # L, 1, P, CMYK, YCbCr, HSV, LAB, RGBX and RGB itself (convert returns a copy). PIL's CMYK
    # conversion is the standard R = (255 - C)(255 - K)/255; its JPEG decoder already undoes the
    # inverted CMYK that Adobe writes. Embedded ICC profiles are not applied.
    return image.convert("RGB")


def _stretch_to_8bit(image: Image.Image) -> Image.Image:
    """Map a 16/32-bit or float greyscale image's own value range onto 0..255 (mode L).

    Clipping to 255 would turn most 16-bit images white, and dividing by the type's maximum would
    make 12-bit or float data nearly black, so use the values actually present. A constant image
    carries no information and becomes black.
    """
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.new("L", image.size)
    low, high = values[finite].min(), values[finite].max()
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def check_image_header(source: ImageSource) -> None:
    """Check `source` without decoding its pixels (`--validate_samples header`): it exists, is a non-empty file (or
    bytes) in a format PIL identifies, and its header gives a non-zero size within the decompression-bomb guard.

    Raises `BadSampleError` as `load_image` does for those faults; a file cut inside its pixel data passes (only
    decoding finds it: `full`). Costs one open and a header read: 34 us a file against 70 for decoding a 16x16 PNG
    (measured on this project's 2-core machine; the gap grows with the image).
    """
    if source is None:
        raise BadSampleError("<missing>", "no image (the value is None)")
    if isinstance(source, Image.Image):
        return
    if isinstance(source, Mapping):
        data, path = source.get("bytes"), source.get("path")
        if not data and not path:
            raise BadSampleError(IN_MEMORY, "the image record has neither 'bytes' nor 'path'")
        file, name = (io.BytesIO(data), path or IN_MEMORY) if data else (os.fspath(path), str(path))
    elif isinstance(source, bytes | bytearray | memoryview):
        file, name = io.BytesIO(source), IN_MEMORY
    else:
        file = name = os.fspath(source)
    if isinstance(file, str):
        require_file(file)
    try:
        with Image.open(file) as image:
            _check_size(image, name)
    except BadSampleError:
        raise
    except Exception as error:
        raise BadSampleError(name, _describe_failure(error)) from error


def check_images(
    dataset: datasets.Dataset,
    column: str,
    *,
    skip_bad: bool,
    num_proc: int | None = None,
    split_name: str = "train",
    allow_missing: bool = False,
    mode: str = "full",
    cache: bool = False,
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, list[tuple[str, str]]]:
    """Decode every image in `dataset[column]` once (`mode="header"`: only open it, `check_image_header`), before
    training, to find unusable samples; with `cache` the verdict is cached (`mm_hf.data.validation.verdict_key`).

    Returns `(dataset, bad)` where `bad` lists `(source, reason)` pairs. With `skip_bad=False` any bad
    sample raises `BadSampleError` listing the first few; with `skip_bad=True` they are dropped from
    the returned dataset (which is otherwise unchanged). Samples can be paths or
    `datasets.Image` records; decoded pixels are never stored in the dataset.
    """
    return check_samples(
        dataset,
        column,
        check_image_header if mode == "header" else load_image,
        kind="images",
        feature_type=datasets.Image,
        skip_bad=skip_bad,
        num_proc=num_proc,
        split_name=split_name,
        allow_missing=allow_missing,
        check_id=(f"images/{mode}") if cache else None,
        cache_dir=cache_dir,
    )
