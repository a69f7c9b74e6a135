"""What an export CHECKPOINT folder holds, refused early when it cannot be exported, and its loaded model as the
modules to trace (`ExportSpec`s) with example inputs made by its own processor.

Kinds: an mm-hf classifier output folder (full, merged, or a LoRA adapter merged here), a plain transformers
image/audio-classification checkpoint, or a CLIP/SigLIP/CLAP/VisionTextDualEncoder dual encoder (the retrieval
recipe's output), exported as two towers.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoProcessor,
)

from ..errors import UserError
from ..models import load_finetuned
from ..models.clip_classifier import is_audio_text_config
from ..models.configuration_audio_classifier import AudioClassifierConfig
from ..models.configuration_clip_classifier import ClapClassifierConfig, ClipClassifierConfig
from ..run_folder import refuse_unfinished
from .onnx import ExportSpec, NamedInputs, classifier_logits, tower_embedding

MM_HF_CLASSIFIERS = {
    ClipClassifierConfig.model_type: "image",
    ClapClassifierConfig.model_type: "audio",
    AudioClassifierConfig.model_type: "audio",
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
# Token ids and raw waveforms vary in length per batch; images, mel spectrograms of a fixed window
# (Whisper, AST, CLAP) and fixed-size inputs keep their traced shape.
SEQUENCE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "input_values")
EXAMPLE_TEXTS = ("a photo of a cat.", "a small red circle in the picture of a dog.")


@dataclass
class Checkpoint:
    path: str
    kind: str  # "mm-hf", "transformers" or "dual-encoder"
    modality: str  # "image" or "audio"
    adapter: bool = False


def inspect_checkpoint(path: str) -> Checkpoint:
    """What `path` is, without loading weights; a UserError naming the folder when it cannot be exported."""
    if not os.path.isdir(path):
        raise UserError(f"CHECKPOINT {path}: no such folder (export reads a local model folder)")
    refuse_unfinished(path, "export")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        checkpoints = sorted(glob.glob(os.path.join(path, "checkpoint-*")), key=_step)
        if checkpoints:
            raise UserError(
                f"CHECKPOINT {path} is the folder of an unfinished run: it holds {len(checkpoints)} checkpoint-* "
                f"folder(s) but no final model (config.json). Let the run finish, or export one of its checkpoints "
                f"explicitly, e.g. {checkpoints[-1]}"
            )
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            # Trainer's checkpoint-N of a LoRA run holds only the adapter; mm-hf writes config.json (the
            # classifier's model_type and labels) with the final model, at the end of the run.
            raise UserError(
                f"CHECKPOINT {path} is a Trainer checkpoint of an unfinished run without config.json (a LoRA "
                "checkpoint holds only the adapter): export the finished run's output folder, or copy that run's "
                "config.json and processor files here"
            )
        raise UserError(f"CHECKPOINT {path} holds no config.json: not a model folder")
    adapter = os.path.isfile(os.path.join(path, "adapter_config.json"))
    if not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES):
        raise UserError(
            f"CHECKPOINT {path} has a config.json but no weights ({', '.join(WEIGHT_FILES)}): the run did not "
            "finish saving its model"
        )
    config = AutoConfig.from_pretrained(path)
    if config.model_type in MM_HF_CLASSIFIERS:
        return Checkpoint(path, "mm-hf", MM_HF_CLASSIFIERS[config.model_type], adapter)
    architectures = " ".join(config.architectures or [])
    if adapter:
        raise UserError(f"CHECKPOINT {path}: a LoRA adapter on {config.model_type}, which mm-hf does not export")
    text_config = getattr(config, "text_config", None)
    if text_config is not None and (getattr(config, "vision_config", None) is not None or is_audio_text_config(config)):
        return Checkpoint(path, "dual-encoder", "audio" if is_audio_text_config(config) else "image")
    if "ImageClassification" in architectures:
        return Checkpoint(path, "transformers", "image")
    if "AudioClassification" in architectures:
        return Checkpoint(path, "transformers", "audio")
    raise UserError(
        f"CHECKPOINT {path}: {config.model_type} ({architectures or 'no architectures'}) is not supported by "
        "export: it exports image/audio classifiers and CLIP/SigLIP/CLAP/VisionTextDualEncoder dual encoders"
    )


def _step(folder: str) -> int:
    tail = folder.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def load_model(checkpoint: Checkpoint, base_model_name_or_path: str | None = None):
    """The model in eval mode (an adapter merged into its base), float32."""
    path = checkpoint.path
    if checkpoint.kind == "mm-hf":
        if checkpoint.adapter:
            model = _load_adapter(path, base_model_name_or_path)
        else:
            model = load_finetuned(path)
    elif checkpoint.kind == "dual-encoder":
        model = AutoModel.from_pretrained(path)
    elif checkpoint.modality == "image":
        model = AutoModelForImageClassification.from_pretrained(path)
    else:
        model = AutoModelForAudioClassification.from_pretrained(path)
    return model.float().eval()


def _load_adapter(path: str, base_model_name_or_path: str | None):
    with open(os.path.join(path, "adapter_config.json")) as f:
        recorded = json.load(f).get("base_model_name_or_path")
    base = base_model_name_or_path or recorded or AutoConfig.from_pretrained(path).backbone_name_or_path
    if not base:
        raise UserError(f"CHECKPOINT {path} is a LoRA adapter that records no base model: pass --base_model PATH")
    try:
        model = load_finetuned(path, base_model_name_or_path=base)
    except OSError as error:  # transformers' "not a local folder and not on the Hub (offline)" and the like
        raise UserError(
            f"CHECKPOINT {path} is a LoRA adapter whose base model {base} cannot be loaded ({error}). Pass the base "
            "with --base_model PATH, or export the run saved with --merge_lora true"
        ) from error
    # One graph without LoRA branches: W + BA folded into W, as --merge_lora does when saving.
    return model.merge_and_unload()


def load_processor(path: str):
    try:
        return AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise UserError(
            f"CHECKPOINT {path} has no processor config (preprocessor_config.json / tokenizer files), which the "
            f"export folder must carry: save the processor there (processor.save_pretrained) ({error})"
        ) from error


def _accepted(fn, inputs: dict) -> dict:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in inputs.items() if k in params}


def example_images(processor, n: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(n)]
    image_processor = getattr(processor, "image_processor", processor)
    return dict(image_processor(images=images, return_tensors="pt"))


def example_audio(processor, seconds: float, n: int = 2, seed: int = 0) -> dict:
    """`n` noise clips, the later ones shorter (so raw-waveform inputs carry real padding and a mask)."""
    extractor = getattr(processor, "feature_extractor", processor)
    rate = extractor.sampling_rate
    rng = np.random.default_rng(seed)
    clips = [
        rng.normal(0, 0.1, int(rate * seconds * (1 - 0.3 * i / max(n - 1, 1)))).astype(np.float32) for i in range(n)
    ]
    return dict(extractor(clips, sampling_rate=rate, return_tensors="pt", **_padding(extractor)))


def _padding(extractor) -> dict:
    # Raw-waveform extractors (wav2vec2) do not pad unless asked; Whisper's pads to its window by default, where
    # padding=True would pad to the longest clip instead, a shape the model refuses.
    default = inspect.signature(extractor.__call__).parameters.get("padding")
    return {"padding": True} if default is not None and default.default is False else {}


def example_texts(processor) -> dict:
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise UserError("the dual encoder's processor has no tokenizer, which the text tower export needs")
    return dict(tokenizer(list(EXAMPLE_TEXTS), padding=True, return_tensors="pt"))


def _float(inputs: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()}


def build_specs(checkpoint: Checkpoint, model, processor, audio_seconds: float) -> list[ExportSpec]:
    """The ONNX files to write: `model` (logits) for a classifier, the two towers for a dual encoder."""
    if checkpoint.modality == "image":
        media = example_images(processor)
    else:
        media = example_audio(processor, audio_seconds)
    if checkpoint.kind != "dual-encoder":
        inputs = _float(_accepted(model.forward, media))
        module = NamedInputs(model, classifier_logits, list(inputs)).eval()
        return [ExportSpec("model", module, "logits", inputs, _sequence(inputs, checkpoint))]
    method = "get_audio_features" if checkpoint.modality == "audio" else "get_image_features"
    media_inputs = _float(_accepted(getattr(model, method), media))
    text_inputs = _accepted(model.get_text_features, example_texts(processor))
    name = checkpoint.modality
    return [
        ExportSpec(
            f"{name}_tower",
            NamedInputs(model, tower_embedding(method), list(media_inputs)).eval(),
            f"{name}_embeds",
            media_inputs,
            _sequence(media_inputs, checkpoint),
        ),
        ExportSpec(
            "text_tower",
            NamedInputs(model, tower_embedding("get_text_features"), list(text_inputs)).eval(),
            "text_embeds",
            text_inputs,
            tuple(k for k in text_inputs if k in SEQUENCE_INPUTS),
        ),
    ]


def _sequence(inputs: dict, checkpoint: Checkpoint) -> tuple[str, ...]:
    # A raw waveform (batch, samples) varies in length; its attention_mask with it. Spectrogram inputs are fixed.
    if checkpoint.modality == "audio" and "input_values" in inputs and inputs["input_values"].dim() == 2:
        return tuple(k for k in inputs if k in SEQUENCE_INPUTS)
    return ()


def label_mapping(model) -> dict | None:
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None)
    if not id2label:
        return None
    return {"id2label": {str(int(k)): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}}
