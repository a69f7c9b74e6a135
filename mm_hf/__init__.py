"""mm-hf: building blocks for the multimodal fine-tuning recipes in `recipes/`.

The names below are imported lazily (torch/transformers load only when one is used).
"""

import importlib

_EXPORTS = {
    "parse_args": "mm_hf.args",
    "build_dual_encoder_classifier": "mm_hf.models",
    "load_finetuned": "mm_hf.models",
    "build_audio_classifier": "mm_hf.models",
    "apply_strategy": "mm_hf.training",
    "ContrastiveDualEncoderModel": "mm_hf.models",
    "load_metric": "mm_hf.metrics",
    "ClassificationMetrics": "mm_hf.metrics",
    "publish": "mm_hf.publish",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mm_hf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
