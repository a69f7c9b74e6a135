"""The sharded passes of mm_hf.feature_cache on tiny models: run by tests/test_feature_cache.py in one process and
under `torchrun --nproc_per_node 2` (gloo), which must give the same arrays.

argv: tiny dual encoder folder, tiny encoders' folder (vision, text), digits train folder, XOR jsonl, output .npz,
[features cache folder]. Writes the .npz from the main process.
"""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoModel, AutoProcessor

from mm_hf.data.loading import read_class_folder
from mm_hf.data.transforms import build_image_transform
from mm_hf.features import precompute_features
from mm_hf.fusion_features import cache_encoder_outputs
from mm_hf.models import ContrastiveDualEncoderModel, build_dual_encoder_classifier, build_fusion_classifier
from mm_hf.models.tiny import build_tiny_encoders  # noqa: F401  (the caller builds them)
from mm_hf.processing import MultimodalProcessor, ProcessorSettings
from mm_hf.retrieval import ImageMedia, embed_media, embed_texts

ROWS = 21  # odd: the two processes' shards differ in size (11 + 10), and batches of 4 leave a partial one
TASK = [{"name": "label", "problem_type": "single_label_classification", "labels": ["no", "yes"]}]


def compute_all(vtde: str, encoders: str, digits_train: str, xor_file: str, cache_dir: str | None = None) -> dict:
    """Every sharded pass once: a linear probe's features, retrieval image and text embeddings, frozen fusion
    encoder outputs (text by attention pooling: cached as token states with a mask)."""
    torch.manual_seed(0)
    images = read_class_folder(digits_train, "image", "label").select(range(ROWS))
    names = sorted(set(images["label"]))
    labelled = images.add_column("labels", [names.index(v) for v in images["label"]]).remove_columns("label")
    processor = AutoProcessor.from_pretrained(vtde)
    transform = build_image_transform(processor.image_processor, train=False, image_column="image")
    classifier = build_dual_encoder_classifier(vtde, dict(enumerate(names)), head_init="random")
    out = {}
    features = precompute_features(classifier, labelled, transform, 4, cache_dir=cache_dir, desc=None)
    out["image_embeds"], out["labels"] = np.asarray(features["image_embeds"]), np.asarray(features["labels"])
    backbone = ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(vtde)).eval()
    media = ImageMedia(processor, "image")
    out["media"] = embed_media(backbone, images.remove_columns("label"), media, 4, cache_dir=cache_dir).numpy()
    texts = [f"a photo of {name}" for name in images["label"]]
    out["texts"] = embed_texts(backbone, processor.tokenizer, texts, 4, 12, cache_dir=cache_dir).numpy()

    from datasets import load_dataset

    rows = load_dataset("json", data_files=xor_file, split="train").select(range(ROWS))
    base = os.path.dirname(xor_file)
    rows = rows.map(lambda r: {"image": os.path.join(base, r["image"]) if r["image"] else None})
    rows = rows.add_column("labels", [int(v == "yes") for v in rows["label"]])
    paths = {"image": os.path.join(encoders, "tiny-vit"), "text": os.path.join(encoders, "tiny-bert")}
    fusion = build_fusion_classifier(paths, TASK, hidden_size=16, text_pooling="attention")
    settings = ProcessorSettings(modalities=["image", "text"], max_length=12)
    eval_transform = MultimodalProcessor.from_encoders(paths, settings).transform(train=False)
    cached = cache_encoder_outputs(
        fusion, rows, eval_transform, ["image", "text"], 4, "cpu", cache_dir=cache_dir, desc=None
    )
    for column in ("image_embeds", "text_embeds", "text_embeds_mask", "image_present"):
        out[f"fusion_{column}"] = np.asarray(cached[column])
    return out


if __name__ == "__main__":
    dist.init_process_group("gloo")
    result = compute_all(*sys.argv[1:5], *sys.argv[6:7])
    if dist.get_rank() == 0:
        np.savez(sys.argv[5], **result)
    dist.destroy_process_group()
