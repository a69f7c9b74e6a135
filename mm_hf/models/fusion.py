"""Building a multimodal fusion classifier from pretrained encoders (one Hub id or path per modality)."""

import dataclasses
import logging
from dataclasses import dataclass

from transformers import AutoConfig, AutoModel, PreTrainedConfig

from ..errors import UserError
from .audio_classifier import fit_whisper_window
from .configuration_multimodal_fusion import ENCODER_OF, MultimodalFusionConfig
from .modeling_multimodal_fusion import MultimodalFusionForClassification, drop_unused_pooler, encoder_class

logger = logging.getLogger(__name__)
# A composite checkpoint's tower for each encoder slot (CLIP/SigLIP: vision_model/text_model; CLAP: audio_model).
_TOWER_OF = {"vision_config": "vision_model", "text_config": "text_model", "audio_config": "audio_model"}


def load_encoder(name_or_path: str, slot: str, **from_pretrained_kwargs):
    """(encoder module, its config) for an encoder slot ("vision_config", "text_config", "audio_config").

    A dual encoder (CLIP, SigLIP, CLAP, ...) contributes the matching tower as a standalone model (e.g. a
    CLIPVisionModel holding CLIP's vision weights); an encoder-decoder model (Whisper) its encoder; any other
    checkpoint is loaded with AutoModel as it is.
    """
    config = AutoConfig.from_pretrained(name_or_path, **from_pretrained_kwargs)
    sub = getattr(config, slot, None)
    if isinstance(sub, PreTrainedConfig):  # a composite checkpoint (CLIP, SigLIP, CLAP): take its tower
        full = AutoModel.from_pretrained(name_or_path, **from_pretrained_kwargs)
        tower = getattr(full, _TOWER_OF[slot], None)
        encoder = encoder_class(sub)(sub)
        if tower is None or not _load_tower(encoder, tower):
            encoder = encoder_class(sub).from_pretrained(name_or_path, **from_pretrained_kwargs)
        return encoder, sub
    model = AutoModel.from_pretrained(name_or_path, **from_pretrained_kwargs)
    if getattr(model.config, "is_encoder_decoder", False):
        return model.get_encoder(), model.config
    return model, model.config


def _load_tower(encoder, tower) -> bool:
    """Copy `tower`'s weights into the standalone `encoder`, itself or the child that holds the same parameters
    (ClapAudioModel nests its encoder one level down); False when nothing matches exactly."""
    weights = tower.state_dict()
    for module in (encoder, *encoder.children()):
        if set(module.state_dict()) == set(weights):
            module.load_state_dict(weights)
            return True
    return False


@dataclass
class Task:
    """One head of a fusion model: what it predicts and how its loss counts.

    The model's config keeps tasks as plain dicts (`to_dict`), so saved checkpoints load without mm_hf.
    """

    name: str  # the label column (the batch key is `labels`, or `labels_<name>` in a multi-task model)
    problem_type: str  # one of configuration_multimodal_fusion.PROBLEM_TYPES
    labels: list  # class or label names (regression: the target names)
    loss_weight: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_fusion_classifier(
    encoders: dict[str, str | None],
    tasks: list[Task] | list[dict],
    *,
    tabular_num_numeric: int = 0,
    tabular_cardinalities=(),
    from_pretrained_kwargs: dict | None = None,
    audio_feature_extractor=None,
    max_length_seconds: float | None = None,
    **config_kwargs,
) -> MultimodalFusionForClassification:
    """A `MultimodalFusionForClassification` whose encoders are pretrained.

    encoders: modality -> Hub id or path, in the order the modalities are fused ("image", "video", "text",
        "audio"; "tabular" maps to None). "image" and "video" share one vision encoder (give the same id).
    tasks: one `mm_hf.metrics.tasks.Task` per head (or its dict, as the config stores it); config_kwargs: any other
        `MultimodalFusionConfig` field (fusion, hidden_size, poolings, modality_dropout, ...).
    audio_feature_extractor, max_length_seconds: a Whisper audio encoder and its extractor (changed in place, saved
        with the processor) move from the 30 s window to one that fits clips of `max_length_seconds`
        (`fit_whisper_window`).
    """
    from_pretrained_kwargs = from_pretrained_kwargs or {}
    tasks = [task.to_dict() if isinstance(task, Task) else dict(task) for task in tasks]  # the config holds dicts
    loaded, sub_configs, names = {}, {}, {}
    for modality, path in encoders.items():
        slot = ENCODER_OF.get(modality)
        if slot is None:
            continue
        if slot in loaded:
            if names[slot] != path:
                raise UserError(f"image and video share one vision encoder; got {names[slot]} and {path}")
            continue
        if not path:
            raise UserError(f"modality {modality!r} needs an encoder (--{slot.split('_')[0]}_model_name_or_path)")
        loaded[slot], sub_configs[slot] = load_encoder(path, slot, **from_pretrained_kwargs)
        names[slot] = path
    config = MultimodalFusionConfig(
        modalities=list(encoders),
        **{slot: cfg.to_dict() for slot, cfg in sub_configs.items()},
        encoder_names_or_paths={m: names[ENCODER_OF[m]] for m in encoders if m in ENCODER_OF},
        tabular_num_numeric=tabular_num_numeric,
        tabular_cardinalities=list(tabular_cardinalities),
        tasks=tasks,
        **config_kwargs,
        **_label_maps(tasks),
    )
    model = MultimodalFusionForClassification(config)
    # Swap the randomly initialised encoders for the pretrained ones instead of copying weights twice.
    dtype = model.multimodal.missing_tokens.dtype
    for slot, encoder in loaded.items():
        key = "vision" if slot == "vision_config" else slot.split("_")[0]
        model.multimodal.encoders[key] = drop_unused_pooler(encoder, model.multimodal.encoder_poolings(key)).to(dtype)
    if audio_feature_extractor is not None and "audio" in model.multimodal.encoders:
        encoder = model.multimodal.encoders["audio"]
        fit_whisper_window(encoder, model.config.audio_config, audio_feature_extractor, max_length_seconds)
    model.name_or_path = " + ".join(dict.fromkeys(names.values()))
    return model


def _label_maps(tasks: list[dict]) -> dict:
    """id2label/label2id of a single classification task, so pipelines and cards show class names."""
    if len(tasks) != 1 or tasks[0]["problem_type"] == "regression":
        return {}
    labels = [str(label) for label in tasks[0]["labels"]]
    return {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
