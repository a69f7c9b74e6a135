"""The models `python -m mm_hf.evaluate` compares: what each `--model NAME=PATH` is, how it loads, its inputs.

Three kinds, told apart by the folder's config.json:
- "mm-hf": an mm-hf recipe output folder (full, merged or LoRA adapter), loaded by `mm_hf.models.load_finetuned`;
- "zero-shot": a CLIP/SigLIP/CLAP-style dual encoder, turned into a classifier over the evaluation's labels from
  class prompts (`build_dual_encoder_classifier(head_init="zeroshot")`);
- "transformers": any other image/audio-classification checkpoint (`AutoModelFor{Image,Audio}Classification`).
- "fusion": an mm-hf fusion or video checkpoint (recipes/fusion_imagetext_cls.py, video_cls.py, any number of heads),
  scored on its run's columns by `fusion.py`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import yaml
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoProcessor,
)

from ..data.audio import AudioTransform
from ..data.transforms import build_image_transform
from ..errors import DataError, UserError
from ..models import (
    DEFAULT_AUDIO_PROMPT_TEMPLATES,
    DEFAULT_PROMPT_TEMPLATES,
    MultimodalFusionConfig,
    build_dual_encoder_classifier,
    load_finetuned,
)
from ..models.clip_classifier import is_audio_text_config
from ..models.configuration_audio_classifier import AudioClassifierConfig
from ..models.configuration_clip_classifier import ClapClassifierConfig, ClipClassifierConfig
from ..run_folder import refuse_unfinished

logger = logging.getLogger(__name__)

MM_HF_TYPES = {
    ClipClassifierConfig.model_type: "image",
    ClapClassifierConfig.model_type: "audio",
    AudioClassifierConfig.model_type: "audio",
}
# Audio clips are cut to this length when neither --max_length_seconds nor the mm-hf run's run_config.yaml says
# otherwise: audio_cls's own default.
DEFAULT_MAX_LENGTH_SECONDS = 5.0


@dataclass
class Candidate:
    """One `--model NAME=PATH`: what it is before loading (`inspect_model`), then the loaded model (`load`)."""

    name: str
    path: str
    kind: str  # "mm-hf", "zero-shot", "transformers" or "fusion"
    modality: str  # "image", "audio" or "fusion"
    label_names: list[str] | None  # None for a zero-shot dual encoder: it classifies into the evaluation's labels
    saved_as: str = "full"  # "full", "merged" (a LoRA run saved merged) or "adapter"
    run_config: dict = field(default_factory=dict)  # an mm-hf run's run_config.yaml
    run_info: dict = field(default_factory=dict)  # an mm-hf run's run_info.json
    model: object = None
    processor: object = None


def parse_named(values: list[str] | None, flag: str) -> dict[str, str]:
    """`NAME=PATH` values of a repeated flag as an ordered dict; refuses a missing `=` or a repeated name."""
    out = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"{flag} {value!r}: expected NAME=PATH, e.g. {flag} finetuned=out/run1")
        if name in out:
            raise UserError(f"{flag}: the name {name!r} is given twice; each needs its own name")
        out[name] = path
    return out


def _read(path: str, name: str, loader):
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        return loader(f) or {}


def check_finished_run(path: str) -> None:
    """Refuse a local folder without config.json, naming what it holds: the output folder of an unfinished run (only
    Trainer's checkpoint-* folders, each loadable on its own) or no checkpoint at all; and a folder still marked as an
    unfinished run (mm_hf.run_folder), whatever it holds."""
    refuse_unfinished(path, "pass")
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "config.json")):
        return
    checkpoints = sorted(
        (d for d in os.listdir(path) if d.startswith("checkpoint-") and d.split("-", 1)[1].isdigit()),
        key=lambda d: int(d.split("-", 1)[1]),
    )
    if checkpoints:
        raise UserError(
            f"{path} has no config.json, only the Trainer checkpoints {', '.join(checkpoints)}: the output folder of a "
            f"run that did not finish. Pass one of them (e.g. {os.path.join(path, checkpoints[-1])}) or finish the run"
        )
    raise UserError(f"{path} has no config.json: not a saved model folder (a recipe's --output_dir once it finished)")


def adapter_base(path: str) -> str | None:
    """The base model a LoRA adapter folder names (adapter_config.json), or None for any other checkpoint.

    Refuses an adapter whose base is missing: none recorded, or a local folder that no longer exists.
    """
    file = os.path.join(path, "adapter_config.json")
    if not os.path.isdir(path) or not os.path.isfile(file):
        return None
    with open(file) as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{path} is a LoRA adapter whose adapter_config.json names no base_model_name_or_path")
    local = os.path.isabs(base) or base.startswith(".") or base.count("/") > 1
    if local and not os.path.isdir(base):
        raise UserError(
            f"{path} is a LoRA adapter of the base model {base}, which is not there: put the base model back at that "
            "path, or set base_model_name_or_path in its adapter_config.json to where it is now"
        )
    return base


def inspect_model(name: str | None, path: str, hub_kwargs: dict, allow_video: bool = False) -> Candidate:
    """Classify `path` without loading weights; raises UserError for a kind the caller does not handle (a video
    checkpoint unless `allow_video`; both mm_hf.evaluate and mm_hf.predict handle them)."""
    check_finished_run(path)
    adapter_base(path)
    config = AutoConfig.from_pretrained(path, **hub_kwargs)
    run_config = _read(path, "run_config.yaml", yaml.safe_load) if os.path.isdir(path) else {}
    run_info = _read(path, "run_info.json", json.load) if os.path.isdir(path) else {}
    if isinstance(config, MultimodalFusionConfig):
        if "video" in (config.modalities or []) and not allow_video:
            raise UserError(f"{_named(name, path)} is an mm-hf video checkpoint: not supported yet")
        return Candidate(name, path, "fusion", "fusion", None, "full", run_config, run_info)
    if config.model_type in MM_HF_TYPES:
        adapter = os.path.isdir(path) and os.path.exists(os.path.join(path, "adapter_config.json"))
        saved_as = "adapter" if adapter else run_info.get("saved_as", "full")
        return Candidate(
            name, path, "mm-hf", MM_HF_TYPES[config.model_type], _labels(config), saved_as, run_config, run_info
        )
    text_config = getattr(config, "text_config", None)
    if text_config is not None and (getattr(config, "vision_config", None) is not None or is_audio_text_config(config)):
        modality = "audio" if is_audio_text_config(config) else "image"
        return Candidate(name, path, "zero-shot", modality, None)
    architectures = " ".join(config.architectures or [])
    if "ImageClassification" in architectures:
        return Candidate(name, path, "transformers", "image", _labels(config))
    if "AudioClassification" in architectures or (
        "SequenceClassification" in architectures and _has_sampling_rate(path, hub_kwargs)
    ):
        return Candidate(name, path, "transformers", "audio", _labels(config))
    raise UserError(
        f"{_named(name, path)}: {config.model_type} ({architectures or 'no architectures'}) is neither an image/audio "
        "classifier, a CLIP/SigLIP/CLAP dual encoder nor an mm-hf fusion checkpoint"
    )


def _named(name: str | None, path: str) -> str:
    """How messages name a model: `--model NAME=PATH` in evaluate, the bare path where it has no name (predict)."""
    return f"--model {name}={path}" if name else path


def _labels(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(len(config.id2label))]


def _has_sampling_rate(path: str, hub_kwargs: dict) -> bool:
    try:
        return getattr(AutoProcessor.from_pretrained(path, **hub_kwargs), "sampling_rate", None) is not None
    except (OSError, ValueError):
        return False


def check_labels(candidate: Candidate, label_names: list[str], data_labels: set[str], source: str) -> None:
    """Refuse a model whose classes are not the evaluation's (`label_names`), or that lacks a class of the data."""
    if candidate.label_names is None:
        return
    if set(candidate.label_names) != set(label_names) or not data_labels <= set(candidate.label_names):
        raise DataError(
            f"--model {candidate.name}={candidate.path} predicts the labels {candidate.label_names}, but the "
            f"evaluation's labels are {label_names} (data: {source} has {sorted(data_labels)}): evaluate models "
            "trained on the same classes, named the same"
        )


def load(candidate: Candidate, label_names: list[str], hub_kwargs: dict, prompt_templates=None) -> Candidate:
    """Load the model (eval mode) and its processor; a zero-shot one is built over `label_names`."""
    path = candidate.path
    candidate.processor = AutoProcessor.from_pretrained(path, **hub_kwargs)
    if candidate.kind == "mm-hf":
        try:
            model = load_finetuned(path)
        except OSError as error:
            base = adapter_base(path)
            if base is None:
                raise
            raise UserError(f"{path} is a LoRA adapter of the base model {base}, which cannot be loaded "
                            f"({str(error).splitlines()[0]}): make it available (a local folder or the Hub)") from error  # fmt: skip
    elif candidate.kind == "zero-shot":
        tokenizer = getattr(candidate.processor, "tokenizer", None)
        if tokenizer is None:
            raise UserError(f"{_named(candidate.name, path)}: a zero-shot dual encoder needs its tokenizer saved there")
        defaults = DEFAULT_AUDIO_PROMPT_TEMPLATES if candidate.modality == "audio" else DEFAULT_PROMPT_TEMPLATES
        model = build_dual_encoder_classifier(
            AutoModel.from_pretrained(path, **hub_kwargs),
            dict(enumerate(label_names)),
            tokenizer=tokenizer,
            head_init="zeroshot",
            prompt_templates=prompt_templates or defaults,
        )
    elif candidate.modality == "image":
        model = AutoModelForImageClassification.from_pretrained(path, **hub_kwargs)
    else:
        model = AutoModelForAudioClassification.from_pretrained(path, **hub_kwargs)
    candidate.model = model.eval()
    return candidate


def saved_temperature(candidate: Candidate) -> float:
    """The `calibration_temperature` the loaded model already divides its logits by (1.0 if it has none)."""
    model = candidate.model
    config = getattr(model, "config", None) or model.get_base_model().config  # a PeftModel has no .config
    return float(getattr(config, "calibration_temperature", 1.0))


def save_temperature(candidate: Candidate, temperature: float) -> str | None:
    """Write `temperature` as `calibration_temperature` into an mm-hf checkpoint's config.json; its path, or None.

    Other kinds have no field their model applies, so nothing is written and the log says so.
    """
    if candidate.kind != "mm-hf":
        logger.warning("--save_temperature: %s=%s is a %s model without calibration_temperature; nothing written",
                       candidate.name, candidate.path, candidate.kind)  # fmt: skip
        return None
    return write_config_key(candidate, "calibration_temperature", float(temperature))


def write_config_key(candidate: Candidate, key: str, value) -> str | None:
    """Set `key` in a local checkpoint folder's config.json (what --save_temperature writes); its path, or None
    for a checkpoint that is not a local folder (logged).

    Only that key changes (the JSON is edited, not re-serialised from a config object, so nothing else in the file
    moves).
    """
    if not os.path.isdir(candidate.path):
        logger.warning("--save_temperature: %s=%s is not a local folder; nothing written", candidate.name,
                       candidate.path)  # fmt: skip
        return None
    file = os.path.join(candidate.path, "config.json")
    with open(file) as f:
        config = json.load(f)
    config[key] = value
    with open(file, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    logger.info("--save_temperature: %s now has %s = %s (%s)", candidate.name, key, value, file)
    return file


def media_processor(candidate: Candidate):
    """The image processor or audio feature extractor inside the candidate's processor."""
    processor = candidate.processor
    attribute = "image_processor" if candidate.modality == "image" else "feature_extractor"
    return getattr(processor, attribute, processor)


def max_length_seconds(candidate: Candidate, flag_value: float | None) -> float:
    """Audio crop length: the flag, else what the mm-hf run used (run_config.yaml), else audio_cls's default."""
    if flag_value is not None:
        return flag_value
    return float(candidate.run_config.get("max_length_seconds") or DEFAULT_MAX_LENGTH_SECONDS)


def build_transform(candidate: Candidate, column: str, max_seconds: float | None):
    """The evaluation transform of the recipes: `column` -> the model's inputs (`pixel_values`, `input_values`...)."""
    extractor = media_processor(candidate)
    if candidate.modality == "image":
        return build_image_transform(extractor, train=False, image_column=column)
    return AudioTransform(extractor, audio_column=column, max_length_seconds=max_length_seconds(candidate, max_seconds))
