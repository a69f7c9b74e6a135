"""Precomputing frozen-backbone image features so a linear probe trains its head without the backbone."""

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import default_data_collator


@torch.no_grad()
def precompute_image_features(
    model, dataset: Dataset, transform, batch_size: int = 64, num_workers: int = 0, device=None
) -> Dataset:
    """Run `model.get_image_features` once over `dataset` (with its eval `transform`).

    Returns a Dataset with `image_embeds` (float32 lists) and `labels`, which the classifier's
    `forward(image_embeds=...)` consumes directly: each head epoch then costs a matrix multiply.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset.with_transform(transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=default_data_collator,
    )
    embeds, labels = [], []
    for batch in loader:
        pixel_values = batch["pixel_values"].to(device=device, dtype=next(model.parameters()).dtype)
        embeds.append(model.get_image_features(pixel_values).float().cpu())
        labels.append(batch["labels"])
    model.train(was_training)
    return Dataset.from_dict({"image_embeds": torch.cat(embeds).numpy(), "labels": torch.cat(labels).numpy()})
