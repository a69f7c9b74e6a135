"""mm-hf models, registered with the transformers Auto* classes on import."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoModelForVideoClassification,
)

from .audio_classifier import build_audio_classifier
from .clip_classifier import (
    DEFAULT_AUDIO_PROMPT_TEMPLATES,
    DEFAULT_PROMPT_TEMPLATES,
    build_dual_encoder_classifier,
    choose_head,
    class_text_embeddings,
    resolve_head_init,
)
from .configuration_audio_classifier import AudioClassifierConfig
from .configuration_clip_classifier import ClapClassifierConfig, ClipClassifierConfig
from .configuration_dual_encoder import ContrastiveDualEncoderConfig
from .configuration_multimodal_fusion import MultimodalFusionConfig
from .fusion import build_fusion_classifier, load_encoder
from .loading import load_finetuned
from .modeling_audio_classifier import AudioClassifierForAudioClassification
from .modeling_clip_classifier import ClapClassifierForAudioClassification, ClipClassifierForImageClassification
from .modeling_dual_encoder import ContrastiveDualEncoderModel
from .modeling_multimodal_fusion import MultimodalFusionForClassification, MultimodalFusionModel

AutoConfig.register(ClipClassifierConfig.model_type, ClipClassifierConfig, exist_ok=True)
AutoModelForImageClassification.register(ClipClassifierConfig, ClipClassifierForImageClassification, exist_ok=True)
AutoConfig.register(ClapClassifierConfig.model_type, ClapClassifierConfig, exist_ok=True)
AutoModelForAudioClassification.register(ClapClassifierConfig, ClapClassifierForAudioClassification, exist_ok=True)
AutoConfig.register(AudioClassifierConfig.model_type, AudioClassifierConfig, exist_ok=True)
AutoModelForAudioClassification.register(AudioClassifierConfig, AudioClassifierForAudioClassification, exist_ok=True)
AutoConfig.register(MultimodalFusionConfig.model_type, MultimodalFusionConfig, exist_ok=True)
AutoModel.register(MultimodalFusionConfig, MultimodalFusionModel, exist_ok=True)
AutoModelForSequenceClassification.register(MultimodalFusionConfig, MultimodalFusionForClassification, exist_ok=True)
# Video runs' checkpoints also load through AutoModelForVideoClassification (their auto_map says so too).
AutoModelForVideoClassification.register(MultimodalFusionConfig, MultimodalFusionForClassification, exist_ok=True)
# The contrastive wrapper is a training-time model: registered for in-process Auto loading, but what
# clip_retrieval saves is the plain dual encoder inside it, so it ships no remote code.
AutoConfig.register(ContrastiveDualEncoderConfig.model_type, ContrastiveDualEncoderConfig, exist_ok=True)
AutoModel.register(ContrastiveDualEncoderConfig, ContrastiveDualEncoderModel, exist_ok=True)
# Makes save_pretrained copy the code files and write `auto_map`, so checkpoints load without mm_hf.
ClipClassifierConfig.register_for_auto_class()
ClipClassifierForImageClassification.register_for_auto_class("AutoModelForImageClassification")
ClapClassifierConfig.register_for_auto_class()
ClapClassifierForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
AudioClassifierConfig.register_for_auto_class()
AudioClassifierForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
MultimodalFusionConfig.register_for_auto_class()
MultimodalFusionModel.register_for_auto_class("AutoModel")
MultimodalFusionForClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "DEFAULT_AUDIO_PROMPT_TEMPLATES",
    "DEFAULT_PROMPT_TEMPLATES",
    "AudioClassifierConfig",
    "AudioClassifierForAudioClassification",
    "ClapClassifierConfig",
    "ClapClassifierForAudioClassification",
    "ClipClassifierConfig",
    "ClipClassifierForImageClassification",
    "ContrastiveDualEncoderConfig",
    "ContrastiveDualEncoderModel",
    "MultimodalFusionConfig",
    "MultimodalFusionForClassification",
    "MultimodalFusionModel",
    "build_audio_classifier",
    "build_dual_encoder_classifier",
    "choose_head",
    "resolve_head_init",
    "build_fusion_classifier",
    "class_text_embeddings",
    "load_encoder",
    "load_finetuned",
]
