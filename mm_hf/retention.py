"""Zero-shot retention (`--zeroshot_eval_dir` of the classifier recipes): how much of the dual encoder's general,
pre-trained ability a fine-tuned classifier keeps, measured as zero-shot classification of an unrelated set of class
folders by the model being trained: its media tower against the class-prompt embeddings of the text tower.

The classifier carries no text tower (it is dropped once the zero-shot head is computed), and full / LoRA / LP-FT
fine-tuning never changes it, so the prompt embeddings of the unrelated classes are computed once, from the
pretrained text tower, before training. FLYP trains the text tower: its current one is used (mm_hf.flyp).
WiSE-FT measures it at every α (`train_and_evaluate`'s `extra_sets` accept this as a set).
"""

import gc

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import AutoModel, default_data_collator

from .data.loading import read_class_folder
from .errors import UserError
from .flyp import FlypClassifier
from .models.clip_classifier import class_text_embeddings


class ZeroShotRetention:
    """Zero-shot accuracy of a classifier's media tower on `folder` (one sub-folder per class, named as the class):
    `retention(model) -> {"accuracy": ...}`, `model` the classifier being trained (plain, PeftModel or FLYP's)."""

    def __init__(self, model_name_or_path: str, folder: str, tokenizer, templates, transform, column: str,
                 batch_size: int = 64, **from_pretrained_kwargs):  # fmt: skip
        data = read_class_folder(folder, column, "label")
        self.names = sorted(set(data["label"]))
        self.labels = torch.tensor([self.names.index(v) for v in data["label"]])
        self.images = data.remove_columns("label").with_transform(transform)
        self.tokenizer, self.templates, self.batch_size = tokenizer, list(templates), batch_size
        backbone = AutoModel.from_pretrained(model_name_or_path, **from_pretrained_kwargs)
        self.text = class_text_embeddings(backbone, tokenizer, self.names, self.templates)
        del backbone  # the text tower is needed once; the run's memory stays as without this flag
        gc.collect()

    def __len__(self) -> int:
        return len(self.labels)

    @torch.no_grad()
    def __call__(self, model) -> dict:

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        text = self.text
        if isinstance(base, FlypClassifier):  # its text tower trains: the current one gives the class embeddings
            text = class_text_embeddings(base.backbone, self.tokenizer, self.names, self.templates)
            base = base.classifier
        was_training = model.training
        model.eval()
        device = next(base.parameters()).device
        embeds = []
        for batch in DataLoader(self.images, batch_size=self.batch_size, collate_fn=default_data_collator):
            pixels = batch["pixel_values"].to(device, next(base.parameters()).dtype)
            embeds.append(base.get_image_features(pixels).float().cpu())
        model.train(was_training)
        predictions = (F.normalize(torch.cat(embeds), dim=-1) @ text.float().cpu().T).argmax(-1)
        return {"accuracy": (predictions == self.labels).float().mean().item()}


def with_retention(sets: dict, retention: "ZeroShotRetention | None") -> dict:
    """The evaluation sets of a run (`train_and_evaluate`'s `extra_sets`) plus `retention`, named "retention"."""
    if retention is None:
        return sets
    if "retention" in sets:
        raise UserError(
            "--ood_dir/--ood_file retention=...: the name 'retention' is --zeroshot_eval_dir's; rename the set"
        )
    return {**sets, "retention": retention}
