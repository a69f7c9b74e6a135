"""The fusion recipes' arguments (fusion_imagetext_cls.py, video_cls.py): encoders, pooling, columns, tasks."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..data.multimodal import RANKING_GROUP_KEY
from ..errors import UserError
from ..models.fusion import Task
from ..training import FUSION_ENCODER_STRATEGIES
from .arguments import HubArguments
from .columns import column_field

_POOLING_HELP = "cls (first token), mean (over real tokens/frames), attention (learned), pooler (the encoder's own)"


@dataclass
class FusionModelArguments(HubArguments):
    vision_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Image/video-frame encoder (CLIP/SigLIP, ViT, DINOv2, ...): Hub id or folder."}
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Text encoder (BERT, MiniLM, CLIP text, ...): Hub id or folder."}
    )
    audio_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Audio encoder (wav2vec2, Whisper, AST, CLAP, ...): Hub id or folder."}
    )
    fusion: str = field(
        default="concat",
        metadata={
            "help": "concat (early), late (per-modality heads, averaged logits), gated, cross_attention "
            "(transformer over modality tokens), tensor (low-rank tensor fusion).",
            "choices": ["concat", "late", "gated", "cross_attention", "tensor"],
        },
    )
    hidden_size: int = field(default=256, metadata={"help": "Width every modality is projected to before fusion."})
    fusion_num_layers: int = field(default=2, metadata={"help": "Layers of the cross_attention fusion."})
    fusion_num_heads: int = field(
        default=4, metadata={"help": "Heads of cross_attention fusion / transformer pooling."}
    )
    tensor_rank: int = field(default=4, metadata={"help": "Rank of the low-rank tensor fusion."})
    image_pooling: str = field(default="mean", metadata={"help": f"Spatial pooling over patches: {_POOLING_HELP}."})
    text_pooling: str = field(default="mean", metadata={"help": f"Pooling over tokens: {_POOLING_HELP}."})
    audio_pooling: str = field(
        default="mean", metadata={"help": f"Temporal pooling over audio frames: {_POOLING_HELP}, max, transformer."}
    )
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout in the projections and before the heads."})
    modality_dropout: float = field(
        default=0.0, metadata={"help": "Training: probability of hiding each modality of a sample (never all)."}
    )
    vision_strategy: str | None = field(
        default=None,
        metadata={"help": f"Per-encoder override of --finetune_strategy: {', '.join(FUSION_ENCODER_STRATEGIES)}."},
    )
    text_strategy: str | None = field(default=None, metadata={"help": "As --vision_strategy, for the text encoder."})
    audio_strategy: str | None = field(default=None, metadata={"help": "As --vision_strategy, for the audio encoder."})

    def encoders(self, modalities) -> dict:
        """modality -> encoder id for `modalities` (image and video share the vision encoder; tabular has none)."""
        paths = {"image": self.vision_model_name_or_path, "video": self.vision_model_name_or_path}
        paths.update(text=self.text_model_name_or_path, audio=self.audio_model_name_or_path, tabular=None)
        return {m: paths[m] for m in modalities}

    def encoder_strategies(self) -> dict:
        return {"vision": self.vision_strategy, "text": self.text_strategy, "audio": self.audio_strategy}

    def config_kwargs(self) -> dict:
        """The `MultimodalFusionConfig` fields these arguments set."""
        names = ("fusion", "hidden_size", "fusion_num_layers", "fusion_num_heads", "tensor_rank", "image_pooling")
        names += ("text_pooling", "audio_pooling", "head_dropout", "modality_dropout")
        return {name: getattr(self, name) for name in names}


@dataclass
class FusionDataArguments:
    image_column: str | None = column_field("image_column", "Column of image paths (None/empty = missing).")
    text_column: str | None = column_field("text_column", "Column of texts (reports, captions, ...).")
    audio_column: str | None = column_field("audio_column", "Column of audio file paths.")
    video_column: str | None = field(default=None, metadata={"help": "Column of video file paths."})
    numeric_columns: list[str] = field(default_factory=list, metadata={"help": "Tabular numeric feature columns."})
    categorical_columns: list[str] = field(
        default_factory=list, metadata={"help": "Tabular categorical feature columns."}
    )
    label_column: list[str] = column_field(
        "label_column",
        "Label column(s): one per task, or several 0/1 / target columns of one task.",
        default_factory=lambda: ["label"],
    )
    problem_type: list[str] = field(
        default_factory=lambda: ["single_label_classification"],
        metadata={
            "help": "single_label_classification, multi_label_classification (BCE), binary_classification, "
            "regression (MSE), or ranking (a binary relevant-or-not head trained pointwise with BCE on (user, item) "
            "rows, evaluated by ranking each --group_column group's candidates: recall/ndcg/hit_rate@K, mrr, next to "
            "roc_auc and log_loss). One value: one head over all label columns; one per label column: multi-task."
        },
    )
    group_column: str | None = field(
        default=None,
        metadata={"help": "--problem_type ranking: the column whose value groups the rows ranked together (user id)."},
    )
    ranking_ks: list[int] = field(
        default_factory=lambda: [1, 5, 10],
        metadata={"help": "--problem_type ranking: the K of recall@K, ndcg@K, hit_rate@K (the largest picks the best "
                  "checkpoint by ndcg@K)."},
    )  # fmt: skip
    loss_weights: list[float] | None = field(default=None, metadata={"help": "Multi-task: loss weight per task."})
    threshold: float = field(
        default=0.5, metadata={"help": "Probability at which a label / the positive is predicted."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Texts are padded/truncated to this many tokens."})
    max_length_seconds: float = field(default=10.0, metadata={"help": "Audio is cut to this length."})
    augment: bool = field(default=True, metadata={"help": "Random resized crops on training images, audio gain/noise."})
    ablate_modalities: bool = field(
        default=True, metadata={"help": "Also evaluate with each modality removed (test_without_<modality>_*)."}
    )

    def __post_init__(self):
        if self.ranking and len(self.problem_type) != 1:
            raise UserError(
                f"--problem_type ranking is a single task (one relevant-or-not column); got {self.problem_type}"
            )
        if self.ranking and not self.group_column:
            raise UserError(
                "--problem_type ranking needs --group_column: the user (query) id whose candidates are ranked"
            )
        if self.group_column and not self.ranking:
            raise UserError(f"--group_column {self.group_column}: only --problem_type ranking groups rows")
        if not self.ranking and self.ranking_ks != [1, 5, 10]:
            raise UserError(f"--ranking_ks {self.ranking_ks}: only --problem_type ranking reports @K ranking metrics")
        if self.ranking and (not self.ranking_ks or min(self.ranking_ks) < 1):
            raise UserError(f"--ranking_ks must be positive integers, got {self.ranking_ks}")

    @property
    def ranking(self) -> bool:
        return "ranking" in self.problem_type

    def problem_types(self) -> str | list[str]:
        """One problem type (a single head), or the list of one per label column (multi-task). A ranking head is a
        binary one (pointwise: relevant or not); only its evaluation differs."""
        types = ["binary_classification" if t == "ranking" else t for t in self.problem_type]
        return types[0] if len(types) == 1 else types

    def label_names(self, tasks: list[Task]) -> list[str]:
        """The batch keys holding labels: `labels`, or `labels_<task>` per head of a multi-task model; ranking adds
        the group ids (`RANKING_GROUP_KEY`), which the Trainer then gathers with the labels for the metrics."""
        names = ["labels"] if len(tasks) == 1 else [f"labels_{t.name}" for t in tasks]
        return [*names, RANKING_GROUP_KEY] if self.ranking else names

    def tasks(self, spaces) -> list[Task]:
        """The model's task list from the label space(s) `load_multimodal_splits` returned."""
        spaces = spaces if isinstance(spaces, dict) else {"+".join(self.label_column): spaces}
        weights = self.loss_weights or [1.0] * len(spaces)
        if len(weights) != len(spaces):
            raise UserError(f"--loss_weights needs one weight per task ({len(spaces)}), got {weights}")
        return [
            Task(name, space.problem_type, list(space.names), float(weight))
            for (name, space), weight in zip(spaces.items(), weights, strict=True)
        ]


@dataclass
class FusionTrainingArguments(TrainingArguments):
    """TrainingArguments with the fusion recipes' own default learning rate (every other knob unchanged).

    A fusion model always trains freshly initialised layers (pooling, projections, fusion, heads), and Trainer's
    5e-5 moves them too little in 3 epochs: frozen DINOv2-small + MiniLM on a 1500-row image-XOR-text task
    (mm_hf/bench/fusion.py, standardised features, the model's layers trained on the cached features in a
    Trainer-equivalent loop) reached 0.60 (concat) and 0.77 (cross_attention) test accuracy at 5e-5 against
    0.83 / 0.87 at 3e-4 (1e-3: 0.85 / 0.82, cross-attention's transformer starting slower); the sklearn MLP on
    the same frozen features scored 0.81. The recipe at 3e-4 with linear_probe: concat 0.838, gated 0.848,
    cross_attention 0.850, tensor 0.856. With `--finetune_strategy full/top_k` the pretrained encoders train at
    this rate too: pass a smaller one (e.g. 2e-5) there.
    """

    learning_rate: float = field(
        default=3e-4,
        metadata={"help": "Initial AdamW learning rate (fusion recipes: 3e-4 for the new fusion layers; see docs)."},
    )
