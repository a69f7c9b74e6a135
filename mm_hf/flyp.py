"""FLYP (Goyal et al., CVPR 2023, "Finetune like you pretrain"): fine-tune a CLIP-family classifier with the loss it
was pretrained with. Each training image is paired with a caption of its class ("a photo of the {}." filled with
the class name) and both towers train contrastively against the captions of the (global) batch; the classifier head
is never a free parameter: it is the class-prompt text embeddings of the current text tower, recomputed whenever
the model is evaluated, so head and image tower stay aligned (the paper: +4 points OOD over cross-entropy
fine-tuning, and better again with WiSE-FT, which interpolates the text tower and so the head with it).

    model = FlypClassifier(classifier, tokenizer, class_names, templates)  # classifier built with its text tower
    model = apply_strategy(model, ft_args)                                 # both towers (+ the temperature) train
    ... Trainer(model=model, ...).train() ...
    classifier = model.to_classifier()   # head <- recomputed prompt embeddings, text tower dropped: a plain checkpoint

Design choices:
- Captions: one template per training step for the whole batch, cycling through the templates (step t uses
  template t mod T). A per-sample random pick would differ between a 1-process and an N-process run; a fixed
  cycle keeps them the same objective (`mm_hf.models.losses.clip_loss` gathers the negatives of every process).
- Same-class images in a batch are each other's negatives through their identical captions, as in the paper.
- No sample is dropped: on N processes accelerate's `even_batches` (its default) completes every process's last
  training batch from the epoch's first samples, so the gathered loss always sees equal batch sizes, and the
  evaluation splits are read whole (`dataloader_drop_last` would drop their last batch too).
- Evaluation: logits = exp(logit_scale) * normalize(image) @ class_embeddings.T with the text tower's current
  prompt-ensembled class embeddings (the zero-shot head's formula: at step 0 this is the zero-shot model exactly).
"""

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers.modeling_outputs import ImageClassifierOutput

from .errors import UserError
from .models import build_dual_encoder_classifier
from .models.clip_classifier import class_text_embeddings, prompt_text_features
from .models.losses import MAX_LOGIT_SCALE, clip_loss
from .models.towers import ModelParts, drop_tower, dual_encoder_tower

logger = logging.getLogger(__name__)

# What FLYP can train: both towers (full) or their top layers; LoRA would save an adapter of this wrapper, which
# no plain classifier could load (see the recipes' check).
FLYP_STRATEGIES = ("full", "top_k")


class FlypClassifier(nn.Module):
    """A CLIP-family classifier (`ClipClassifierForImageClassification` / `ClapClassifierForAudioClassification`
    built with its text tower) trained by FLYP's contrastive loss; `to_classifier()` gives the plain classifier.

    Shapes: pixel_values (b, 3, H, W) or input_features (b, ...) and labels (b,) -> loss () in training; logits
    (b, num_labels) in evaluation (with the cross-entropy loss when labels are given).
    """

    # forward(**inputs) would make Trainer believe the loss is already normalised over the global batch and scale
    # it by the number of processes; it is the global batch's mean (gathered negatives), like the classifier's.
    accepts_loss_kwargs = False

    def __init__(self, classifier: nn.Module, tokenizer, class_names: Sequence[str], templates: Sequence[str]):
        super().__init__()
        if not getattr(classifier.config, "text_tower", False):
            raise ValueError("FLYP needs the classifier's text tower: build it from a loaded dual encoder")
        self.classifier = classifier
        self.config = classifier.config  # what Trainer reads of a model (labels, model type)
        self.main_input_name = classifier.main_input_name
        self.tokenizer, self.class_names, self.templates = tokenizer, list(class_names), list(templates)
        self._step = 0  # training forward passes: picks each step's template
        self._class_embeds = None  # the evaluation head, valid until the next train()/eval() switch
        # The cosine head is recomputed, never trained: frozen, or DDP would find it unused.
        for param in classifier.classifier.parameters():
            param.requires_grad = False

    @property
    def backbone(self) -> nn.Module:
        return self.classifier.backbone

    def parts(self) -> ModelParts:
        """Both towers with their projections; the head is the backbone's temperature(s) (the cosine head is
        recomputed from the text tower, not trained)."""
        media = "audio" if self.classifier.media_modality == "audio" else "image"
        towers = {
            key: dual_encoder_tower(self.classifier, modality).under("classifier.")
            for key, modality in (("media", media), ("text", "text"))
        }
        scales = [f"classifier.backbone.{n}" for n in ("logit_scale", "logit_scale_a", "logit_scale_t")]
        head = tuple(name for name, _ in self.named_parameters() if name in scales)
        return ModelParts(kind="classifier", head=head, towers=towers, head_with_lora="freeze")

    def logit_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(media->text, text->media) log-temperatures of the backbone: CLAP keeps one per direction."""
        if hasattr(self.backbone, "logit_scale_a"):
            return self.backbone.logit_scale_a, self.backbone.logit_scale_t
        return self.backbone.logit_scale, self.backbone.logit_scale

    def train(self, mode: bool = True):
        self._class_embeds = None  # weights change in training (and between evaluations, e.g. WiSE-FT's α sweep)
        return super().train(mode)

    def class_embeddings(self) -> torch.Tensor:
        """(num_labels, embed_dim) unit rows: the current text tower's prompt-ensembled class embeddings."""
        if self._class_embeds is None or self.training:
            self._class_embeds = class_text_embeddings(self.backbone, self.tokenizer, self.class_names, self.templates)
        return self._class_embeds

    def media_features(self, inputs: dict) -> torch.Tensor:
        if self.classifier.media_modality == "audio":
            return self.classifier.get_audio_features(inputs["input_features"], inputs.get("is_longer"))
        return self.classifier.get_image_features(inputs["pixel_values"])

    def forward(self, labels: torch.Tensor | None = None, **inputs) -> ImageClassifierOutput:
        media = self.media_features(inputs)
        scale, text_scale = self.logit_scales()
        if self.training:
            if labels is None:
                raise ValueError("FLYP trains on (media, class caption) pairs: labels are required in training")
            template = self.templates[self._step % len(self.templates)]
            self._step += 1
            captions = [template.format(self.class_names[i]) for i in labels.tolist()]
            text = prompt_text_features(self.backbone, self.tokenizer, captions)
            return ImageClassifierOutput(
                loss=clip_loss(media, text.to(media.dtype), scale, text_logit_scale=text_scale)
            )
        weight = self.class_embeddings().to(media)
        logits = scale.detach().clamp(max=MAX_LOGIT_SCALE).exp() * F.normalize(media, dim=-1) @ weight.T
        loss = F.cross_entropy(logits.float(), labels.to(logits.device)) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def to_classifier(self) -> nn.Module:
        """The plain classifier, as evaluated: its head set to the current prompt embeddings and the backbone's
        temperature, its text tower dropped (a checkpoint like any other run's)."""
        classifier = self.classifier
        was_training = self.training
        self.eval()
        scale = self.logit_scales()[0].item()
        classifier.classifier.init_from_text_embeddings(self.class_embeddings(), scale)
        self.train(was_training)
        drop_tower(classifier.backbone, "text")
        classifier.config.text_tower = False
        return classifier


def build_flyp_classifier(backbone, id2label: dict, tokenizer, templates: Sequence[str], **build_kwargs):
    """A `FlypClassifier` over a loaded dual encoder `backbone` (its text tower is kept for training)."""

    classifier = build_dual_encoder_classifier(
        backbone, id2label, tokenizer=tokenizer, head_init="zeroshot", prompt_templates=templates, **build_kwargs
    )
    names = [id2label[i] for i in range(len(id2label))]
    return FlypClassifier(classifier, tokenizer, names, templates)


def build_dual_encoder_or_flyp(
    model_name_or_path, id2label: dict, tokenizer, templates: Sequence[str], *, flyp: bool, head_init: str,
    hub_kwargs: dict, **head_kwargs,
):  # fmt: skip
    """The classifier a dual-encoder recipe trains: with `flyp` (--loss flyp) a `FlypClassifier` (both towers train
    contrastively, the head is the text tower's), else `build_dual_encoder_classifier` with a `head_init` head
    ("zeroshot": the class-prompt embeddings of `templates`, or "random"). `hub_kwargs` go to `from_pretrained`."""
    if flyp:
        backbone = AutoModel.from_pretrained(model_name_or_path, **hub_kwargs)
        return build_flyp_classifier(backbone, id2label, tokenizer, templates, **head_kwargs)
    return build_dual_encoder_classifier(
        model_name_or_path, id2label, tokenizer=tokenizer, head_init=head_init, prompt_templates=templates,
        **head_kwargs, **hub_kwargs,
    )  # fmt: skip


def check_flyp(ft_args, head_init: str, explicit: set[str]) -> None:
    """Refuse what `--loss flyp` cannot honour, before any work."""
    if ft_args.finetune_strategy not in FLYP_STRATEGIES:
        raise UserError(
            f"--loss flyp trains both towers contrastively and saves a plain classifier; --finetune_strategy "
            f"{ft_args.finetune_strategy} is not supported with it: use one of {', '.join(FLYP_STRATEGIES)} "
            "(linear_probe / lp_ft fit a free head, which FLYP does not have; lora would save an adapter of both "
            "towers that no classifier loads)"
        )
    if head_init == "random" and "head_init" in explicit:
        raise UserError("--loss flyp: the head is always the class-prompt text embeddings; drop --head_init random")


def finish_flyp(trainer) -> None:
    """After the protocol: the Trainer's model becomes the plain classifier FLYP trained (what save_run saves)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, FlypClassifier):
        trainer.model = trainer.model_wrapped = model.to_classifier()
