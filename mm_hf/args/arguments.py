"""The argument dataclasses every recipe shares: where models come from, the data flags, what to fine-tune."""

import dataclasses
import os
from dataclasses import dataclass, field

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..errors import UserError
from ..probe import PROBE_SELECTIONS
from ..training import ALL_STRATEGIES, CLASSIFIER_STRATEGIES, CONTRASTIVE_STRATEGIES, LP_FT_SECOND_STAGES


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
    validate_samples: str = field(
        default="full",
        metadata={
            "help": "How samples are checked before training (on the main process; the verdict is cached on disk "
            "and reused by the other processes and the next run while the files are unchanged): full decodes "
            "each, header only opens it and checks its size (a million PNGs: 60 CPU seconds, ~30 s on 2 cores), none trusts "
            "the data. With --streaming it applies to the validation/test splits; the training stream is checked "
            "as it is read. header and none: clip_imagecls and audio_cls (the others decode every sample: full).",
            "choices": ["full", "header", "none"],
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training split as a stream (datasets' IterableDataset: a Hub dataset, CSV/JSONL/"
            "parquet files, WebDataset .tar shards given to --train_file, e.g. 'shards/train-*.tar', or a class "
            "folder), decoded on the fly and split across processes by shard; unreadable samples are skipped, "
            "counted and reported. Needs --max_steps; the validation/test splits are read whole. Every recipe (the "
            "fusion recipes: label spaces from --class_names, a ClassLabel column or the validation split; tabular "
            "and feature statistics from the stream's first 1024 usable rows).",
        },
    )
    shuffle_buffer_size: int = field(
        default=1000,  # datasets' own default for IterableDataset.shuffle
        metadata={"help": "With --streaming: samples held in the shuffle buffer (shard order is shuffled too)."},
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "With --streaming: the class names, in label order, for a stream whose label column is text or "
            "an integer (a stream cannot be scanned for its classes first); a ClassLabel column or class folders "
            "name them themselves. Fusion recipes: one single-label task (else the validation split's labels)."
        },
    )
    max_bad_fraction: float = field(
        default=0.01,
        metadata={"help": "With --streaming: stop with an error when more than this fraction of samples is unusable."},
    )

    def __post_init__(self):
        if self.validate_samples not in ("full", "header", "none"):
            raise UserError(f"--validate_samples must be full, header or none; got {self.validate_samples!r}")
        if not 0 <= self.max_bad_fraction < 1:
            raise UserError(f"--max_bad_fraction is a fraction in [0, 1); got {self.max_bad_fraction}")
        if self.shuffle_buffer_size < 1:
            raise UserError(f"--shuffle_buffer_size must be at least 1; got {self.shuffle_buffer_size}")


@dataclass
class FinetuneArguments:
    finetune_strategy: str = field(
        default="lora",
        metadata={
            "help": f"What to train. Classifiers and fusion models: {', '.join(CLASSIFIER_STRATEGIES)} (linear_probe: "
            "the head on frozen features; top_k: the last --unfreeze_last_n_layers layers + head; lora: peft "
            "adapters + head; lp_ft, clip_imagecls and audio_cls: a converged linear probe first, then "
            "--lp_ft_second_stage from its head, Kumar et al. 2022). "
            f"Contrastive: {', '.join(CONTRASTIVE_STRATEGIES)} (lock_image freezes the image, or CLAP's audio, tower; "
            "lock_text the text tower).",
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
            "recipes: every frozen encoder, also one frozen by --vision_strategy/--text_strategy/--audio_strategy). "
            "The pass is split across the launched processes; --features_cache_dir keeps it for later runs."
        },
    )
    features_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder that keeps each frozen-backbone pass (linear_probe features, frozen fusion encoders, "
            "retrieval embeddings) on disk, keyed by fingerprints of the model, data and preprocessing: a later run "
            "with the same three (a sweep of probes, heads, fusion layers) reads it instead of running the backbone. "
            "Default: not kept. Bounded by --features_cache_max_gb; `python -m mm_hf.feature_cache ls|trim|clear DIR`."
        },
    )
    features_cache_max_gb: float | None = field(
        default=None,
        metadata={
            "help": "Bound of --features_cache_dir in GB: after writing an entry, the least recently used ones are "
            "evicted (never one this run uses). Default: MM_HF_FEATURES_CACHE_MAX_GB, else no bound."
        },
    )
    probe_solver: str = field(
        default="lbfgs",
        metadata={
            "help": "With linear_probe on cached features (clip_imagecls, audio_cls): lbfgs fits the head to "
            "convergence (logistic regression, L2 strength chosen on held-out data, see --probe_selection; ignores "
            "the learning rate, epochs and steps); trainer trains it by Trainer epochs instead.",
            "choices": ["lbfgs", "trainer"],
        },
    )
    probe_selection: str = field(
        default="auto",
        metadata={
            "help": "How --probe_solver lbfgs chooses its L2 strength: validation scores each value on the "
            "validation split (best accuracy); cross_validation by 5-fold cross-validation on train + validation "
            "pooled (lowest log-loss; the head still trains on train only); auto cross-validates when the "
            "validation split has under 1000 rows (small validation sets tie over wide ranges of C). Without a "
            "validation split: cross-validation on train (validation is then refused).",
            "choices": list(PROBE_SELECTIONS),
        },
    )
    lp_ft_second_stage: str = field(
        default="full",
        metadata={
            "help": "With --finetune_strategy lp_ft: what trains after the linear-probe stage, starting from its head.",
            "choices": list(LP_FT_SECOND_STAGES),
        },
    )
    wise_ft_alphas: list[str] | None = field(
        default=None,
        metadata={
            "help": "WiSE-FT (Wortsman et al. 2022): after training, mix start and fine-tuned weights as (1-a)*start + "
            "a*tuned for each a given (e.g. 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1), evaluate each on validation and "
            "every OOD set, keep the best a (--wise_ft_select) in the saved model. One evaluation per a.",
        },
    )
    wise_ft_select: str = field(
        default="validation",
        metadata={
            "help": "The set whose accuracy (the run's headline metric) chooses the WiSE-FT a: validation, or the NAME "
            "of a held-out OOD validation set (--ood_dir NAME=PATH); never a test set."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improvement (turns on load_best_model_at_end)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow writing into a non-empty --output_dir. Not needed to continue an interrupted run there: "
            "--resume_from_checkpoint auto."
        },
    )
    hp_search: str | None = field(
        default=None,
        metadata={
            "help": "Search training flags (--hp_space) with this engine through Trainer.hyperparameter_search: "
            "--n_trials runs from the untouched model, compared on the validation split by metric_for_best_model "
            "(default: the recipe's criterion); the best is retrained and saved. optuna: pip install "
            "'mm-hf[sweeps]'; ray (Ray Tune, also across a Ray cluster): pip install 'mm-hf[sweeps-ray]'.",
            "choices": ["optuna", "ray"],
        },
    )
    n_trials: int = field(default=10, metadata={"help": "With --hp_search: how many trials."})
    hp_storage: str | None = field(
        default=None,
        metadata={
            "help": "With --hp_search optuna: an Optuna storage URL (e.g. sqlite:///sweep.db) keeping the study, named "
            "after --output_dir, as each trial ends; relaunched with --resume_from_checkpoint auto, a killed sweep "
            "keeps its finished trials and runs only the missing ones."
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "With --hp_search ray: the Ray cluster to run the trials on (HEAD:6379, or auto for the one "
            "`ray start` started on this machine); default RAY_ADDRESS, else a local Ray instance for this sweep."
        },
    )
    hp_space: str | None = field(
        default=None,
        metadata={
            "help": "With --hp_search: YAML file of training flags to search, e.g. `learning_rate: {type: float, "
            "low: 1.0e-5, high: 1.0e-3, log: true}` (type float|int|categorical; see mm_hf/sweeps.py)."
        },
    )
    traceback: bool = field(
        default=False,
        metadata={
            "help": "On an input mistake (bad data, flag, file or sample) also print the Python traceback, instead of "
            "only the message and exit status 2 (as MM_HF_DEBUG=1). Not --debug: TrainingArguments owns that flag."
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "Attention of the pretrained towers during training and evaluation: sdpa (torch's fused "
            "scaled-dot-product attention; towers without it in transformers, WavLM and CLAP, run eager and are "
            "logged) or eager (the plain matmul-softmax-matmul). See mm_hf/fastpaths.py.",
            "choices": ["sdpa", "eager"],
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
        if self.probe_selection not in PROBE_SELECTIONS:
            raise UserError(
                f"--probe_selection must be one of {', '.join(PROBE_SELECTIONS)}; got {self.probe_selection!r}"
            )
        if self.probe_selection != "auto" and (
            self.probe_solver != "lbfgs" or self.finetune_strategy not in ("linear_probe", "lp_ft")
        ):
            raise UserError(
                f"--probe_selection {self.probe_selection} chooses the L2 strength of the L-BFGS probe, which only "
                "--finetune_strategy linear_probe or lp_ft with --probe_solver lbfgs fits: drop --probe_selection."
            )
        if self.lp_ft_second_stage not in LP_FT_SECOND_STAGES:
            raise UserError(
                f"--lp_ft_second_stage must be one of {', '.join(LP_FT_SECOND_STAGES)}; got {self.lp_ft_second_stage!r}"
            )
        self.wise_ft_alphas = parse_alphas(self.wise_ft_alphas)
        if self.attn_implementation not in ("sdpa", "eager"):
            raise UserError(f"--attn_implementation must be sdpa or eager; got {self.attn_implementation!r}")


def parse_alphas(values) -> list[float] | None:
    """--wise_ft_alphas as floats in [0, 1], from "0,0.5,1", "0 0.5 1" (argparse gives a list) or a YAML list."""
    if values is None:
        return None
    if isinstance(values, str | int | float):
        values = [values]
    try:
        alphas = [float(part) for value in values for part in str(value).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--wise_ft_alphas: numbers between 0 and 1 separated by commas, got {values}") from None
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if not alphas or bad:
        raise UserError(
            f"--wise_ft_alphas: each a must lie in [0, 1] (0 = the starting model, 1 = the fine-tuned one), got "
            f"{bad or 'none'}"
        )
    return alphas


@dataclass
class ClassifierLossArguments:
    """The training loss of the CLIP-family classifier recipes (clip_imagecls; audio_cls with CLAP)."""

    loss: str = field(
        default="cross_entropy",
        metadata={
            "help": "cross_entropy: the head's logits against the labels; flyp: FLYP (Goyal et al. 2023), both towers "
            "trained contrastively against class-prompt captions (--prompt_templates), the head recomputed from the "
            "text tower (mm_hf.flyp; --finetune_strategy full or top_k).",
            "choices": ["cross_entropy", "flyp"],
        },
    )


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
