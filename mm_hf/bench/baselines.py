"""Plain baselines the recipes are measured against, on the same splits.

- `logreg_probe`: scikit-learn's LogisticRegression on frozen features, C chosen on validation.
- `finetune_plain`: the article's loop: an Auto*ForClassification model + AdamW, nothing else (no augmentation,
  schedule, warm-up or model selection); with `schedule="linear"`, `warmup_ratio` and an augmenting
  `make_batch` it reproduces the transformers example scripts' defaults instead.
- feature and batch helpers for images (a dual encoder's image tower) and audio (a Whisper encoder).
"""

import math
import random
import time

import numpy as np
import torch
from PIL import Image

from mm_hf.data.audio import load_audio
from mm_hf.data.transforms import RandomHorizontalFlip, RandomResizedCrop

LOGREG_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def logreg_probe(train, validation, test, cs=LOGREG_CS) -> dict:
    """Standardised features -> LogisticRegression for each C in `cs`; the C with the best validation accuracy
    is scored on test. `train`/`validation`/`test` are (features, labels). Returns accuracy, C, val_accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train[0])
    x_train, x_val, x_test = (scaler.transform(x) for x in (train[0], validation[0], test[0]))
    best = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=5000).fit(x_train, train[1])
        val_acc = float((clf.predict(x_val) == validation[1]).mean())
        if best is None or val_acc > best[0]:
            best = (val_acc, c, clf)
    val_acc, c, clf = best
    return {"accuracy": float((clf.predict(x_test) == test[1]).mean()), "C": c, "val_accuracy": val_acc}


def _batches(n: int, batch_size: int, shuffle: bool, rng: random.Random):
    order = list(range(n))
    if shuffle:
        rng.shuffle(order)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def accuracy(model, make_batch, n: int, labels: np.ndarray, batch_size: int = 32) -> float:
    model.eval()
    correct = 0
    for idx in _batches(n, batch_size, False, random.Random(0)):
        logits = model(**make_batch(idx, train=False)).logits
        correct += int((logits.argmax(-1).numpy() == labels[idx]).sum())
    return correct / n


def finetune_plain(
    model,
    make_batch,
    labels: np.ndarray,
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    warmup_ratio: float = 0.0,
    seed: int = 42,
) -> torch.nn.Module:
    """Train every parameter of `model` with AdamW on cross-entropy (`model(**batch, labels=...)`).

    `make_batch(indices, train=True)` returns the model inputs of those training samples. The article's loop
    is the default (constant lr, no warm-up); `schedule="linear"` decays to 0 after `warmup_ratio` of the steps
    as Trainer does by default.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    n = len(labels)
    steps = math.ceil(n / batch_size) * math.ceil(epochs)
    warmup = math.ceil(warmup_ratio * steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def factor(step):
        if schedule == "constant":
            return 1.0
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    for _ in range(math.ceil(epochs)):
        for idx in _batches(n, batch_size, True, rng):
            loss = model(**make_batch(idx, train=True), labels=torch.as_tensor(labels[idx])).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return model


# Images -------------------------------------------------------------------------------------------------------


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def image_batcher(image_processor, paths: list[str], augment=None):
    """`make_batch` for an image model: the processor's eval pipeline, after `augment(PIL image)` in training."""
    images = [load_rgb(p) for p in paths]

    def make_batch(idx, train: bool):
        batch = [augment(images[i]) if (train and augment) else images[i] for i in idx]
        return {"pixel_values": image_processor(images=batch, return_tensors="pt")["pixel_values"]}

    return make_batch


def examples_image_augment(image_processor):
    """run_image_classification.py's training transform: RandomResizedCrop(size) (torchvision's scale
    0.08-1) + RandomHorizontalFlip; `size` is the processor's shortest_edge (else height x width)."""
    size = image_processor.size
    side = size.get("shortest_edge")
    crop = RandomResizedCrop((side, side) if side else (size["height"], size["width"]))
    flip = RandomHorizontalFlip()
    return lambda image: flip(crop(image))


@torch.no_grad()
def dual_encoder_image_features(model_dir: str, paths: list[str], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Frozen image features of a VisionTextDualEncoder: `embeds` (projected, what the recipe's linear probe
    reads) and `pooled` (the vision tower's pooler output, e.g. DINOv2's layer-normed CLS)."""
    from transformers import AutoImageProcessor, VisionTextDualEncoderModel

    model = VisionTextDualEncoderModel.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    pooled = []
    for start in range(0, len(paths), batch_size):
        images = [load_rgb(p) for p in paths[start : start + batch_size]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        pooled.append(model.vision_model(pixel_values=pixels).pooler_output)
    pooled = torch.cat(pooled)
    return {"embeds": model.visual_projection(pooled).numpy(), "pooled": pooled.numpy()}


# Audio --------------------------------------------------------------------------------------------------------


def load_clips(paths: list[str], sampling_rate: int) -> list[np.ndarray]:
    return [load_audio(p, sampling_rate) for p in paths]


def audio_batcher(feature_extractor, clips: list[np.ndarray], max_length_seconds: float | None = None, seed: int = 0):
    """`make_batch` for an audio model: the feature extractor's defaults (Whisper: log-mel, padded to 30 s).
    With `max_length_seconds`, training clips are cut to a random window of that length first
    (run_audio_classification.py's `random_subsample`)."""
    rng = random.Random(seed)
    rate = feature_extractor.sampling_rate
    cache = {}

    def make_batch(idx, train: bool):
        batch = []
        for i in idx:
            clip = clips[i]
            if train and max_length_seconds and len(clip) > max_length_seconds * rate:
                size = int(max_length_seconds * rate)
                start = rng.randint(0, len(clip) - size)
                batch.append(feature_extractor(clip[start : start + size], sampling_rate=rate)["input_features"][0])
                continue
            if i not in cache:  # the whole clip's features never change: compute them once
                cache[i] = feature_extractor(clip, sampling_rate=rate)["input_features"][0]
            batch.append(cache[i])
        return {"input_features": torch.as_tensor(np.stack(batch))}

    return make_batch


@torch.no_grad()
def whisper_encoder_features(model_dir: str, clips: list[np.ndarray], batch_size: int = 8) -> np.ndarray:
    """Whisper encoder states averaged over the frames that cover each clip (not the 30 s padding)."""
    from transformers import AutoFeatureExtractor, WhisperModel

    encoder = WhisperModel.from_pretrained(model_dir).encoder.eval()
    extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    # 2 conv strides x hop_length samples per encoder frame (Whisper: 320 samples, 20 ms at 16 kHz)
    samples_per_frame = extractor.hop_length * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    out = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        features = extractor(chunk, sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_features"]
        states = encoder(features).last_hidden_state
        for clip, state in zip(chunk, states, strict=True):
            frames = max(1, min(state.shape[0], math.ceil(len(clip) / samples_per_frame)))
            out.append(state[:frames].mean(0))
    return torch.stack(out).numpy()


def timed(fn, *args, **kwargs):
    """(result, wall seconds) of `fn(*args, **kwargs)`."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
