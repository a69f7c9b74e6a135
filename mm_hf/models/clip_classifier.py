"""Building CLIP-family classifiers from a pretrained dual encoder (image: CLIP/SigLIP/VTDE; audio: CLAP),
and their zero-shot heads."""

import gc
import logging
import math
from collections.abc import Sequence

import torch
from transformers import AutoModel

from ..errors import UserError
from .configuration_clip_classifier import ClapClassifierConfig, ClipClassifierConfig
from .modeling_clip_classifier import ClapClassifierForAudioClassification, ClipClassifierForImageClassification
from .text_length import text_max_length
from .towers import drop_tower

logger = logging.getLogger(__name__)

# The 7-template ensemble the CLIP authors selected for ImageNet: a few varied prompts beat 80.
DEFAULT_PROMPT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
# CLAP was trained on captions such as "This is a sound of dog barking"; the paper's zero-shot prompt leads.
DEFAULT_AUDIO_PROMPT_TEMPLATES = (
    "This is a sound of {}.",
    "a recording of {}.",
    "the sound of {}.",
)


def is_audio_text_config(config) -> bool:
    """Whether `config` describes an audio–text dual encoder (CLAP): a text tower next to an audio tower."""
    return getattr(config, "audio_config", None) is not None and getattr(config, "text_config", None) is not None


def prompt_text_features(backbone, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """(len(prompts), embed_dim) un-normalised text embeddings of `prompts` by the dual encoder's text tower, with
    gradients when enabled (FLYP trains through it: mm_hf.flyp)."""
    device = next(backbone.parameters()).device
    # Long prompts are cut to what the text tower has positions for (a longer one would fail inside it).
    max_length = text_max_length(tokenizer, backbone.config)
    # SigLIP was trained on fixed-length padded text; CLIP-style towers pool the EOS token and accept any padding.
    fixed_length = getattr(backbone.config, "model_type", "").startswith("siglip")
    padding = {"padding": "max_length", "max_length": min(64, max_length or 64)} if fixed_length else {"padding": True}
    if not fixed_length and max_length is not None:
        padding["max_length"] = max_length
    enc = tokenizer(list(prompts), truncation=True, return_tensors="pt", **padding)
    inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    out = backbone.get_text_features(**inputs)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def class_text_embeddings(
    backbone, tokenizer, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Prompt-ensembled text embeddings, (num_classes, embed_dim), each row unit-norm.

    For each class the normalised embeddings of all its prompts are averaged, as in CLIP.
    """
    prompts = [t.format(name) for name in class_names for t in templates]
    chunks = [
        prompt_text_features(backbone, tokenizer, prompts[start : start + batch_size])
        for start in range(0, len(prompts), batch_size)
    ]
    emb = torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)
    emb = emb.view(len(class_names), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


def build_dual_encoder_classifier(
    model_name_or_path,
    id2label: dict[int, str],
    *,
    tokenizer=None,
    head_init: str = "zeroshot",
    prompt_templates: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    head_dropout: float = 0.0,
    learn_logit_scale: bool = True,
    **from_pretrained_kwargs,
) -> ClipClassifierForImageClassification | ClapClassifierForAudioClassification:
    """Wrap a pretrained dual encoder into a classifier over `id2label`: an image classifier for image–text
    models, an audio classifier for audio–text ones (CLAP, recognised by `get_audio_features`).

    head_init="zeroshot" (needs `tokenizer`) sets the head to the prompt-ensembled text embeddings of
    `class_names` (default: the label names) and the temperature to the backbone's own; "random" gives
    a plain randomly initialised head.
    """
    if head_init not in ("zeroshot", "random"):
        raise ValueError(f"head_init must be 'zeroshot' or 'random', got {head_init!r}")
    # An already loaded dual encoder is wrapped as it is, text tower included (e.g. mid-training retention checks
    # on the model being trained).
    given = isinstance(model_name_or_path, torch.nn.Module)
    backbone = model_name_or_path if given else AutoModel.from_pretrained(model_name_or_path, **from_pretrained_kwargs)
    if given:
        model_name_or_path = backbone.name_or_path
    audio = hasattr(backbone, "get_audio_features")
    for method in ("get_audio_features" if audio else "get_image_features", "get_text_features"):
        if not hasattr(backbone, method):
            raise UserError(
                f"--model_name_or_path {model_name_or_path} loads as {type(backbone).__name__}, which has no `{method}`: the classifier "
                "needs a dual image-text or audio-text encoder (CLIPModel, SiglipModel, VisionTextDualEncoderModel, "
                "ClapModel, ...)."
            )
    id2label = {int(k): str(v) for k, v in id2label.items()}
    text, scale = None, None
    if head_init == "zeroshot":
        if tokenizer is None:
            raise UserError(
                f"--head_init zeroshot needs the tokenizer of {model_name_or_path}; or pass --head_init random"
            )
        names = list(class_names) if class_names is not None else [id2label[i] for i in range(len(id2label))]
        if not prompt_templates:
            prompt_templates = DEFAULT_AUDIO_PROMPT_TEMPLATES if audio else DEFAULT_PROMPT_TEMPLATES
        text = class_text_embeddings(backbone, tokenizer, names, prompt_templates)
        # CLAP keeps one temperature per direction; audio->text logits use `logit_scale_a`.
        scale = getattr(backbone, "logit_scale", getattr(backbone, "logit_scale_a", None))
        scale = scale.item() if scale is not None else None
        if not given:
            # The text pass read the text tower's weights into memory, where they would stay as long as any
            # weight of the same memory-mapped file is alive: the classifier gets a fresh load instead, whose
            # text tower is dropped unread (CLIP ViT-B/32: 250 MB less resident in every step of the run).
            del backbone
            gc.collect()
            backbone = AutoModel.from_pretrained(model_name_or_path, **from_pretrained_kwargs)
    if not given:
        drop_tower(backbone, "text")
    config_class, model_class = (
        (ClapClassifierConfig, ClapClassifierForAudioClassification)
        if audio
        else (ClipClassifierConfig, ClipClassifierForImageClassification)
    )
    config = config_class(
        backbone_config=backbone.config.to_dict(),
        backbone_name_or_path=model_name_or_path,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        head_dropout=head_dropout,
        learn_logit_scale=learn_logit_scale,
        text_tower=given,
    )
    # Built on the meta device, then given the pretrained backbone: a randomly initialised one built first would
    # hold a second copy of the weights at the run's start (CLIP ViT-B/32: 1001 -> 650 MB peak RSS while building).
    with torch.device("meta"):
        model = model_class(config)
    model.backbone = backbone.to(torch.get_default_dtype())
    model.classifier.to_empty(device=next(backbone.parameters()).device)
    model._init_weights(model.classifier)
    model.name_or_path = model_name_or_path  # recorded as base_model_name_or_path by peft adapters
    if text is not None:
        model.classifier.init_from_text_embeddings(text, scale)
    return model


@torch.no_grad()
def choose_head(model, dataset, *, batch_size: int = 64, device=None, max_samples: int = 2048) -> dict:
    """`--head_init auto`: keep the zero-shot head of `model` only if it clearly beats chance on `dataset`.

    A zero-shot head is only as good as the text tower's knowledge of the class names: a dual encoder whose
    projections were never trained together (a fresh VisionTextDualEncoderModel), or class names such as
    "class_3", give a head at chance level, and fine-tuning then starts from noise that is no better than a
    random head (measured in README, "Choosing the defaults"). One pass over (at most `max_samples` of) the
    transformed `dataset` (validation; rows with `pixel_values`/`input_features` and `labels`) measures it.

    Rule: chance is the share of the most frequent class; the head is kept when its accuracy is at least
    chance + max(0.05, 3 binomial standard errors of chance over the n samples); otherwise it is re-initialised
    at random in place. Returns {"head_init": "zeroshot"|"random", "zero_shot_accuracy", "chance", "threshold",
    "samples"}.
    """
    from transformers import default_data_collator

    n = min(len(dataset), max_samples)
    subset = dataset.select(range(n)) if hasattr(dataset, "select") else dataset
    device = device or next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    correct, counts = 0, torch.zeros(model.config.num_labels)
    for start in range(0, n, batch_size):
        batch = default_data_collator([subset[i] for i in range(start, min(start + batch_size, n))])
        labels = batch.pop("labels")
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        logits = model(**inputs).logits
        correct += (logits.argmax(-1).cpu() == labels).sum().item()
        counts += torch.bincount(labels, minlength=len(counts)).float()
    model.train(was_training)
    accuracy = correct / max(n, 1)
    chance = (counts.max() / counts.sum()).item() if n else 1.0
    threshold = chance + max(0.05, 3 * math.sqrt(chance * (1 - chance) / max(n, 1)))
    keep = n > 0 and accuracy >= threshold
    if not keep:
        model._init_weights(model.classifier)
    return {
        "head_init": "zeroshot" if keep else "random",
        "zero_shot_accuracy": accuracy,
        "chance": chance,
        "threshold": threshold,
        "samples": n,
    }


def resolve_head_init(model, head_init: str, held_out, training_args, measured_on: str = "validation") -> dict:
    """What `--head_init` means for this run, as recorded in all_results.json (`head_init`, `head_*`).

    `auto` measures the zero-shot head on `held_out` (`choose_head`, which re-initialises it at random when it is
    no better than chance) and logs why; without training, the zero-shot model is what is evaluated.
    """
    if head_init != "auto":
        return {"head_init": head_init}
    if not training_args.do_train:
        return {"head_init": "zeroshot"}
    head = choose_head(
        model, held_out, batch_size=training_args.per_device_eval_batch_size, device=training_args.device
    )
    logger.info(
        "head_init=auto -> %s: the zero-shot head scores %.3f on %d %s samples; chance %.3f, kept from %.3f",
        head["head_init"], head["zero_shot_accuracy"], head["samples"], measured_on, head["chance"],
        head["threshold"],
    )  # fmt: skip
    return head
