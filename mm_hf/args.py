"""Argument dataclasses shared by the recipes, and `parse_args` (YAML defaults -> CLI overrides).

Flag names follow transformers' example scripts (run_image_classification.py, ...) where the meaning is
the same, so their users can switch without relearning. Every training knob lives in TrainingArguments.
"""

import argparse
import dataclasses
import difflib
import logging
import os
import sys
from dataclasses import dataclass, field

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import HfArgumentParser, TrainingArguments

from .errors import UserError
from .models.fusion import Task
from .training import ALL_STRATEGIES, CLASSIFIER_STRATEGIES, CONTRASTIVE_STRATEGIES, FUSION_ENCODER_STRATEGIES

logger = logging.getLogger(__name__)


@dataclass
class HubArguments:
    """Where pretrained models come from; shared by every recipe's model arguments."""

    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model version: branch, tag or commit id."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from the Hub for the model/dataset (runs that code!)."}
    )

    def __post_init__(self):
        for name in (f.name for f in dataclasses.fields(self) if f.name.endswith("model_name_or_path")):
            check_model_source(getattr(self, name), f"--{name}")

    def hub_kwargs(self) -> dict:
        """The `from_pretrained` keyword arguments these flags set."""
        return {
            "cache_dir": self.cache_dir,
            "revision": self.model_revision,
            "trust_remote_code": self.trust_remote_code,
        }


@dataclass
class ModelArguments(HubArguments):
    """The image recipes' model (clip_imagecls, clip_retrieval): a dual encoder."""

    model_name_or_path: str = field(
        default="openai/clip-vit-base-patch32",
        metadata={"help": "Pretrained dual encoder (CLIP, SigLIP, CLAP, ...): a Hub id or a local folder."},
    )


@dataclass
class AudioModelArguments(HubArguments):
    """The audio classification recipe's model. Its default is transformers' run_audio_classification.py's
    (wav2vec2-base, a speech encoder), not the image recipes' CLIP, which has no audio tower."""

    model_name_or_path: str = field(
        default="facebook/wav2vec2-base",
        metadata={
            "help": "Pretrained audio encoder (wav2vec2, HuBERT, WavLM, Whisper, AST) or audio-text model (CLAP): "
            "a Hub id or a local folder."
        },
    )


# One spelling per column concept in every recipe; the other spellings stay accepted as aliases, on the command line
# and as --config keys: the transformers example scripts' (run_image_classification.py --image_column_name,
# run_audio_classification.py --audio_column_name, both --label_column_name) and text <-> caption (run_clip.py
# says --caption_column, the fusion recipes --text_column: one concept, the text beside the media).
COLUMN_ALIASES = {
    "image_column": ["image_column_name"],
    "audio_column": ["audio_column_name"],
    "label_column": ["label_column_name"],
    "text_column": ["caption_column"],
    "caption_column": ["text_column"],
}


def column_field(name: str, help: str, default=None, default_factory=dataclasses.MISSING):
    """A column flag `--name` that also answers to its COLUMN_ALIASES (underscored and dashed, as argparse shows)."""
    names = COLUMN_ALIASES[name]
    aliases = [f"--{a}" for a in names] + [f"--{a.replace('_', '-')}" for a in names]
    metadata = {"help": help, "aliases": aliases}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# Column mixins: a recipe's argument dataclass inherits the columns it reads, so each flag is declared once.
@dataclass
class LabelColumnArguments:
    label_column: str = column_field("label_column", "Column holding class labels.", default="label")


@dataclass
class ImageColumnArguments:
    image_column: str = column_field("image_column", "Column holding images or image paths.", default="image")


@dataclass
class AudioColumnArguments:
    audio_column: str = column_field("audio_column", "Column holding audio clips or audio paths.", default="audio")


@dataclass
class CaptionColumnArguments:
    caption_column: str = column_field(
        "caption_column", "Column holding captions (a string or a list of strings).", default="caption"
    )


def media_column(args, modality: str, explicit: set[str]) -> str:
    """The column of `modality` (image or audio) in `args` (ImageColumnArguments + AudioColumnArguments). The other
    modality's column flag, if the user set it (`explicit`, as `explicit_flags` gives), is refused, not ignored."""
    unread = "image" if modality == "audio" else "audio"
    if f"{unread}_column" in explicit:
        raise UserError(f"--{unread}_column: this is an {modality}-text model; its media come from --{modality}_column")
    return getattr(args, f"{modality}_column")


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id (or a local dataset script/folder)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration name of the Hub dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "Training folder: one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation folder: one sub-folder per class."})
    test_dir: str | None = field(default=None, metadata={"help": "Test folder: one sub-folder per class."})
    train_file: str | None = field(default=None, metadata={"help": "Training CSV/JSONL file (paths relative to it)."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation CSV/JSONL file."})
    test_file: str | None = field(default=None, metadata={"help": "Test CSV/JSONL file."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for validation when no validation split is given."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate training data (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation data (debugging)."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate test data (debugging)."})
    skip_bad_samples: bool = field(
        default=False, metadata={"help": "Drop unreadable samples and report them instead of stopping with an error."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for dataset validation/preprocessing."}
    )


@dataclass
class FinetuneArguments:
    finetune_strategy: str = field(
        default="lora",
        metadata={
            "help": f"What to train. Classifiers and fusion models: {', '.join(CLASSIFIER_STRATEGIES)} (linear_probe: "
            "the head on frozen features; top_k: the last --unfreeze_last_n_layers layers + head; lora: peft "
            f"adapters + head). Contrastive: {', '.join(CONTRASTIVE_STRATEGIES)} (lock_image freezes the image, or "
            "CLAP's audio, tower; lock_text the text tower).",
        },
    )
    unfreeze_last_n_layers: int = field(default=2, metadata={"help": "With top_k: how many final layers to train."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names to adapt (default: resolved per architecture, e.g. q_proj k_proj v_proj out_proj)."
        },
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "Save LoRA merged into the weights (a plain checkpoint) instead of an adapter."},
    )
    precompute_features: bool = field(
        default=True,
        metadata={
            "help": "With linear_probe: run the frozen backbone once and train the head on cached features (fusion "
            "recipes: every frozen encoder, also one frozen by --vision_strategy/--text_strategy/--audio_strategy)."
        },
    )
    probe_solver: str = field(
        default="lbfgs",
        metadata={
            "help": "With linear_probe on cached features (clip_imagecls, audio_cls): lbfgs fits the head to "
            "convergence (logistic regression, L2 strength chosen on validation, else by 5-fold cross-validation "
            "on train; ignores the learning rate, epochs and steps); trainer trains it by Trainer epochs instead.",
            "choices": ["lbfgs", "trainer"],
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improvement (turns on load_best_model_at_end)."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty --output_dir."})
    traceback: bool = field(
        default=False,
        metadata={
            "help": "On an input mistake (bad data, flag, file or sample) also print the Python traceback, instead of "
            "only the message and exit status 2 (as MM_HF_DEBUG=1). Not --debug: TrainingArguments owns that flag."
        },
    )

    def __post_init__(self):
        # Each recipe checks its own subset (classifier vs contrastive); a typo fails here, at parse time.
        if self.finetune_strategy not in ALL_STRATEGIES:
            raise UserError(
                f"--finetune_strategy must be one of {', '.join(ALL_STRATEGIES)}; got {self.finetune_strategy!r}"
            )
        if self.probe_solver not in ("lbfgs", "trainer"):
            raise UserError(f"--probe_solver must be lbfgs or trainer; got {self.probe_solver!r}")


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
            "help": "single_label_classification, multi_label_classification (BCE), binary_classification or "
            "regression (MSE). One value: one head over all label columns; one per label column: multi-task."
        },
    )
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

    def problem_types(self) -> str | list[str]:
        """One problem type (a single head), or the list of one per label column (multi-task)."""
        return self.problem_type[0] if len(self.problem_type) == 1 else list(self.problem_type)

    @staticmethod
    def label_names(tasks: list[Task]) -> list[str]:
        """The batch keys holding labels: `labels`, or `labels_<task>` per head of a multi-task model."""
        return ["labels"] if len(tasks) == 1 else [f"labels_{t.name}" for t in tasks]

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


def parse_args(dataclass_types, argv=None):
    """Parse `argv` into `dataclass_types`, with `--config file.yaml` supplying defaults.

    Precedence: CLI > YAML > dataclass defaults. Unknown YAML keys are an error naming the file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # The default usage line lists every TrainingArguments flag (~200 lines) above each argument error.
    parser = HfArgumentParser(dataclass_types, usage="%(prog)s [--flag value ...] (every flag: --help)")
    parser.add_argument("--config", default=None, help="YAML file of defaults for any flag below; the CLI wins.")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_load_yaml_defaults(known.config, parser))
    try:
        *outputs, extra = parser.parse_args_into_dataclasses(rest, return_remaining_strings=True)
    except UserError:
        raise
    except ValueError as e:  # the dataclasses' own checks (e.g. TrainingArguments.__post_init__) on the flags' values
        raise UserError(f"invalid arguments: {e}") from e
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # parse_args_into_dataclasses returns a trailing Namespace holding the non-dataclass `--config`.
    return tuple(o for o in outputs if dataclasses.is_dataclass(o))


# Checkpoint retention and logging, unless the user sets them. Trainer's own defaults keep every checkpoint with
# its optimizer state (12 copies after 12 epochs: 1 GB for ViT-B/32 with AdamW each) and log every 500 steps (one
# loss point in a 756-step run). save_total_limit=1 still keeps the best checkpoint next to the latest one while
# load_best_model_at_end needs it (Trainer protects both), and 0.02 logs every 2% of the steps: ~50 points a run.
TRAINING_DEFAULTS = {"save_total_limit": 1, "logging_steps": 0.02}


def fill_defaults(parsed, defaults: dict, explicit: set[str]) -> tuple:
    """`parsed` (parse_args' dataclasses) with each field of `defaults` set unless the user set it (`explicit`).

    Each name is set on the dataclass that has it; changed objects are rebuilt with `dataclasses.replace`, so
    their validation (`__post_init__`) runs again. Returns the new tuple, in the same order.
    """
    out = []
    for obj in parsed:
        names = {f.name for f in dataclasses.fields(obj)}
        changes = {k: v for k, v in defaults.items() if k in names and k not in explicit}
        new = dataclasses.replace(obj, **changes) if changes else obj
        if hasattr(obj, "explicit_flags"):  # start_run's record of the user's flags is no dataclass field
            new.explicit_flags = obj.explicit_flags
        out.append(new)
    unknown = set(defaults) - {f.name for obj in parsed for f in dataclasses.fields(obj)}
    if unknown:
        raise ValueError(f"defaults for unknown argument(s): {', '.join(sorted(unknown))}")
    return tuple(out)


# The classifier recipes' (clip_imagecls, audio_cls) TrainingArguments defaults for every flag the user leaves unset (a flag on the command line or in the YAML always
# wins), measured on DINOv2-small + MiniLM and a random-init small CLIP, grey digits and colour photo crops, against
# a plain AdamW loop on the same model and data (README "Choosing the defaults"). Learning rate per strategy: the
# towers of full/top_k at 1e-4 (DINOv2 digits 0.760 vs 0.533 for the plain loop), LoRA adapters at 1e-3 (0.860),
# a linear probe on cached features at 3e-2 (0.747; 1e-3 reached 0.400 in 10 epochs).
STRATEGY_DEFAULTS = {
    "full": dict(learning_rate=1e-4),
    "top_k": dict(learning_rate=1e-4),
    "lora": dict(learning_rate=1e-3),
    "linear_probe": dict(learning_rate=3e-2),
}
# Trainer's 3 epochs, no warm-up, linear decay and no weight decay: 3 epochs cost the linear probe 0.747 -> 0.540
# (digits), warm-up 10% + cosine + weight decay 0.05 gave small CLIP 0.200 -> 0.257.
COMMON_DEFAULTS = dict(num_train_epochs=10, warmup_steps=0.1, lr_scheduler_type="cosine", weight_decay=0.05)


def fill_strategy_defaults(parsed) -> tuple:
    """`parsed` (as start_run returns it) with the learning rate, epochs and schedule of its `--finetune_strategy`
    (STRATEGY_DEFAULTS, COMMON_DEFAULTS) set wherever the user did not set them; logs what it chose."""
    strategy = next(a for a in parsed if isinstance(a, FinetuneArguments)).finetune_strategy
    training_args = next(a for a in parsed if isinstance(a, TrainingArguments))
    defaults = {**COMMON_DEFAULTS, **STRATEGY_DEFAULTS.get(strategy, {})}
    user_set = training_args.explicit_flags  # every flag set on the command line or in --config (start_run)
    chosen = {k: v for k, v in defaults.items() if k not in user_set}
    logger.info("defaults for finetune_strategy=%s (pass a flag to change one): %s", strategy, chosen)
    return fill_defaults(parsed, defaults, user_set)


def explicit_flags(argv, dataclass_types) -> set[str]:
    """Names (dataclass field names) of the flags the user set: on the command line `argv` or as keys of the
    YAML file given with `--config`. Everything else holds its default, which a recipe may then choose per
    situation (e.g. per --finetune_strategy) without overriding a user's choice.

    Flags are matched by their exact option strings (`--flag`, `--flag=value`, `--no_flag`, dashed forms, aliases such
    as `--image_column_name`), and YAML keys by either spelling;
    call it after `parse_args`, which has already refused unknown flags and YAML keys.
    """
    parser = HfArgumentParser(dataclass_types)
    dests = {option: action.dest for action in parser._actions for option in action.option_strings}
    argv = list(argv)
    names = {dests[token.split("=", 1)[0]] for token in argv if token.split("=", 1)[0] in dests}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config = pre.parse_known_args(argv)[0].config
    if config:
        names |= set(_load_yaml_defaults(config, parser))
    return names - {"help"}


def _load_yaml_defaults(path: str, parser: HfArgumentParser) -> dict:
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise UserError(f"cannot read --config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must be a mapping of flag: value, got {type(values).__name__}")
    known = {a.dest for a in parser._actions} - {"help", "config"}
    # A key may be a flag's alias (image_column_name for image_column); `no_<flag>` switches are no keys.
    aliases = {
        option[2:]: action.dest
        for action in parser._actions
        if action.dest in known and not isinstance(action, argparse._StoreFalseAction)
        for option in action.option_strings
        if option.startswith("--") and "-" not in option[2:]
    }
    unknown = [k for k in values if k not in aliases]
    if unknown:
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown]
        raise UserError(f"unknown key(s) in --config {path}: {', '.join(hints)}")
    resolved = {}
    for key, value in values.items():
        dest = aliases[key]
        if dest in resolved:
            spellings = " and ".join(k for k in values if aliases[k] == dest)
            raise UserError(f"--config {path} sets {dest} twice ({spellings} are one flag): keep one")
        resolved[dest] = value
    return resolved


def check_model_source(value: str | None, flag: str) -> None:
    """Refuse a model that is neither an existing folder nor a possible Hub id (owner/name), before any download.

    Without this, a mistyped local path reaches huggingface_hub as a repo id and fails with "Repo id must be in
    the form 'repo_name' or 'namespace/repo_name'", which says nothing about the folder.
    """
    if not value or os.path.isdir(value):
        return
    if os.path.isfile(value):
        raise UserError(f"{flag} {value} is a file: pass the folder holding it (with config.json), or a Hub model id")
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise UserError(
            f"{flag} {value}: no such folder (relative to {os.getcwd()}), and not a Hub model id either (those look "
            "like owner/name, e.g. openai/clip-vit-base-patch32): check the path"
        ) from None


def args_to_dict(*arg_objects) -> dict:
    """Resolved arguments as one flat, YAML-safe dict; secrets (hub tokens) are left out."""
    out = {}
    for obj in arg_objects:
        values = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        out.update({k: v for k, v in values.items() if "token" not in k})
    return out
