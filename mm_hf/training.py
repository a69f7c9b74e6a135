"""Fine-tuning strategies (what is trainable) and LoRA target resolution.

Only the image (or, for CLAP, audio) path of a dual encoder runs in classification, so every strategy trains a
subset of it: training text-tower parameters would waste optimizer memory and make DDP fail on unused parameters.
"""

import logging
import re

from torch import nn

from .errors import UserError

logger = logging.getLogger(__name__)

STRATEGIES = ("linear_probe", "top_k", "full", "lora")
# Attention projections across architectures: CLIP/SigLIP use q_proj/k_proj/v_proj/out_proj, ViT (v5) o_proj for
# the output, BERT-style towers query/key/value.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "query", "key", "value", "qkv")
# Modules before the encoder layers (stems top_k leaves frozen); CLAP's HTSAT: a BatchNorm over mel bins + patch_embed.
_PRE_ENCODER = ("embeddings", "pre_layrnorm", "pre_layernorm", "patch_embed", "batch_norm")


def image_tower(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the backbone's non-text tower: the vision tower, e.g. ("backbone.vision_model",
    CLIPVisionTransformer), or CLAP's audio tower ("backbone.audio_model")."""
    for name in ("vision_model", "vision_tower", "image_encoder", "visual", "audio_model"):
        module = getattr(model.backbone, name, None)
        if isinstance(module, nn.Module):
            return f"backbone.{name}", module
    raise ValueError(f"cannot find the vision tower of {type(model.backbone).__name__} (looked for vision_model, ...)")


def image_path_modules(model: nn.Module) -> list[str]:
    """Names of the modules the image (or CLAP audio) embedding flows through: the tower and its projection."""
    names = [image_tower(model)[0]]
    for projection in ("visual_projection", "audio_projection"):
        if isinstance(getattr(model.backbone, projection, None), nn.Module):
            names.append(f"backbone.{projection}")
    return names


def encoder_layers(tower: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of identical blocks inside the tower holding the most parameters: its transformer layers.

    By parameters, not length: in a hierarchical (Swin-style, e.g. CLAP's HTSAT) tower the stages hold
    everything, while the longest list is the blocks of one stage.
    """
    best, best_size = None, -1
    for name, module in tower.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        raise ValueError(f"no layer list found in {type(tower).__name__}")
    return best


def text_tower(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the backbone's text tower, e.g. ("backbone.text_model", CLIPTextTransformer)."""
    for name in ("text_model", "text_encoder", "text_tower"):
        module = getattr(model.backbone, name, None)
        if isinstance(module, nn.Module):
            return f"backbone.{name}", module
    raise ValueError(f"cannot find the text tower of {type(model.backbone).__name__} (looked for text_model, ...)")


def set_trainable(model: nn.Module, prefixes) -> None:
    """requires_grad = True exactly for parameters under one of `prefixes` (module names)."""
    prefixes = tuple(prefixes)
    for name, param in model.named_parameters():
        param.requires_grad = any(name == p or name.startswith(p + ".") for p in prefixes)


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


def apply_finetune_strategy(model: nn.Module, args) -> nn.Module:
    """Freeze/unfreeze `model` per `args.finetune_strategy` (FinetuneArguments); returns a PeftModel for lora."""
    strategy = args.finetune_strategy
    if strategy not in STRATEGIES:
        raise UserError(
            f"--finetune_strategy must be one of {', '.join(STRATEGIES)} for a classifier, got {strategy!r}"
        )
    head = ["classifier"]
    if strategy == "linear_probe":
        set_trainable(model, head)
    elif strategy == "full":
        set_trainable(model, head + image_path_modules(model))
    elif strategy == "top_k":
        set_trainable(model, head + top_k_modules(model, args.unfreeze_last_n_layers))
    else:
        from peft import LoraConfig, get_peft_model

        set_trainable(model, head)
        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=lora_target_regex(model, args.lora_target_modules),
            # The head is new: without modules_to_save it would not be stored with the adapter and would
            # come back randomly initialised on reload (peft's most common classification pitfall).
            modules_to_save=head,
        )
        model = get_peft_model(model, config)
    if not getattr(model.config, "learn_logit_scale", True):
        for name, param in model.named_parameters():
            if "classifier" in name and name.endswith("logit_scale"):
                param.requires_grad = False
    freeze_norm_statistics(model)
    return model


CONTRASTIVE_STRATEGIES = ("full", "lock_image", "lock_text", "lora")


def apply_contrastive_strategy(model: nn.Module, args) -> nn.Module:
    """What a contrastive run trains (`args.finetune_strategy`); returns a PeftModel for lora.

    full: both towers, projections and temperature; lock_image: the image tower and its projection stay
    frozen (LiT); lock_text: the text tower and its projection stay frozen; lora: LoRA adapters on the
    attention projections of both towers' layers, everything else frozen.
    """
    strategy = args.finetune_strategy
    if strategy not in CONTRASTIVE_STRATEGIES:
        raise UserError(
            f"--finetune_strategy must be one of {', '.join(CONTRASTIVE_STRATEGIES)} for a dual encoder, got {strategy!r}"
        )
    image = image_path_modules(model)
    text = [text_tower(model)[0]] + (["backbone.text_projection"] if hasattr(model.backbone, "text_projection") else [])
    everything = [name for name, _ in model.named_children()]
    if strategy == "full":
        set_trainable(model, everything)
    elif strategy in ("lock_image", "lock_text"):
        set_trainable(model, everything)
        for name, param in model.named_parameters():
            if any(name.startswith(p + ".") for p in (image if strategy == "lock_image" else text)):
                param.requires_grad = False
    else:
        from peft import LoraConfig, get_peft_model

        set_trainable(model, [])
        towers = [image_tower(model), text_tower(model)]
        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules="|".join(f"(?:{_tower_lora_regex(n, t, args.lora_target_modules)})" for n, t in towers),
        )
        model = get_peft_model(model, config)
    freeze_norm_statistics(model)
    return model


def top_k_modules(model: nn.Module, n: int) -> list[str]:
    """The last `n` encoder layers of the vision tower plus everything after them (final norm, pooling head, projection)."""
    return tower_top_k_modules(*image_tower(model), n) + image_path_modules(model)[1:]


def tower_top_k_modules(tower_name: str, tower: nn.Module, n: int, pre_encoder=_PRE_ENCODER) -> list[str]:
    """Names of the last `n` layers of `tower` and of the modules after them (final norm, pooling head)."""
    layers_name, layers = encoder_layers(tower)
    if not 0 <= n <= len(layers):
        raise UserError(f"--unfreeze_last_n_layers must be between 0 and {len(layers)}, got {n}")
    names = [f"{tower_name}.{layers_name}.{i}" for i in range(len(layers) - n, len(layers))]
    for child, _ in tower.named_children():
        if not layers_name.startswith(child) and not child.startswith(pre_encoder):
            names.append(f"{tower_name}.{child}")
    # Modules that wrap the layer list (e.g. `encoder`) may hold a final norm next to it.
    parent = layers_name.rpartition(".")[0]
    if parent:
        for child, _ in tower.get_submodule(parent).named_children():
            if f"{parent}.{child}" != layers_name and not child.startswith(pre_encoder):
                names.append(f"{tower_name}.{parent}.{child}")
    return names


def lora_target_regex(model: nn.Module, names=None) -> str:
    """A peft `target_modules` regex selecting Linear layers inside the vision tower's encoder layers only.

    Pooling heads after the encoder are left out: SigLIP's is an nn.MultiheadAttention whose `out_proj`
    weight is read directly, so a LoRA there would never run (dead parameters; DDP unused-parameter errors).
    """
    return _tower_lora_regex(*image_tower(model), names)


def _tower_lora_regex(tower_name: str, tower: nn.Module, names=None) -> str:
    layers_name, layers = encoder_layers(tower)
    linear_leaves = sorted({n.rpartition(".")[2] for n, m in layers.named_modules() if isinstance(m, nn.Linear)})
    wanted = list(names) if names else [n for n in ATTENTION_PROJECTIONS if n in linear_leaves]
    missing = [n for n in wanted if n not in linear_leaves]
    if missing or not wanted:
        # Names the user listed are a flag mistake; none found by default is an architecture mm-hf does not know.
        flag = "--lora_target_modules: " if names else ""
        raise (UserError if names else ValueError)(
            f"{flag}LoRA target module(s) {missing or wanted} not found among the Linear layers of "
            f"{tower_name}.{layers_name} ({type(tower).__name__}); available: {', '.join(linear_leaves)}"
        )
    prefix = re.escape(f"{tower_name}.{layers_name}")
    return rf"{prefix}\.\d+\.(.*\.)?({'|'.join(map(re.escape, wanted))})"


def trainable_parameters(model: nn.Module) -> dict:
    """Counts of trainable and total parameters and the trainable share in percent."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total, "trainable_share_percent": 100.0 * trainable / total}


# Modules of an audio backbone that run before its transformer layers: conv waveform/mel stems, patch
# embeddings, positional embeddings. top_k leaves them frozen.
_AUDIO_PRE_ENCODER = (
    "feature_extractor",
    "feature_projection",
    "pos_conv_embed",
    "embeddings",
    "conv1",
    "conv2",
    "embed_positions",
)


def audio_encoder(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) holding the audio backbone's transformer layers: `backbone.encoder` when the backbone has
    one (wav2vec2 family, AST), else the backbone itself (Whisper's encoder).

    Searching inside it keeps `encoder_layers` off wav2vec2's conv stack (a ModuleList of identical blocks too).
    """
    encoder = getattr(model.backbone, "encoder", None)
    if isinstance(encoder, nn.Module):
        return "backbone.encoder", encoder
    return "backbone", model.backbone


def audio_top_k_modules(model: nn.Module, n: int) -> list[str]:
    """The last `n` transformer layers of the audio encoder plus the modules after them (final norm, adapter)."""
    encoder_name, encoder = audio_encoder(model)
    layers_name, layers = encoder_layers(encoder)
    if not 0 <= n <= len(layers):
        raise UserError(f"--unfreeze_last_n_layers must be between 0 and {len(layers)}, got {n}")
    names = [f"{encoder_name}.{layers_name}.{i}" for i in range(len(layers) - n, len(layers))]
    # wav2vec2-family encoders without `do_stable_layer_norm` apply their `layer_norm` before the layers.
    pre_layers = _AUDIO_PRE_ENCODER
    if hasattr(model.backbone, "feature_extractor") and not getattr(
        model.backbone.config, "do_stable_layer_norm", True
    ):
        pre_layers += ("layer_norm",)
    for child, _ in encoder.named_children():
        if child != layers_name.partition(".")[0] and child not in pre_layers:
            names.append(f"{encoder_name}.{child}")
    if encoder_name != "backbone":
        for child, _ in model.backbone.named_children():
            if child != "encoder" and child not in _AUDIO_PRE_ENCODER:
                names.append(f"backbone.{child}")
    return names


def apply_audio_finetune_strategy(model: nn.Module, args) -> nn.Module:
    """Freeze/unfreeze an audio classifier per `args.finetune_strategy`; returns a PeftModel for lora.

    linear_probe: pooler + classifier; top_k: also the last `args.unfreeze_last_n_layers` encoder layers and
    what follows them; full: everything, except the conv feature encoder when `args.freeze_feature_encoder`;
    lora: LoRA on the attention projections of the encoder layers, pooler + classifier trained and saved.
    Whisper's encoder positions are fixed sinusoids and stay frozen under every strategy.
    """
    strategy = args.finetune_strategy
    if strategy not in STRATEGIES:
        raise UserError(
            f"--finetune_strategy must be one of {', '.join(STRATEGIES)} for a classifier, got {strategy!r}"
        )
    head = ["pooler", "classifier"]
    if strategy == "linear_probe":
        set_trainable(model, head)
    elif strategy == "top_k":
        set_trainable(model, head + audio_top_k_modules(model, args.unfreeze_last_n_layers))
    elif strategy == "full":
        set_trainable(model, [name for name, _ in model.named_children()])
        if args.freeze_feature_encoder and isinstance(getattr(model.backbone, "feature_extractor", None), nn.Module):
            model.backbone.feature_extractor.requires_grad_(False)
    else:
        set_trainable(model, head)
    # WhisperEncoder freezes them in __init__, but transformers 5.23's from_pretrained hands them back trainable.
    positions = getattr(model.backbone, "embed_positions", None)
    if isinstance(getattr(model.backbone, "conv2", None), nn.Conv1d) and isinstance(positions, nn.Embedding):
        positions.requires_grad_(False)
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=_tower_lora_regex(*audio_encoder(model), args.lora_target_modules),
            # The head is new: without modules_to_save it would not be stored with the adapter and would
            # come back randomly initialised on reload.
            modules_to_save=head,
        )
        model = get_peft_model(model, config)
    freeze_norm_statistics(model)
    return model


FUSION_ENCODER_STRATEGIES = ("frozen", "top_k", "full", "lora")


def apply_fusion_strategy(model: nn.Module, args, per_encoder: dict[str, str | None] | None = None) -> nn.Module:
    """What a fusion model trains: pooling, projections, placeholders, fusion and heads always; each encoder
    ("vision", "text", "audio") per `per_encoder[key]`, else per `args.finetune_strategy`:
    frozen (linear_probe), top_k (`args.unfreeze_last_n_layers`), full, or lora (attention projections of
    its layers; `args.lora_*`). Returns a PeftModel when any encoder uses LoRA.
    """
    default = "frozen" if args.finetune_strategy == "linear_probe" else args.finetune_strategy
    encoders = model.multimodal.encoders
    plan = {key: (per_encoder or {}).get(key) or default for key in encoders}
    bad = {k: v for k, v in plan.items() if v not in FUSION_ENCODER_STRATEGIES}
    if bad:
        given = per_encoder or {}
        flags = ", ".join(
            sorted({f"--{k}_strategy {v}" if given.get(k) else f"--finetune_strategy {v}" for k, v in bad.items()})
        )
        raise UserError(f"{flags}: encoder strategies must be among {', '.join(FUSION_ENCODER_STRATEGIES)}")
    trainable = [name for name, _ in model.named_children() if name != "multimodal"]
    trainable += [f"multimodal.{name}" for name, _ in model.multimodal.named_children() if name != "encoders"]
    trainable.append("multimodal.missing_tokens")
    pre_encoder = _PRE_ENCODER + _AUDIO_PRE_ENCODER
    for key, strategy in plan.items():
        prefix = f"multimodal.encoders.{key}"
        if strategy == "full":
            trainable.append(prefix)
        elif strategy == "top_k":
            trainable += tower_top_k_modules(prefix, encoders[key], args.unfreeze_last_n_layers, pre_encoder)
    set_trainable(model, trainable)
    for key, strategy in plan.items():
        if strategy == "frozen":
            # Trainer puts the whole model in train mode: a frozen encoder would then apply its dropout (MiniLM's
            # 0.1), feeding the fusion layers noisier features in training than at test time (and than a cache).
            encoders[key].register_forward_pre_hook(_keep_eval_mode)
    lora = [key for key, strategy in plan.items() if strategy == "lora"]
    if lora:
        from peft import LoraConfig, get_peft_model

        regex = "|".join(
            f"(?:{_tower_lora_regex(f'multimodal.encoders.{key}', encoders[key], args.lora_target_modules)})"
            for key in lora
        )
        wanted = {name for name, param in model.named_parameters() if param.requires_grad}
        model = get_peft_model(
            model,
            LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=regex),
        )
        # peft freezes everything but the adapters; the fusion parts and fully trained encoders train on.
        for name, param in model.named_parameters():
            if name.removeprefix("base_model.model.") in wanted:
                param.requires_grad = True
    freeze_norm_statistics(model)
    return model
