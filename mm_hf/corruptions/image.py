"""ImageNet-C-style image corruptions: `name(image, severity, rng)` -> an RGB PIL image, severity 1..5.

Parameters are ImageNet-C's tables (Hendrycks & Dietterich 2019, github.com/hendrycks/robustness,
`ImageNet-C/create_c/make_imagenet_c.py`), which were set for 224 x 224 images. Per-pixel corruptions (noise,
brightness, contrast, JPEG) apply as they are; spatial ones (blur radii and sigmas) are scaled by the image's shorter
side / 224, so a corruption looks the same after the model's processor resizes the image to its input size.
Pixelate and fog are relative to the image size already. Rotation is not in ImageNet-C (it is an ImageNet-P
perturbation); its angles are our choice.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage, signal

# ImageNet-C images are 224 x 224: spatial parameters are per that size.
_REFERENCE_SIZE = 224


def _to_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _to_image(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")


def _size_scale(image: Image.Image) -> float:
    return min(image.size) / _REFERENCE_SIZE


def gaussian_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Additive Gaussian noise, std [.08, .12, .18, .26, .38] of the [0, 1] range."""
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    x = _to_float(image)
    return _to_image(x + rng.standard_normal(x.shape, dtype=np.float32) * c)


def shot_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Poisson (photon) noise: `Poisson(x * c) / c` with c [60, 25, 12, 5, 3] photons at full intensity."""
    c = (60, 25, 12, 5, 3)[severity - 1]
    x = _to_float(image)
    return _to_image(rng.poisson(x * c) / c)


def impulse_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Salt-and-pepper noise on a fraction [.03, .06, .09, .17, .27] of the pixel values, half salt, half pepper."""
    c = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    x = _to_float(image)
    hit, salt = rng.uniform(size=x.shape) < c, rng.uniform(size=x.shape) < 0.5
    return _to_image(np.where(hit, salt.astype(np.float32), x))


def gaussian_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, sigma [1, 2, 3, 4, 6] px at 224 px (scaled to the image), edges repeated."""
    sigma = (1, 2, 3, 4, 6)[severity - 1] * _size_scale(image)
    return _to_image(ndimage.gaussian_filter(_to_float(image), sigma=(sigma, sigma, 0), mode="nearest"))


def defocus_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Convolution with a disk (out-of-focus lens), radius [3, 4, 6, 8, 10] px at 224 px, anti-aliased by a Gaussian."""
    radius, alias_sigma = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    radius *= _size_scale(image)
    half = math.ceil(radius) + 1
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    kernel = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    kernel = ndimage.gaussian_filter(kernel / kernel.sum(), sigma=alias_sigma)
    return _to_image(_convolve(_to_float(image), kernel / kernel.sum()))


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # FFT convolution of each channel with mirrored borders (OpenCV's filter2D default, which ImageNet-C used).
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
    return signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))


def motion_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Camera-shake blur along a random angle in [-45, 45] degrees, (radius, sigma) [(10, 3), (15, 5), (15, 8),
    (15, 12), (20, 15)] px at 224 px.

    ImageNet-C used ImageMagick's `-motion-blur radius x sigma + angle`: a one-sided kernel of 2 * radius + 1 taps with
    Gaussian weights exp(-i^2 / 2 sigma^2) for i pixels back along the angle. This is that kernel, summed tap by tap.
    """
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    scale = _size_scale(image)
    radius, sigma = radius * scale, max(sigma * scale, 1e-3)
    taps = np.arange(2 * math.ceil(radius) + 1)
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    weights /= weights.sum()
    angle = math.radians(rng.uniform(-45, 45))
    dx, dy = np.round(taps * math.cos(angle)).astype(int), np.round(taps * math.sin(angle)).astype(int)
    x = _to_float(image)
    h, w = x.shape[:2]
    pad = int(taps[-1])
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(x)
    for weight, ox, oy in zip(weights, dx, dy, strict=True):
        out += weight * padded[pad + oy : pad + oy + h, pad + ox : pad + ox + w]
    return _to_image(out)


def jpeg_compression(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """JPEG round trip at quality [25, 18, 15, 10, 7] (PIL's libjpeg)."""
    quality = (25, 18, 15, 10, 7)[severity - 1]
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return decoded.convert("RGB")


def pixelate(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Box-downsample to [.6, .5, .4, .3, .25] of the size and box-upsample back."""
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    image = image.convert("RGB")
    small = image.resize((max(1, int(image.width * c)), max(1, int(image.height * c))), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.BOX)


def brightness(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Add [.1, .2, .3, .4, .5] to the HSV value channel (clipped at 1), hue and saturation kept.

    Keeping H and S fixed while V goes to V' scales all three RGB channels by V' / V, so no HSV round trip is needed
    (a black pixel, V = 0, has S = 0 and becomes grey V').
    """
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    x = _to_float(image)
    value = x.max(axis=2, keepdims=True)
    brighter = np.minimum(value + c, 1.0)
    return _to_image(np.where(value > 0, x * brighter / np.maximum(value, 1e-12), brighter))


def contrast(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Pull every pixel towards the per-channel image mean, keeping a fraction [.4, .3, .2, .1, .05] of the contrast."""
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    x = _to_float(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_image((x - means) * c + means)


def fog(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Add a diamond-square plasma fractal (fog) of strength [1.5, 2, 2.5, 2.5, 3] and roughness decay
    [2, 2, 1.7, 1.5, 1.4], then rescale to the image's maximum. The fractal spans the image whatever its size."""
    strength, decay = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    x = _to_float(image)
    h, w = x.shape[:2]
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    top = x.max()
    x = x + strength * _plasma_fractal(size, decay, rng)[:h, :w, None]
    return _to_image(x * top / (top + strength))


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A `(size, size)` diamond-square fractal in [0, 1] (size a power of 2); ImageNet-C's `plasma_fractal`."""
    heights = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        # Squares: each square's centre from its four corners.
        corners = heights[0:size:step, 0:size:step]
        total = corners + np.roll(corners, -1, axis=0)
        heights[half:size:step, half:size:step] = wibbled_mean(total + np.roll(total, -1, axis=1))
        # Diamonds: each edge midpoint from its two corners and two neighbouring centres.
        centres = heights[half:size:step, half:size:step]
        corners = heights[0:size:step, 0:size:step]
        heights[0:size:step, half:size:step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        )
        heights[half:size:step, 0:size:step] = wibbled_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        )
        step //= 2
        wibble /= decay
    heights -= heights.min()
    return heights / heights.max()


def rotation(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Rotate by [6, 12, 18, 24, 30] degrees, direction drawn at random, bilinear, black corners (not ImageNet-C)."""
    degrees = (6, 12, 18, 24, 30)[severity - 1] * (1 if rng.uniform() < 0.5 else -1)
    return image.convert("RGB").rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
