"""Precomputing frozen-backbone features so a linear probe trains its head without the backbone.

The pass is split across the processes and cached on disk with --features_cache_dir (`mm_hf.feature_cache`).
"""

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import default_data_collator

from .feature_cache import data_fingerprint, model_fingerprint, progress, shared_pass, transform_fingerprint


def eval_batches(model, dataset: Dataset, transform, batch_size: int, num_workers: int = 0, desc: str | None = None):
    """Batches of `dataset` read through its eval `transform`, with `model` in eval mode until the last one (its
    mode is restored after, also when the loop stops early): one pass of frozen encoders, as every cache needs.
    With `desc`, a progress bar of that name on the main process."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset.with_transform(transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=default_data_collator,
    )
    try:
        yield from progress(loader, desc=desc or "", total=len(loader), enabled=desc is not None)
    finally:
        model.train(was_training)


@torch.no_grad()
def precompute_features(
    model,
    dataset: Dataset,
    transform,
    batch_size: int = 64,
    num_workers: int = 0,
    device=None,
    *,
    cache_dir: str | None = None,
    desc: str | None = "caching features",
) -> Dataset:
    """Run the classifier's frozen tower once over `dataset` (with its eval `transform`).

    Image classifiers (`get_image_features(pixel_values)`) give `image_embeds`; CLAP audio classifiers
    (`get_audio_features(input_features, is_longer)`) give `audio_embeds`; audio encoder classifiers with a
    parameter-free pooler (mean pooling) give `pooled_embeds`, the pooler's output. Returns a Dataset with those
    (float32 lists) and `labels`, which the classifier's `forward(image_embeds=...)` / `forward(audio_embeds=...)`
    / `forward(pooled_embeds=...)` consumes directly: each head epoch then costs a matrix multiply.

    Called on every process of a distributed run, each computes its share of the rows and all get the whole
    result; with `cache_dir` it is kept on disk under the fingerprints of the model without its head, the data and
    the transform, and read back by the next run with the same three (`mm_hf.feature_cache.shared_pass`).
    `desc` names the progress bar (None: no bar).
    """
    device = device or next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if hasattr(model, "pooler"):
        if not can_cache_pooled(model):
            raise ValueError("Only a parameter-free pooler (mean pooling) can be cached; attention pooling learns.")
        kind, compute = "pooled_embeds", _pooled_features
    elif hasattr(model, "get_audio_features"):
        kind, compute = "audio_embeds", _tower_features
    else:
        kind, compute = "image_embeds", _tower_features

    def compute_rows(rows: range) -> dict:
        batches = eval_batches(model, dataset.select(rows), transform, batch_size, num_workers, desc)
        return compute(model, batches, device, dtype, kind)

    key = None
    if cache_dir:
        # The head is what a probe trains: its weights (random, zero-shot, a previous fit) change no feature.
        head = model.parts().head if hasattr(model, "parts") else ()
        key = {
            "pass": kind,
            "model": model_fingerprint(model, exclude=head),
            "data": data_fingerprint(dataset),
            "transform": transform_fingerprint(transform),
        }
    columns = shared_pass(len(dataset), compute_rows, desc=desc or kind, cache_dir=cache_dir, key=key)
    return Dataset.from_dict(columns)


def _tower_features(model, batches, device, dtype, key: str) -> dict:
    embeds, labels = [], []
    for batch in batches:
        if key == "audio_embeds":
            is_longer = batch.get("is_longer")
            features = batch["input_features"].to(device=device, dtype=dtype)
            out = model.get_audio_features(features, is_longer.to(device) if is_longer is not None else None)
        else:
            out = model.get_image_features(batch["pixel_values"].to(device=device, dtype=dtype))
        embeds.append(out.float().cpu())
        labels.append(batch["labels"])
    return {key: torch.cat(embeds).numpy(), "labels": torch.cat(labels).numpy()}


def can_cache_pooled(model) -> bool:
    """Whether an audio encoder classifier's pooled features can be cached: its pooler learns nothing.

    Attention pooling learns per-frame scores, so a probe must pool the frames anew at every step: caching would
    have to keep every frame of every clip (frames x hidden floats, e.g. 250 x 512 for 5 s of Whisper-base: 0.5 MB
    a clip, 1 GB for 2000 clips, vs 2 KB pooled), so its backbone runs on every batch instead.
    """
    return not any(p.numel() for p in model.pooler.parameters())


def _pooled_features(model, batches, device, dtype, key: str) -> dict:
    # The pooler's output is captured from the model's own forward, so the cached vector is exactly what the
    # classifier pools (frame masks and all) without a second copy of that logic here.
    pooled = []
    hook = model.pooler.register_forward_hook(lambda module, args, output: pooled.append(output.float().cpu()))
    labels = []
    try:
        for batch in batches:
            labels.append(batch.pop("labels"))
            inputs = {
                k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()
            }
            model(**inputs)
    finally:
        hook.remove()
    return {key: torch.cat(pooled).numpy(), "labels": torch.cat(labels).numpy()}


def classifier_datasets(
    model,
    splits: dict,
    train_transform,
    eval_transform,
    training_args,
    cache_features: bool,
    cache_dir: str | None = None,
) -> dict[str, Dataset]:
    """What the Trainer reads for each split of a classification recipe.

    With `cache_features` (a linear probe of a frozen tower), each split runs through the tower once with
    `eval_transform` (split across the processes; read from / written to `cache_dir`, --features_cache_dir, when
    given) and the head trains on the cached embeddings (no augmentation); otherwise every split decodes on the
    fly, with `train_transform` for "train".
    """
    if cache_features:
        model.to(training_args.device)
        batch_size, workers = training_args.per_device_eval_batch_size, training_args.dataloader_num_workers
        return {
            name: precompute_features(
                model,
                ds,
                eval_transform,
                batch_size,
                workers,
                cache_dir=cache_dir,
                desc=None if training_args.disable_tqdm else f"caching features ({name})",
            )
            for name, ds in splits.items()
        }
    return {
        name: ds.with_transform(train_transform if name == "train" else eval_transform) for name, ds in splits.items()
    }
