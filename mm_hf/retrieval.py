"""Contrastive training inputs and retrieval evaluation for dual encoders (image–text; audio–text later).

Evaluation embeds every item once and every caption once, then ranks with the chunked `retrieval`
evaluate module, so memory is O((items + captions) × dim) plus one chunk of similarities.
"""

import random

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import default_data_collator

from .data.transforms import build_image_transform
from .metrics import load_metric


class PairTransform:
    """`Dataset.with_transform` for image–captions rows -> pixel_values + input_ids + attention_mask.

    Training draws one of an image's captions at random each time it is seen (so every caption is used
    over epochs, as in open_clip's COCO loaders); evaluation takes the first. Captions are padded and
    truncated to `max_length` tokens, so over-long captions never break a batch.
    """

    def __init__(
        self, image_processor, tokenizer, *, train: bool, image_column: str, max_length: int, augment: bool = False
    ):
        # Augmentation (random resized crop, no flip: captions say "left" and "right") is opt-in.
        self.images = build_image_transform(
            image_processor, train=train and augment, image_column=image_column, crop_scale=(0.8, 1.0), hflip=False
        )
        self.tokenizer, self.train, self.max_length = tokenizer, train, max_length

    def __call__(self, batch: dict) -> dict:
        captions = batch.pop("captions")
        picked = [random.choice(c) if self.train else c[0] for c in captions]
        batch = self.images(batch)
        batch.update(tokenize(self.tokenizer, picked, self.max_length))
        return batch


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask")}


@torch.no_grad()
def embed_images(model, dataset: Dataset, transform, batch_size: int, num_workers: int = 0) -> torch.Tensor:
    """(num_items, dim) image embeddings of `dataset` through its eval `transform`."""
    device, dtype = _device_dtype(model)
    loader = DataLoader(
        dataset.with_transform(transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=default_data_collator,
    )
    return torch.cat([model.get_image_features(b["pixel_values"].to(device, dtype)).float().cpu() for b in loader])


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], batch_size: int, max_length: int) -> torch.Tensor:
    """(num_texts, dim) text embeddings."""
    device, _ = _device_dtype(model)
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenize(tokenizer, texts[start : start + batch_size], max_length)
        out.append(model.get_text_features(**{k: v.to(device) for k, v in enc.items()}).float().cpu())
    return torch.cat(out)


def evaluate_retrieval(
    model,
    dataset: Dataset,
    image_processor,
    tokenizer,
    *,
    image_column: str,
    batch_size: int,
    max_length: int,
    num_workers: int = 0,
    prefix: str = "",
) -> dict:
    """Image→text and text→image Recall@1/5/10, median and mean rank over every caption of `dataset`."""
    was_training = model.training
    model.eval()
    images = embed_images(
        model,
        dataset.remove_columns("captions"),
        build_image_transform(image_processor, train=False, image_column=image_column),
        batch_size,
        num_workers,
    )
    captions = dataset["captions"]
    texts = [c for item in captions for c in item]
    owners = [i for i, item in enumerate(captions) for _ in item]
    text_embeds = embed_texts(model, tokenizer, texts, batch_size, max_length)
    model.train(was_training)
    scores = load_metric("retrieval").compute(
        predictions=text_embeds.numpy(), references=owners, image_embeds=images.numpy()
    )
    return {f"{prefix}{k}": v for k, v in scores.items()}


def _device_dtype(model):
    param = next(model.parameters())
    return param.device, param.dtype


def zeroshot_classification(backbone, processor, folder: str, *, templates, batch_size: int, prefix: str = "") -> dict:
    """Zero-shot accuracy/macro-F1 of `backbone` on class folders: how much general ability is kept."""
    from .data.loading import _read_class_folder
    from .models import build_clip_classifier

    data = _read_class_folder(folder, "image", "label")
    names = sorted(set(data["label"]))
    classifier = build_clip_classifier(
        backbone, dict(enumerate(names)), tokenizer=processor.tokenizer, prompt_templates=templates
    ).eval()
    images = embed_images(
        classifier,
        data.remove_columns("label"),
        build_image_transform(processor.image_processor, train=False),
        batch_size,
    )
    with torch.no_grad():
        predictions = classifier.classifier(images.to(next(classifier.parameters()).device)).argmax(-1).cpu()
    report = load_metric("classification_report").compute(
        predictions=predictions.tolist(), references=[names.index(v) for v in data["label"]], num_labels=len(names)
    )
    return {f"{prefix}accuracy": report["accuracy"], f"{prefix}macro_f1": report["macro_avg"]["f1"]}
