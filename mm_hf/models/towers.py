"""What a model is made of, as the fine-tuning strategies see it: a head of new layers and the pretrained towers,
each with its layer list, stems, projection and default LoRA targets.

Every model family states its parts once, in its `parts()` method (as open_clip's `lock_image_tower` or peft's
per-architecture tables know their models); `mm_hf.training.apply_strategy` reads them and guesses nothing.
The per-architecture knowledge shared by the families (which children are stems, which Linear layers are
attention projections, where dual encoders keep their towers) lives here, once.

Self-contained (torch only): the modeling files import it, so `save_pretrained` ships it with their code.
"""

import dataclasses
from dataclasses import dataclass, field

from torch import nn

# Attention projections across architectures, the default LoRA targets: CLIP/SigLIP/Whisper use q_proj/k_proj/
# v_proj/out_proj, ViT (transformers v5) o_proj for the output, BERT-style towers (and CLAP's HTSAT) query/key/value.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "query", "key", "value", "qkv")
# Children that run before a tower's layers (top_k leaves them frozen), matched as name prefixes. Image towers:
# patch embeddings and CLIP's pre-norm; CLAP's HTSAT: patch_embed and a BatchNorm over mel bins; audio encoders:
# wav2vec2's conv feature encoder, its projection and conv positions, Whisper's conv stem and positions.
STEMS = (
    *("embeddings", "pre_layrnorm", "pre_layernorm", "patch_embed", "batch_norm"),
    *("feature_extractor", "feature_projection", "pos_conv_embed", "conv1", "conv2", "embed_positions"),
)
# Where CLIP-family dual encoders (CLIPModel, SiglipModel, VisionTextDualEncoderModel, ClapModel) keep each
# modality's tower and the projection after it.
DUAL_ENCODER_TOWERS = {
    "image": ("vision_model", "visual_projection"),
    "audio": ("audio_model", "audio_projection"),
    "text": ("text_model", "text_projection"),
}


@dataclass(frozen=True)
class Tower:
    """A pretrained encoder inside a model; `path` and `projection` are module names relative to the model,
    the other names relative to the tower."""

    path: str  # e.g. "backbone.vision_model"
    layers: str  # its list of repeated blocks, e.g. "encoder.layers"
    projection: str | None = None  # the module after it on the embedding path, e.g. "backbone.visual_projection"
    stems: tuple[str, ...] = STEMS  # children (of the tower or of the module holding `layers`) before the layers
    fixed: tuple[str, ...] = ()  # what the architecture never trains (Whisper's sinusoidal positions)
    lora_targets: tuple[str, ...] = ()  # Linear layers inside each block that LoRA adapts by default

    def under(self, prefix: str) -> "Tower":
        """The same tower seen from a model holding this one's model as `prefix` (e.g. "multimodal.")."""
        projection = prefix + self.projection if self.projection else None
        return dataclasses.replace(self, path=prefix + self.path, projection=projection)


@dataclass(frozen=True)
class ModelParts:
    """kind: which strategies apply ("classifier", "contrastive" or "fusion"; see mm_hf.training).
    head: modules (or parameters) outside the towers, trained by every strategy.
    towers: the pretrained encoders by key: "media" (the image or audio tower) and "text" for dual encoders,
        the encoder keys ("vision", "text", "audio") for fusion models.
    head_with_lora: what LoRA does to the head: "save" keeps it trained and stores it with the adapter
        (`modules_to_save`: new layers come back trained on reload); "train" keeps it trained in place (fusion runs
        are always saved merged, and their placeholders are bare parameters `modules_to_save` cannot hold); "freeze"
        (a dual encoder's temperature: an adapter could not carry it).
    fixed: parameters no strategy trains (a temperature the config fixes).
    """

    kind: str
    head: tuple[str, ...]
    towers: dict[str, Tower]
    head_with_lora: str = "save"
    fixed: tuple[str, ...] = field(default=())

    def under(self, prefix: str) -> "ModelParts":
        towers = {key: tower.under(prefix) for key, tower in self.towers.items()}
        head, fixed = tuple(prefix + n for n in self.head), tuple(prefix + n for n in self.fixed)
        return dataclasses.replace(self, head=head, towers=towers, fixed=fixed)


def encoder_layers(module: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, list) of the ModuleList of identical blocks inside `module` holding the most parameters.

    By parameters, not length: in a hierarchical (Swin-style, e.g. CLAP's HTSAT) tower the stages hold
    everything, while the longest list is the blocks of one stage.
    """
    best, best_size = None, -1
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and len(child) and len({type(m) for m in child}) == 1:
            size = sum(p.numel() for p in child.parameters())
            if size > best_size:
                best, best_size = (name, child), size
    if best is None:
        raise ValueError(f"no layer list found in {type(module).__name__}")
    return best


def linear_leaves(module: nn.Module) -> list[str]:
    """The distinct last names of the Linear layers inside `module` (e.g. fc1, k_proj, q_proj)."""
    return sorted({n.rpartition(".")[2] for n, m in module.named_modules() if isinstance(m, nn.Linear)})


def describe_tower(model: nn.Module, path: str, projection: str | None = None, search: str = "") -> Tower:
    """The Tower at `path` of `model`: its layer list (looked for inside its child `search` when given), stems,
    fixed parameters and LoRA targets, from the architecture it turns out to be."""
    tower = model.get_submodule(path)
    layers, blocks = encoder_layers(tower.get_submodule(search) if search else tower)
    stems = STEMS
    # wav2vec2-family encoders without `do_stable_layer_norm` apply their `layer_norm` before the layers.
    if isinstance(getattr(tower, "feature_extractor", None), nn.Module):
        if not getattr(tower.config, "do_stable_layer_norm", True):
            stems += ("layer_norm",)
    # Whisper's encoder positions are fixed sinusoids (WhisperEncoder freezes them in __init__, but transformers
    # 5.23's from_pretrained hands them back trainable).
    whisper = isinstance(getattr(tower, "conv2", None), nn.Conv1d)
    fixed = (
        ("embed_positions",) if whisper and isinstance(getattr(tower, "embed_positions", None), nn.Embedding) else ()
    )
    available = linear_leaves(blocks)
    return Tower(
        path=path,
        layers=f"{search}.{layers}" if search else layers,
        projection=projection,
        stems=stems,
        fixed=fixed,
        lora_targets=tuple(n for n in ATTENTION_PROJECTIONS if n in available),
    )


def dual_encoder_tower(model: nn.Module, modality: str, backbone: str = "backbone") -> Tower:
    """The `modality` ("image", "audio", "text") tower of the CLIP-family dual encoder at `model.<backbone>`."""
    name, projection = DUAL_ENCODER_TOWERS[modality]
    dual_encoder = model.get_submodule(backbone)
    if not isinstance(getattr(dual_encoder, name, None), nn.Module):
        raise ValueError(f"{type(dual_encoder).__name__} keeps no {modality} tower under `{name}`")
    has_projection = isinstance(getattr(dual_encoder, projection, None), nn.Module)
    return describe_tower(model, f"{backbone}.{name}", f"{backbone}.{projection}" if has_projection else None)


def no_split_modules(model: nn.Module) -> set[str]:
    """Class names of the blocks that FSDP's transformer auto-wrap shards one by one (and `device_map` never splits):
    the block class of every tower's layer list (`model.parts()`), plus the classes the towers' own transformers
    models declare in `_no_split_modules`, kept only where `model` holds such a module.

    Read from the model as it is now: a classifier drops its dual encoder's text tower after construction, and a
    Whisper classifier keeps the encoder of a model that also declares decoder layers; accelerate stops on a
    declared class it cannot find ("Could not find the transformer layer class ... in the model"). Towers whose
    transformers class declares nothing (wav2vec2, CLAP's audio and text towers) get their blocks from the layer
    list all the same.
    """
    present = {type(m).__name__ for m in model.modules()}
    declared = set()
    for module in model.modules():
        if module is not model:  # a nested mm-hf model answers from its own parts; transformers towers, a set
            declared.update(getattr(module, "_no_split_modules", None) or ())
    blocks = set()
    for tower in model.parts().towers.values():
        blocks.update(type(block).__name__ for block in model.get_submodule(f"{tower.path}.{tower.layers}"))
    return (declared & present) | blocks


# `_no_split_modules` of the mm-hf PreTrainedModels: computed on each read (see `no_split_modules`). The setter
# takes and drops what `PreTrainedModel.post_init` writes, its copy of the children's lists at construction time.
NO_SPLIT_MODULES = property(no_split_modules, lambda self, value: None)


def drop_tower(dual_encoder: nn.Module, modality: str) -> None:
    """Remove the `modality` tower and its projection from a CLIP-family dual encoder, in place (a model that only
    runs its other tower need not hold it: CLIP ViT-B/32's text tower is 63M of its 151M parameters)."""
    for name in DUAL_ENCODER_TOWERS[modality]:
        if isinstance(getattr(dual_encoder, name, None), nn.Module):
            delattr(dual_encoder, name)


__all__ = [
    "ModelParts",
    "Tower",
    "describe_tower",
    "drop_tower",
    "dual_encoder_tower",
    "encoder_layers",
    "linear_leaves",
    "no_split_modules",
]
