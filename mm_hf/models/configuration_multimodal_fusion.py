"""Configuration of the multimodal fusion models (per-modality encoders + pooling + fusion + task heads).

Self-contained on purpose: `save_pretrained` copies this file next to the weights so the checkpoint
loads with `trust_remote_code=True` where mm_hf is not installed. Import only torch/transformers and sibling
model files here (`save_pretrained` copies those too).
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .fusion_modules import FUSION_KINDS

MODALITIES = ("image", "video", "text", "audio", "tabular")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "binary_classification", "regression")
SPATIAL_POOLINGS = ("cls", "mean", "attention", "pooler")
TEMPORAL_POOLINGS = ("mean", "max", "attention", "transformer")
# Which encoder config serves each modality: frames of a video go through the image encoder.
ENCODER_OF = {"image": "vision_config", "video": "vision_config", "text": "text_config", "audio": "audio_config"}


@strict
class MultimodalFusionConfig(PreTrainedConfig):
    r"""
    Config of [`MultimodalFusionModel`] and its task heads: one pretrained encoder per modality, pooled to one
    vector each, projected to `hidden_size`, fused, then one head per task.

    Args:
        modalities: the inputs, in order, among "image", "video" (frames through the vision encoder, then
            temporal pooling), "text", "audio", "tabular".
        vision_config / text_config / audio_config: configs (or dicts) of the encoders, loaded with `AutoModel`
            (vision: CLIP/SigLIP vision, ViT, DINOv2, ...; text: BERT/MiniLM/CLIP text, ...; audio: wav2vec2,
            Whisper (encoder only), AST, ...). A composite config (CLIP, SigLIP, CLAP) contributes its tower.
        encoder_names_or_paths: Hub id or path each encoder came from (recorded for cards and adapters).
        tabular_num_numeric / tabular_cardinalities: the tabular encoder's numeric feature count and, per
            categorical feature, its vocabulary size (index 0 = unknown is added on top).
        image_pooling / text_pooling / audio_pooling: how an encoder's token or frame sequence becomes one
            vector: "cls" (first token), "mean" (masked), "attention" (learned), "pooler" (the encoder's own
            pooled output); audio also accepts "max" and "transformer".
        frame_pooling / temporal_pooling: for video, the spatial pooling of each frame (as image_pooling), then
            the pooling over frames: "mean", "max", "attention", "transformer" (a small temporal transformer).
        num_frames: frames per video clip (the temporal transformer's maximum length).
        hidden_size: the shared width every modality is projected to before fusion.
        fusion: "concat" (early), "late" (per-modality heads, logits averaged over present modalities), "gated",
            "cross_attention" (transformer over modality tokens), "tensor" (low-rank tensor fusion).
        fusion_num_layers / fusion_num_heads / tensor_rank: sizes of the cross-attention and tensor fusions.
        head_dropout: dropout before each head (and inside the projections).
        modality_dropout: training-time probability of hiding each present modality of a sample (never all).
        tasks: one dict per head: `name`, `problem_type` (single_label_classification, multi_label_classification,
            binary_classification, regression), `labels` (class / label / target names), `loss_weight`.
        calibration_temperature: post-hoc temperature scaling (Guo et al. 2017) per classification head, task name ->
            T: in eval mode that head's logits are divided by T, so its softmax / sigmoid probabilities are
            calibrated; training never sees it. None (or a head left out) leaves the logits as they are;
            `python -m mm_hf.evaluate --calibration_data ... --save_temperature` writes fitted ones.
    """

    model_type = "mm_hf_multimodal_fusion"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit", optional=True),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="wav2vec2", optional=True),
    }

    modalities: list[str] | None = None
    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    audio_config: PreTrainedConfig | dict | None = None
    encoder_names_or_paths: dict | None = None
    tabular_num_numeric: int = 0
    tabular_cardinalities: list[int] | None = None
    image_pooling: str = "mean"
    text_pooling: str = "mean"
    audio_pooling: str = "mean"
    frame_pooling: str = "mean"
    temporal_pooling: str = "mean"
    num_frames: int = 8
    hidden_size: int = 256
    fusion: str = "concat"
    fusion_num_layers: int = 2
    fusion_num_heads: int = 4
    tensor_rank: int = 4
    head_dropout: float = 0.1
    modality_dropout: float = 0.0
    tasks: list[dict] | None = None
    calibration_temperature: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.calibration_temperature = {str(k): float(t) for k, t in (self.calibration_temperature or {}).items()}
        bad = {name: t for name, t in self.calibration_temperature.items() if not t > 0}
        if bad:
            raise ValueError(f"calibration_temperature must be > 0 for every head, got {bad}")
        self.modalities = list(self.modalities or ["image", "text"])
        self.tabular_cardinalities = list(self.tabular_cardinalities or [])
        self.encoder_names_or_paths = dict(self.encoder_names_or_paths or {})
        self.tasks = [dict(t) for t in (self.tasks or [])]
        for task in self.tasks:
            task.setdefault("loss_weight", 1.0)
            task["labels"] = [str(label) for label in task.get("labels", [])]

    def check(self) -> None:
        """Errors that name the bad value, raised when a model is built from this config.

        Not a `validate_*` method: strict dataclasses would run it on every instantiation, and transformers
        instantiates a default (task-less) config to diff against when saving.
        """
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct names among {MODALITIES}, got {self.modalities}")
        for modality in self.modalities:
            key = ENCODER_OF.get(modality)
            if key and getattr(self, key) is None:
                raise ValueError(f"modality {modality!r} needs {key} (an encoder config)")
        if "tabular" in self.modalities and not (self.tabular_num_numeric or self.tabular_cardinalities):
            raise ValueError("the tabular modality needs numeric and/or categorical features")
        if self.fusion not in FUSION_KINDS:
            raise ValueError(f"fusion must be one of {FUSION_KINDS}, got {self.fusion!r}")
        for name in ("image_pooling", "text_pooling", "frame_pooling"):
            if getattr(self, name) not in SPATIAL_POOLINGS:
                raise ValueError(f"{name} must be one of {SPATIAL_POOLINGS}, got {getattr(self, name)!r}")
        if self.audio_pooling not in SPATIAL_POOLINGS + TEMPORAL_POOLINGS:
            raise ValueError(f"audio_pooling must be one of {SPATIAL_POOLINGS + TEMPORAL_POOLINGS[1:]}")
        if self.temporal_pooling not in TEMPORAL_POOLINGS:
            raise ValueError(f"temporal_pooling must be one of {TEMPORAL_POOLINGS}, got {self.temporal_pooling!r}")
        if not self.tasks:
            raise ValueError("at least one task (head) is needed")
        names = [t.get("name") for t in self.tasks]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"task names must be distinct and non-empty, got {names}")
        for task in self.tasks:
            if task.get("problem_type") not in PROBLEM_TYPES:
                raise ValueError(f"task {task['name']!r}: problem_type must be one of {PROBLEM_TYPES}")
            if not task["labels"]:
                raise ValueError(f"task {task['name']!r} lists no labels/targets")
        # Only a classification head has probabilities to calibrate; a regression head's outputs are values.
        heads = {t["name"]: t["problem_type"] for t in self.tasks}
        wrong = [name for name in self.calibration_temperature if heads.get(name, "regression") == "regression"]
        if wrong:
            raise ValueError(f"calibration_temperature names {wrong}: not classification heads of this model "
                             f"({heads})")  # fmt: skip


def num_outputs(task: dict) -> int:
    """Width of a task's head: one logit per class/label/target, a single logit for binary."""
    return 1 if task["problem_type"] == "binary_classification" else len(task["labels"])


__all__ = ["MultimodalFusionConfig"]
