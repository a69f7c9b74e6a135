"""LP-FT (Kumar et al., ICLR 2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"):
fit a linear probe first, then fine-tune the whole model (or LoRA adapters) starting from the probe's head.

Why: fine-tuning from a random or poor head sends large gradients into the backbone while the head is still wrong,
which distorts the pretrained features most where the training data is silent (out of distribution); starting
from a converged probe the early gradients are small and the features move less (the paper: about +10 points OOD
over plain fine-tuning, at equal ID accuracy).

Here both stages are one run, one output folder (`--finetune_strategy lp_ft --lp_ft_second_stage full|lora`):
`apply_strategy` prepares the second stage (what will train); `lp_ft_first_stage` gives the protocol
(`mm_hf.run.train_and_evaluate`'s `first_stage`) the probe stage, which runs the untouched backbone once over
train and validation, fits the head to convergence by L-BFGS (`mm_hf.probe.fit_classifier_head`, exactly what
`--finetune_strategy linear_probe` does) and writes it into the model in place (under a LoRA second stage, into
peft's trained modules_to_save copy of the head); LoRA's B factors start at zero, so the
features the probe sees are the pretrained ones either way. Its results are recorded as `lp_*`.
"""

import logging
from collections.abc import Callable
from types import SimpleNamespace

from .errors import UserError
from .features import can_cache_pooled, precompute_features
from .probe import fit_classifier_head

logger = logging.getLogger(__name__)


def lp_ft_first_stage(model, splits: dict, eval_transform, training_args, ft_args) -> Callable[[], dict] | None:
    """The probe stage of `--finetune_strategy lp_ft` for `model` (after `apply_strategy`), or None for any other
    strategy; refuses, before any work, what the stage cannot do."""
    if ft_args.finetune_strategy != "lp_ft":
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "pooler") and not can_cache_pooled(base):
        raise UserError(
            "--finetune_strategy lp_ft fits its probe on cached pooled features, but --pooling attention learns its "
            "frame scores: pass --pooling mean, or another --finetune_strategy"
        )
    if ft_args.probe_solver != "lbfgs":
        raise UserError(
            "--finetune_strategy lp_ft fits its first stage by L-BFGS to convergence (as linear_probe does); "
            f"--probe_solver {ft_args.probe_solver} is not supported with it: drop --probe_solver"
        )

    def probe_stage() -> dict:
        model.to(training_args.device)
        batch_size, workers = training_args.per_device_eval_batch_size, training_args.dataloader_num_workers
        features = {
            name: precompute_features(base, splits[name], eval_transform, batch_size, workers)
            for name in ("train", "validation")
            if name in splits
        }
        head = SimpleNamespace(classifier=_trained_head(base.classifier), config=base.config)
        fitted = fit_classifier_head(
            head, features["train"], features.get("validation"), device=training_args.device,
            selection=ft_args.probe_selection,
        )  # fmt: skip
        logger.info(
            "LP-FT stage 1: linear probe fitted (C=%.4g); stage 2 trains %s from its head",
            fitted["probe_C"],
            ft_args.lp_ft_second_stage,
        )
        # train_loss / probe_* of the probe stage; the Trainer's train_loss is the second stage's.
        return {f"lp_{k}" if not k.startswith("probe_") else k: v for k, v in fitted.items()}

    return probe_stage


def _trained_head(head):
    """The head copy that trains: under LoRA, peft's modules_to_save copy of the active adapter (its original stays
    at the zero-shot / random initialisation, unused)."""
    copies = getattr(head, "modules_to_save", None)
    return copies[head.active_adapters[0]] if copies is not None else head
