"""Contrastive training inputs and retrieval evaluation for dual encoders: image–text and audio–text.

What differs between the two modalities lives in one small class each (`ImageMedia`, `AudioMedia`, made by
`build_media`): how the media column is validated, decoded into model inputs and embedded, and how metrics
and the model card name it. Caption sampling, tokenisation, evaluation and ranking are shared.

Evaluation embeds every item once and every caption once, then ranks with the chunked `retrieval`
evaluate module, so memory is O((items + captions) × dim) plus one chunk of similarities.
"""

import random

import torch
import xxhash
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import default_data_collator

from .data.audio import AudioTransform, check_audio
from .data.images import check_images
from .data.loading import read_class_folder
from .data.transforms import attach_pixel_normaliser, build_image_transform
from .errors import UserError
from .feature_cache import (
    data_fingerprint,
    model_fingerprint,
    process_group,
    progress,
    shared_pass,
    transform_fingerprint,
)
from .metrics import load_metric
from .models import build_dual_encoder_classifier

# What a dual encoder here pairs with text (--modality); not the fusion model's MODALITIES.
RETRIEVAL_MEDIA = ("image", "audio")


class ImageMedia:
    """Images for CLIP-style dual encoders (CLIP, SigLIP, VisionTextDualEncoder): `pixel_values`."""

    name, plural = "image", "images"
    task, pipeline_tag = "image-text retrieval", "zero-shot-image-classification"
    prompt_templates = ("a photo of a {}.",)  # zero-shot retention check

    def __init__(self, processor, column: str = "image"):
        self.image_processor, self.column = processor.image_processor, column

    def check(self, dataset: Dataset, *, skip_bad: bool, num_proc: int | None = None, split_name: str = "train"):
        """`check_images` on the column: (dataset, bad samples)."""
        return check_images(dataset, self.column, skip_bad=skip_bad, num_proc=num_proc, split_name=split_name)

    def transform(self, *, train: bool, augment: bool = False, uint8: bool = False):
        # Augmentation (random resized crop, no flip: captions say "left" and "right") is opt-in. `uint8`: pixels
        # for a model with `attach_pixel_normaliser` (the recipe's Trainer batches).
        return build_image_transform(
            self.image_processor,
            train=train and augment,
            image_column=self.column,
            crop_scale=(0.8, 1.0),
            hflip=False,
            uint8=uint8,
        )

    def accept_uint8(self, model) -> bool:
        """Let `model` take the uint8 pixels of `transform(uint8=True)` (`attach_pixel_normaliser`)."""
        attach_pixel_normaliser(model, self.image_processor)
        return True

    @staticmethod
    def embed(model, batch: dict) -> torch.Tensor:
        return model.get_image_features(batch["pixel_values"])


class AudioMedia:
    """Audio clips for CLAP: `input_features` + `is_longer`, decoded at the feature extractor's rate.

    Clips are cut to `max_length_seconds`, and always to the model's own window (`AudioTransform`: a random
    window in training, the first one in evaluation), so CLAP's extractor never crops at random itself.
    """

    name, plural = "audio", "clips"
    task, pipeline_tag = "audio-text retrieval", "zero-shot-audio-classification"
    prompt_templates = None  # build_dual_encoder_classifier's CLAP ensemble: "This is a sound of {}." + 2

    def __init__(self, processor, column: str = "audio", max_length_seconds: float | None = None):
        self.feature_extractor, self.column = processor.feature_extractor, column
        self.max_length_seconds = max_length_seconds

    def check(self, dataset: Dataset, *, skip_bad: bool, num_proc: int | None = None, split_name: str = "train"):
        """`check_audio` on the column at the model's sampling rate: (dataset, bad samples)."""
        rate = self.feature_extractor.sampling_rate
        return check_audio(
            dataset, self.column, sampling_rate=rate, skip_bad=skip_bad, num_proc=num_proc, split_name=split_name
        )

    @staticmethod
    def accept_uint8(model) -> bool:  # noqa: ARG004 (audio features have no uint8 form)
        return False

    def transform(self, *, train: bool, augment: bool = False, uint8: bool = False):  # noqa: ARG002 (no pixels)
        audio = AudioTransform(
            self.feature_extractor,
            audio_column=self.column,
            max_length_seconds=self.max_length_seconds,
            train=train,
            augment=augment,
        )
        return _NotLonger(audio)

    @staticmethod
    def embed(model, batch: dict) -> torch.Tensor:
        return model.get_audio_features(batch["input_features"], batch.get("is_longer"))


class _NotLonger:
    """`AudioTransform` + CLAP's `is_longer` flag, False: every clip is already cut to the model's window.

    Fused CLAP checkpoints read the flag (and fail without it); the unfused ones ignore it.
    """

    def __init__(self, audio: AudioTransform):
        self.audio = audio

    def __call__(self, batch: dict) -> dict:
        out = self.audio(batch)
        out["is_longer"] = [torch.tensor([False])] * len(out[self.audio.input_name])
        return out


def resolve_modality(modality: str, config) -> str:
    """ "auto" -> "audio" for an audio–text model (a config with `audio_config`, i.e. CLAP), else "image";
    an explicit choice the model cannot embed is an error."""
    audio = getattr(config, "audio_config", None) is not None
    if modality == "auto":
        return "audio" if audio else "image"
    if modality not in RETRIEVAL_MEDIA:
        raise UserError(f"--modality must be auto, image or audio, got {modality!r}")
    if (modality == "audio") != audio:
        kind = "an audio–text (CLAP)" if audio else "an image–text"
        raise UserError(f"--modality {modality}: the model ({type(config).__name__}) is {kind} dual encoder")
    return modality


def build_media(modality: str, processor, column: str, *, max_length_seconds: float | None = None):
    """The `ImageMedia` or `AudioMedia` of `modality` reading `column`, with the processor's image processor
    or feature extractor."""
    if modality == "audio":
        return AudioMedia(processor, column, max_length_seconds)
    if modality == "image":
        return ImageMedia(processor, column)
    raise ValueError(f"modality must be one of {RETRIEVAL_MEDIA}, got {modality!r}")


def load_dual_encoder(
    model_name_or_path: str,
    *,
    vision_model_name_or_path: str | None = None,
    text_model_name_or_path: str | None = None,
    projection_dim: int = 512,
    **hub_kwargs,
):
    """(backbone, processor, base model name): a pretrained dual encoder (CLIP, SigLIP, CLAP, ...) with its
    processor, or, given both a vision and a text encoder, a new VisionTextDualEncoderModel assembled from
    them (its projections newly initialised). `hub_kwargs` go to every `from_pretrained`."""
    from transformers import (
        AutoImageProcessor,
        AutoModel,
        AutoProcessor,
        AutoTokenizer,
        VisionTextDualEncoderModel,
        VisionTextDualEncoderProcessor,
    )

    if not (vision_model_name_or_path and text_model_name_or_path):
        backbone = AutoModel.from_pretrained(model_name_or_path, **hub_kwargs)
        return backbone, AutoProcessor.from_pretrained(model_name_or_path, **hub_kwargs), model_name_or_path
    backbone = VisionTextDualEncoderModel.from_vision_text_pretrained(
        vision_model_name_or_path, text_model_name_or_path, projection_dim=projection_dim
    )
    processor = VisionTextDualEncoderProcessor(
        AutoImageProcessor.from_pretrained(vision_model_name_or_path, **hub_kwargs),
        AutoTokenizer.from_pretrained(text_model_name_or_path, **hub_kwargs),
    )
    return backbone, processor, f"{vision_model_name_or_path} + {text_model_name_or_path}"


class PairTransform:
    """`Dataset.with_transform` for media–captions rows -> media inputs + input_ids + attention_mask.

    Training draws one of an item's captions at random each time it is seen (so every caption is used
    over epochs, as in open_clip's COCO loaders); evaluation takes the first. Captions are padded and
    truncated to `max_length` tokens, so over-long captions never break a batch.
    """

    def __init__(self, media, tokenizer, *, train: bool, max_length: int, augment: bool = False, uint8: bool = False):
        self.media = media.transform(train=train, augment=augment, uint8=uint8)
        self.tokenizer, self.train, self.max_length = tokenizer, train, max_length

    def __call__(self, batch: dict) -> dict:
        captions = batch.pop("captions")
        picked = [random.choice(c) if self.train else c[0] for c in captions]
        batch = self.media(batch)
        batch.update(tokenize(self.tokenizer, picked, self.max_length))
        return batch


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask")}


@torch.no_grad()
def embed_media(
    model,
    dataset: Dataset,
    media,
    batch_size: int,
    num_workers: int = 0,
    *,
    cache_dir: str | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """(num_items, dim) image or audio embeddings of `dataset` through the media's eval transform.

    Called on every process of a distributed run, each embeds its share of the items and all get every row;
    with `cache_dir` the embeddings are kept on disk under the model's, the data's and the transform's
    fingerprints (`mm_hf.feature_cache.shared_pass`). `desc`: a progress bar on the main process.
    """
    device, dtype = _device_dtype(model)
    transform = media.transform(train=False)

    def compute_rows(rows: range) -> dict:
        loader = DataLoader(
            dataset.select(rows).with_transform(transform),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=default_data_collator,
        )
        out = []
        for batch in progress(loader, desc=desc or "", total=len(loader), enabled=desc is not None):
            batch = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}
            out.append(media.embed(model, batch).float().cpu())
        return {"embeds": torch.cat(out).numpy()}

    key = None
    if cache_dir:
        key = {
            "pass": f"{media.name}_embeds",
            "model": model_fingerprint(model),
            "data": data_fingerprint(dataset),
            "transform": transform_fingerprint(transform),
        }
    columns = shared_pass(
        len(dataset), compute_rows, desc=desc or f"{media.name} embeddings", cache_dir=cache_dir, kind="media", key=key
    )
    return torch.from_numpy(columns["embeds"])


@torch.no_grad()
def embed_texts(
    model,
    tokenizer,
    texts: list[str],
    batch_size: int,
    max_length: int,
    *,
    cache_dir: str | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """(num_texts, dim) text embeddings; split across processes and cached as `embed_media`."""
    device, _ = _device_dtype(model)

    def compute_rows(rows: range) -> dict:
        out = []
        starts = range(rows.start, rows.stop, batch_size)
        for start in progress(starts, desc=desc or "", total=len(starts), enabled=desc is not None):
            enc = tokenize(tokenizer, texts[start : min(start + batch_size, rows.stop)], max_length)
            out.append(model.get_text_features(**{k: v.to(device) for k, v in enc.items()}).float().cpu())
        return {"embeds": torch.cat(out).numpy()}

    key = None
    if cache_dir:
        texts_hash = xxhash.xxh3_128("\x00".join(texts).encode()).hexdigest()
        key = {
            "pass": "text_embeds",
            "model": model_fingerprint(model),
            "data": texts_hash,
            "transform": transform_fingerprint((tokenizer, max_length)),
        }
    columns = shared_pass(
        len(texts), compute_rows, desc=desc or "text embeddings", cache_dir=cache_dir, kind="text", key=key
    )
    return torch.from_numpy(columns["embeds"])


def evaluate_retrieval(
    model,
    dataset: Dataset,
    media,
    tokenizer,
    *,
    batch_size: int,
    max_length: int,
    num_workers: int = 0,
    prefix: str = "",
    cache_dir: str | None = None,
    progress_bars: bool = False,
    ranks: bool = False,
) -> dict:
    """Media→text and text→media Recall@1/5/10, median and mean rank over every caption of `dataset`.

    `ranks`: also each query's rank (`{prefix}<modality>_to_text_ranks` per item, `{prefix}text_to_<modality>_ranks`
    per caption, int arrays), from which mm_hf.evaluate bootstraps the recalls over queries.

    Keys name the modality: `{prefix}image_to_text_recall@1`, or `{prefix}audio_to_text_recall@1`, ...
    In a distributed run call it on every process: the embedding passes are split across them, the ranking is
    done by the main process, and the others get {}.
    """
    was_training = model.training
    model.eval()
    bar = f"embedding {media.plural}" if progress_bars else None
    items = embed_media(
        model, dataset.remove_columns("captions"), media, batch_size, num_workers, cache_dir=cache_dir, desc=bar
    )
    captions = dataset["captions"]
    texts = [c for item in captions for c in item]
    owners = [i for i, item in enumerate(captions) for _ in item]
    bar = "embedding captions" if progress_bars else None
    text_embeds = embed_texts(model, tokenizer, texts, batch_size, max_length, cache_dir=cache_dir, desc=bar)
    model.train(was_training)
    if process_group()[0] != 0:
        return {}
    scores = load_metric("retrieval").compute(
        predictions=text_embeds.numpy(),
        references=owners,
        media_embeds=items.numpy(),
        modality=media.name,
        return_ranks=ranks,
    )
    return {f"{prefix}{k}": v for k, v in scores.items()}


def measure_retrieval(
    model,
    dataset: Dataset,
    media,
    tokenizer,
    *,
    batch_size: int,
    max_length: int,
    prefix: str = "",
    zeroshot_eval_dir: str | None = None,
    prompt_templates=None,
    cache_dir: str | None = None,
    progress_bars: bool = False,
) -> dict:
    """`evaluate_retrieval` of the (contrastive) `model`, plus, with `zeroshot_eval_dir`, the zero-shot
    classification of its backbone (`{prefix}zeroshot_cls_accuracy`, ...) and `{prefix}samples`.

    Call on every process of a distributed run (the embedding passes are split across them); the others get {}.
    """
    metrics = evaluate_retrieval(
        model,
        dataset,
        media,
        tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        cache_dir=cache_dir,
        progress_bars=progress_bars,
    )
    if zeroshot_eval_dir:
        metrics.update(
            zeroshot_classification(
                model.backbone,
                tokenizer,
                media,
                zeroshot_eval_dir,
                batch_size=batch_size,
                templates=prompt_templates,
                prefix="zeroshot_cls_",
                cache_dir=cache_dir,
            )
        )
    if process_group()[0] != 0:
        return {}
    metrics["samples"] = len(dataset)
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def _device_dtype(model):
    param = next(model.parameters())
    return param.device, param.dtype


def zeroshot_classification(
    backbone,
    tokenizer,
    media,
    folder: str,
    *,
    batch_size: int,
    templates=None,
    prefix: str = "",
    cache_dir: str | None = None,
) -> dict:
    """Zero-shot accuracy/macro-F1 of `backbone` on class folders of images or audio clips: how much general
    ability is kept. `templates` default to the media's (`{}` = the folder name). In a distributed run call it on
    every process (the embedding pass is split across them): the others get {}."""
    data = read_class_folder(folder, media.column, "label")
    names = sorted(set(data["label"]))
    classifier = build_dual_encoder_classifier(
        backbone, dict(enumerate(names)), tokenizer=tokenizer, prompt_templates=templates or media.prompt_templates
    ).eval()
    embeds = embed_media(classifier, data.remove_columns("label"), media, batch_size, cache_dir=cache_dir)
    if process_group()[0] != 0:
        return {}
    with torch.no_grad():
        predictions = classifier.classifier(embeds.to(next(classifier.parameters()).device)).argmax(-1).cpu()
    report = load_metric("classification_report").compute(
        predictions=predictions.tolist(), references=[names.index(v) for v in data["label"]], num_labels=len(names)
    )
    return {f"{prefix}accuracy": report["accuracy"], f"{prefix}macro_f1": report["macro_avg"]["f1"]}
