"""Frozen encoders of a fusion model: their outputs cached once, and the feature standardisation fitted on them.

A frozen encoder gives the same output for the same input every epoch, so the fusion recipes run each sample
through each frozen encoder once (`cache_encoder_outputs`) and train the pooling, projections, fusion and heads
on the cache: a `<modality>_embeds` column holding `MultimodalFusionModel.encoder_features`, i.e. the pooled
vector for a parameter-free pooling (cls, mean, max, pooler) or the token states (+ `<modality>_embeds_mask`) for
a learned one (attention, transformer). Encoders that train (top_k, full, lora) still read decoded inputs.

Augmentation: a cached modality's inputs go through the eval preprocessing once, so they are not augmented
(re-running the encoder on fresh random crops every epoch is exactly the cost the cache removes); modalities
whose encoder trains keep their augmentation, and `--precompute_features false` brings it back for all of them.
Modality dropout and missing modalities are unaffected: both act on `modality_mask` after the encoders.
"""

import logging

import torch

from .feature_cache import data_fingerprint, model_fingerprint, shared_pass, transform_fingerprint
from .features import eval_batches
from .models.configuration_multimodal_fusion import ENCODER_OF

logger = logging.getLogger(__name__)

# The key of each modality's encoder in `MultimodalFusionModel.encoders`: its config attribute without "_config".
ENCODER_KEY_OF = {modality: attribute.removesuffix("_config") for modality, attribute in ENCODER_OF.items()}
# The batch keys each modality's encoder reads: dropped from a batch once the modality comes from the cache.
RAW_INPUTS = {
    "image": ("pixel_values",),
    "video": ("pixel_values_videos",),
    "text": ("input_ids", "attention_mask", "token_type_ids"),
    "audio": ("input_values", "input_features", "audio_attention_mask", "is_longer"),
}


def fusion_base(model):
    """The `MultimodalFusionModel` inside a fusion classifier, a PeftModel wrapping one included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.multimodal


def frozen_modalities(model) -> list[str]:
    """The model's modalities whose encoder has no trainable parameter (after the finetune strategy is applied)."""
    multimodal = fusion_base(model)
    return [
        m
        for m in multimodal.modalities
        if m in ENCODER_KEY_OF and not any(p.requires_grad for p in multimodal.encoders[ENCODER_KEY_OF[m]].parameters())
    ]


class CachedInputs:
    """Batch transform: `transform` (a `MultimodalTransform`) for the modalities computed on the fly, the cached
    `<modality>_embeds` (+ `_embeds_mask`) columns for the `cached` ones.

    A cached modality's source column is hidden from `transform` (so no image is decoded, no text tokenised for
    it) and its availability comes from the `<modality>_present` column written with the cache.
    """

    def __init__(self, transform, modalities: list[str], cached: list[str]):
        self.transform, self.modalities, self.cached = transform, list(modalities), list(cached)

    def __call__(self, batch: dict) -> dict:
        size = len(next(iter(batch.values())))
        hidden = {m: [None] * size for m in self.cached if m in batch}
        settings = getattr(getattr(self.transform, "processor", None), "settings", None)
        if getattr(settings, "audio_from_video", False) and "audio" in self.modalities and "audio" not in self.cached:
            hidden.pop("video", None)  # the audio, computed on the fly, is read from the video files
        out = self.transform({**batch, **hidden})
        for modality in self.cached:
            for key in RAW_INPUTS[modality]:
                out.pop(key, None)
            index = self.modalities.index(modality)
            for row, present in zip(out["modality_mask"], batch[f"{modality}_present"], strict=True):
                row[index] = int(present)
            for key in (f"{modality}_embeds", f"{modality}_embeds_mask"):
                if key in batch:
                    out[key] = [torch.as_tensor(value) for value in batch[key]]
        return out


@torch.no_grad()
def cache_encoder_outputs(
    model,
    dataset,
    transform,
    modalities: list[str],
    batch_size: int,
    device,
    num_workers=0,
    *,
    cache_dir: str | None = None,
    desc: str | None = "encoding frozen modalities",
):
    """`dataset` plus, for each of `modalities`, `<modality>_embeds` (float32), `<modality>_embeds_mask` (learned
    pooling of a masked sequence only) and `<modality>_present`: each row through each encoder exactly once, in
    eval mode, with the eval `transform`. Feed the result through `CachedInputs`.

    Called on every process of a distributed run, each encodes its share of the rows and all get every row; with
    `cache_dir` (--features_cache_dir) the outputs are kept on disk under the fingerprints of the cached encoders
    (weights, config, pooling kind), the data and the transform, so runs that change only what trains after the
    encoders (fusion, heads, learning rate...) read them back (`mm_hf.feature_cache.shared_pass`).
    """
    multimodal = fusion_base(model)

    def compute_rows(rows: range) -> dict:
        columns: dict[str, list] = {}
        for batch in eval_batches(multimodal, dataset.select(rows), transform, batch_size, num_workers, desc):
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            for modality in modalities:
                features, mask = multimodal.encoder_features(modality, inputs)
                columns.setdefault(f"{modality}_embeds", []).append(features.float().cpu())
                if mask is not None:
                    columns.setdefault(f"{modality}_embeds_mask", []).append(mask.cpu())
                present = batch["modality_mask"][:, multimodal.modalities.index(modality)].bool()
                columns.setdefault(f"{modality}_present", []).append(present)
        return {name: torch.cat(parts).numpy() for name, parts in columns.items()}

    key = None
    if cache_dir:
        key = {
            "pass": "fusion_encoders",
            "encoders": {m: encoder_fingerprint(multimodal, m) for m in modalities},
            "data": data_fingerprint(dataset),
            "transform": transform_fingerprint(transform),
        }
    columns = shared_pass(
        len(dataset), compute_rows, desc=desc or "fusion encoders", cache_dir=cache_dir, kind="fusion", key=key
    )
    for name, values in columns.items():
        # Arrow takes rows of 1-D arrays as they are; deeper rows (frames, tokens) as nested lists.
        dataset = dataset.add_column(name, list(values) if values.ndim <= 2 else values.tolist())
    return dataset


def encoder_fingerprint(multimodal, modality: str) -> str:
    """What a cached `<modality>_embeds` column depends on: the modality's encoder (weights and config) and its
    pooling kind (pooled for a parameter-free one, token states for a learned one, whose weights do not matter)."""
    pooler = multimodal.poolers[modality]
    encoder = model_fingerprint(multimodal.encoders[ENCODER_KEY_OF[modality]])
    return f"{encoder}:{pooler.kind}:{'tokens' if pooler.learned else 'pooled'}"


@torch.no_grad()
def fit_feature_statistics(model, dataset, transform, batch_size: int, device, max_samples: int | None = 1024, seed=0):
    """Fit the `FeatureStandardizer` of every modality whose encoder is frozen on the pooled features of the
    present samples among (up to `max_samples` random rows of) the training `dataset`, read through `transform`
    with the model in eval mode: cached embeddings where the dataset has them, one pass of the encoders otherwise.
    Returns the number of rows used per modality.

    Encoders that train (full, top_k, lora) keep the identity: statistics taken before training describe features
    that training then moves, and dividing by an untrained encoder's small spread amplifies every change of its
    output. `make demo-fusion` (small random ViT trained, MiniLM frozen), click test ROC-AUC over seeds 42/1/2:
    0.786/0.780/0.834 with the trained ViT standardised, 0.811/0.811/0.834 without (10 epochs).
    """
    multimodal = fusion_base(model)
    modalities = [m for m in frozen_modalities(model) if m in multimodal.standardizers]
    if not modalities or len(dataset) < 2:
        return {}
    if max_samples is not None and len(dataset) > max_samples:
        dataset = dataset.shuffle(seed=seed).select(range(max_samples))
    pooled: dict[str, list] = {m: [] for m in modalities}
    for batch in eval_batches(multimodal, dataset, transform, batch_size):
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        for modality in modalities:
            if f"{modality}_embeds" in inputs:
                features, mask = inputs[f"{modality}_embeds"], inputs.get(f"{modality}_embeds_mask")
            else:
                features, mask = multimodal.encoder_features(modality, inputs)
            dtype = multimodal.projections[modality][0].weight.dtype
            vectors = multimodal.pooled_features(modality, features.to(dtype), mask)
            present = inputs["modality_mask"][:, multimodal.modalities.index(modality)].bool()
            pooled[modality].append(vectors[present].flatten(0, -2).float())
    counts = {}
    for modality, parts in pooled.items():
        rows = torch.cat(parts)
        if rows.shape[0] >= 2:
            multimodal.standardizers[modality].fit(rows)
        counts[modality] = int(rows.shape[0])
    return counts
