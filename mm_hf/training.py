"""Fine-tuning strategies: what a run trains, for every model family, from the parts the model states.

`apply_strategy(model, args)` reads `model.parts()` (mm_hf/models/towers.py: the head, the towers with their
layer lists, stems, projections and LoRA targets) and gives each tower a strategy: frozen, top_k, full or lora.
The run's `--finetune_strategy` names those per kind of model (the lists below): a classifier's linear_probe
freezes its media tower; a dual encoder's lock_image / lock_text freeze one tower (LiT) and train the other; a
fusion model's encoders follow it unless `--vision_strategy` / `--text_strategy` / `--audio_strategy` say otherwise.
"""

import logging
import re

from peft import LoraConfig, get_peft_model
from torch import nn

from .errors import UserError
from .lora_dropout import fuse_lora_dropout
from .models.towers import ModelParts, Tower, linear_leaves

logger = logging.getLogger(__name__)

# One list per kind of model: the flags' help, the argument check and every error message read these.
CLASSIFIER_STRATEGIES = ("linear_probe", "top_k", "full", "lora")
# LP-FT (mm_hf.lp_ft): a run in two stages, a linear probe fitted in place, then one of these tower strategies.
LP_FT_SECOND_STAGES = ("full", "lora")
CONTRASTIVE_STRATEGIES = ("full", "lock_image", "lock_text", "lora")
FUSION_ENCODER_STRATEGIES = ("frozen", "top_k", "full", "lora")
# What --finetune_strategy may be for any recipe (a fusion recipe reads the classifier's names).
ALL_STRATEGIES = tuple(dict.fromkeys(CLASSIFIER_STRATEGIES + CONTRASTIVE_STRATEGIES + ("lp_ft",)))


def tower_strategies(
    parts: ModelParts, strategy: str, per_encoder: dict[str, str | None] | None = None
) -> dict[str, str]:
    """Each tower's strategy (frozen, top_k, full, lora) for a run's `strategy` on a model with these `parts`."""
    if parts.kind == "classifier":
        if strategy not in CLASSIFIER_STRATEGIES:
            raise UserError(
                f"--finetune_strategy must be one of {', '.join(CLASSIFIER_STRATEGIES)} for a classifier, "
                f"got {strategy!r}"
            )
        return {key: "frozen" if strategy == "linear_probe" else strategy for key in parts.towers}
    if parts.kind == "contrastive":
        if strategy not in CONTRASTIVE_STRATEGIES:
            raise UserError(
                f"--finetune_strategy must be one of {', '.join(CONTRASTIVE_STRATEGIES)} for a dual encoder, "
                f"got {strategy!r}"
            )
        # lock_image locks the media tower: the image tower, or CLAP's audio tower.
        locked = {"lock_image": "media", "lock_text": "text"}.get(strategy)
        trained = "lora" if strategy == "lora" else "full"
        return {key: "frozen" if key == locked else trained for key in parts.towers}
    given = {key: value for key, value in (per_encoder or {}).items() if value}
    default = "frozen" if strategy == "linear_probe" else strategy
    plan = {key: given.get(key) or default for key in parts.towers}
    bad = {key: value for key, value in plan.items() if value not in FUSION_ENCODER_STRATEGIES}
    if bad:
        flags = sorted({f"--{k}_strategy {v}" if k in given else f"--finetune_strategy {v}" for k, v in bad.items()})
        raise UserError(f"{', '.join(flags)}: encoder strategies must be among {', '.join(FUSION_ENCODER_STRATEGIES)}")
    return plan


def apply_strategy(
    model: nn.Module, args, per_encoder: dict[str, str | None] | None = None, *, freeze_feature_encoder: bool = False
) -> nn.Module:
    """Make trainable what `args.finetune_strategy` (FinetuneArguments) trains of `model`; returns a PeftModel
    when a tower gets LoRA. `per_encoder` (fusion models): encoder key -> strategy overriding the run's.

    The head always trains (under LoRA as `parts.head_with_lora` says); a tower trains by its strategy: nothing
    (frozen; it also runs in eval mode), its last `args.unfreeze_last_n_layers` layers and what follows them
    (top_k), everything (full), or LoRA adapters on its layers (`args.lora_*`). Parameters the model fixes stay
    frozen, the conv feature encoder too with `freeze_feature_encoder` (wav2vec2-style audio models), and every frozen BatchNorm keeps its
    running statistics.
    """
    parts = model.parts()
    strategy = args.finetune_strategy
    if strategy == "lp_ft" and parts.kind == "classifier":
        # The probe stage fits the head in place, by L-BFGS on cached features (mm_hf.lp_ft), and needs nothing
        # made trainable: what trains is the second stage's.
        strategy = args.lp_ft_second_stage
    plan = tower_strategies(parts, strategy, per_encoder)
    lora = [key for key, strategy in plan.items() if strategy == "lora"]
    trainable = [] if lora and parts.head_with_lora == "freeze" else list(parts.head)
    for key, strategy in plan.items():
        tower = parts.towers[key]
        if strategy == "full":
            trainable += [tower.path] + ([tower.projection] if tower.projection else [])
        elif strategy == "top_k":
            trainable += top_k_modules(model, tower, args.unfreeze_last_n_layers)
        elif strategy == "frozen":
            # Trainer puts the whole model in train mode: a frozen tower would then apply its dropout (MiniLM's
            # 0.1) and LayerDrop (wav2vec2's), feeding the head noisier features in training than at test time
            # (and than a feature cache).
            model.get_submodule(tower.path).register_forward_pre_hook(_keep_eval_mode)
    fixed = list(parts.fixed) + [f"{tower.path}.{name}" for tower in parts.towers.values() for name in tower.fixed]
    set_trainable(model, trainable)
    if freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
    freeze(model, fixed)
    if lora:
        wanted = {name for name, param in model.named_parameters() if param.requires_grad}
        regex = "|".join(f"(?:{lora_target_regex(model, parts.towers[key], args.lora_target_modules)})" for key in lora)
        # The head is new: without modules_to_save it would not be stored with the adapter and would come back
        # randomly initialised on reload (peft's most common classification pitfall).
        save = list(parts.head) if parts.head_with_lora == "save" else None
        model = get_peft_model(model, lora_config(args, regex, modules_to_save=save))
        # The same dropout masks and gradients as peft's, without two copies of each adapted layer's input kept
        # for backward (CLIP ViT-B/32, batch 32: -380 MB, mm_hf/lora_dropout.py).
        fuse_lora_dropout(model)
        if parts.head_with_lora == "train":  # peft froze everything but the adapters
            for name, param in model.named_parameters():
                if name.removeprefix("base_model.model.") in wanted:
                    param.requires_grad = True
        freeze(model, fixed)  # also the copies modules_to_save made
    freeze_norm_statistics(model)
    return model


def lora_config(args, target_modules: str, modules_to_save: list[str] | None = None) -> LoraConfig:
    """The run's LoraConfig (`args.lora_r`, `lora_alpha`, `lora_dropout`) on `target_modules` (a regex)."""
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save,
    )


def top_k_modules(model: nn.Module, tower: Tower, n: int) -> list[str]:
    """Names of the last `n` layers of `tower` (a models.towers.Tower of `model`) and of what runs after them:
    final norm, pooling head, projection; its stems stay out."""
    module = model.get_submodule(tower.path)
    layers = module.get_submodule(tower.layers)
    if not 0 <= n <= len(layers):
        raise UserError(f"--unfreeze_last_n_layers must be between 0 and {len(layers)}, got {n}")
    names = [f"{tower.path}.{tower.layers}.{i}" for i in range(len(layers) - n, len(layers))]
    for child, _ in module.named_children():
        if child != tower.layers.partition(".")[0] and not child.startswith(tower.stems):
            names.append(f"{tower.path}.{child}")
    # Modules that wrap the layer list (e.g. `encoder`) may hold a final norm next to it.
    parent = tower.layers.rpartition(".")[0]
    if parent:
        for child, _ in module.get_submodule(parent).named_children():
            if f"{parent}.{child}" != tower.layers and not child.startswith(tower.stems):
                names.append(f"{tower.path}.{parent}.{child}")
    return names + ([tower.projection] if tower.projection else [])


def lora_target_regex(model: nn.Module, tower: Tower, names=None) -> str:
    """A peft `target_modules` regex selecting Linear layers named `names` (default: the tower's `lora_targets`,
    its attention projections) inside the blocks of `tower`'s layer list only.

    Pooling heads after the layers are left out: SigLIP's is an nn.MultiheadAttention whose `out_proj` weight is
    read directly, so a LoRA there would never run (dead parameters; DDP unused-parameter errors).
    """
    available = linear_leaves(model.get_submodule(f"{tower.path}.{tower.layers}"))
    wanted = list(names) if names else list(tower.lora_targets)
    missing = [n for n in wanted if n not in available]
    if missing or not wanted:
        # Names the user listed are a flag mistake; none found by default is an architecture mm-hf does not know.
        flag = "--lora_target_modules: " if names else ""
        raise (UserError if names else ValueError)(
            f"{flag}LoRA target module(s) {missing or wanted} not found among the Linear layers of "
            f"{tower.path}.{tower.layers} ({type(model.get_submodule(tower.path)).__name__}); "
            f"available: {', '.join(available)}"
        )
    prefix = re.escape(f"{tower.path}.{tower.layers}")
    return rf"{prefix}\.\d+\.(.*\.)?({'|'.join(map(re.escape, wanted))})"


def set_trainable(model: nn.Module, prefixes) -> None:
    """requires_grad = True exactly for parameters under one of `prefixes` (module or parameter names)."""
    prefixes = tuple(prefixes)
    for name, param in model.named_parameters():
        param.requires_grad = any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(model: nn.Module, prefixes) -> None:
    """requires_grad = False for parameters under `prefixes`, also inside a PeftModel and its modules_to_save copies."""
    prefixes = tuple(prefixes)
    for name, param in model.named_parameters():
        plain = name.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".")
        plain = plain.replace(".original_module.", ".")
        if any(plain == p or plain.startswith(p + ".") for p in prefixes):
            param.requires_grad = False


def _keep_eval_mode(module: nn.Module, args) -> None:
    module.train(False)


def freeze_norm_statistics(model: nn.Module) -> int:
    """Keep every BatchNorm whose weights are frozen in eval mode, so training leaves its running statistics.

    Trainer puts the whole model in train mode each step, and a BatchNorm in train mode re-estimates its
    running mean/var from the batch even when no parameter of it is trainable (CLAP's HTSAT normalises its
    mel bins this way): a "frozen" backbone would drift, and a linear probe would change its features.
    A forward pre-hook (a plain function, so the model still deep-copies and pickles) switches the module
    back to eval right before it runs. Returns how many modules were pinned.
    """
    pinned = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            if not any(p.requires_grad for p in module.parameters()):
                module.register_forward_pre_hook(_keep_eval_mode)
                pinned += 1
    return pinned


def trainable_parameters(model: nn.Module) -> dict:
    """Counts of trainable and total parameters and the trainable share in percent."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total, "trainable_share_percent": 100.0 * trainable / total}
