"""mm-hf models, registered with the transformers Auto* classes on import."""

from transformers import AutoConfig, AutoModelForImageClassification

from .clip_classifier import (
    DEFAULT_PROMPT_TEMPLATES,
    build_clip_classifier,
    class_text_embeddings,
    load_clip_classifier,
)
from .configuration_clip_classifier import ClipClassifierConfig
from .modeling_clip_classifier import ClipClassifierForImageClassification

AutoConfig.register(ClipClassifierConfig.model_type, ClipClassifierConfig, exist_ok=True)
AutoModelForImageClassification.register(ClipClassifierConfig, ClipClassifierForImageClassification, exist_ok=True)
# Makes save_pretrained copy the code files and write `auto_map`, so checkpoints load without mm_hf.
ClipClassifierConfig.register_for_auto_class()
ClipClassifierForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "DEFAULT_PROMPT_TEMPLATES",
    "ClipClassifierConfig",
    "ClipClassifierForImageClassification",
    "build_clip_classifier",
    "class_text_embeddings",
    "load_clip_classifier",
]
