"""Model cards rendered from an output folder (huggingface_hub `ModelCard` + a Markdown template).

Everything a card says is read back from the files the run wrote (`run_info.json`, `all_results.json`,
`run_config.yaml`, `before_after.md`, `classification_report.txt`, plots), so the front matter always
equals `all_results.json`, and `mm_hf.publish` can re-render the card for another variant (adapter or
merged) without retraining.
"""

import dataclasses
import json
import os
import re
from dataclasses import dataclass

import torch
import transformers
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .atomic_files import atomic_path, atomic_write

TEMPLATE = os.path.join(os.path.dirname(__file__), "templates", "model_card.md")
RUN_INFO = "run_info.json"
# The hyperparameters worth a line in a card; the complete set lives in run_config.yaml.
CARD_HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "optim",
    "seed",
    "bf16",
    "fp16",
    "tf32",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "unfreeze_last_n_layers",
    "head_init",
    "head_dropout",
    "early_stopping_patience",
    "lp_ft_second_stage",
    "wise_ft_alphas",
    "wise_ft_select",
    "loss",
)
PLOTS = (
    ("confusion_matrix.png", "Confusion matrix"),
    ("training_curves.png", "Training curves"),
    ("hp_search.png", "Hyperparameter search"),
    ("wise_ft_curve.png", "WiSE-FT: ID vs OOD accuracy along the interpolation"),
)
# Written by runs with --finetune_strategy lp_ft, --loss flyp or --wise_ft_alphas (mm_hf.wise_ft).
ROBUSTNESS_REPORT = "robustness.md"


@dataclass
class RunInfo:
    """What `run_info.json` records for the card beyond the arguments and metrics: one record per output folder.

    A recipe fills the first block; `mm_hf.outputs.save_run` the measured part (eval split, before label, saved
    variant, trainable parameters, train runtime); `write_run_info` the environment. The card reads the record
    back with `read_run_info`.
    """

    pipeline_tag: str | None  # the Hub pipeline of the saved model; None where none fits (fusion)
    base_model: str | list[str]  # a name, or one per encoder of a fusion model
    dataset: str
    command: str
    finetune_strategy: str | None = None
    task: str | None = None  # the card's tag and summary; default: the pipeline tag
    eval_task_type: str | None = None  # the model-index task type; default: the pipeline tag
    head: dict | None = None  # how the classifier head was initialised (clip_imagecls)
    usage: str | None = None  # the card's usage snippet ("fusion", "fusion_video"); default: from the pipeline tag
    extra_tags: list[str] | None = None
    eval_split: str | None = None  # Trainer's prefix of the held-out split: "test" or "eval"
    before_label: str | None = None  # what "before" means in the table: zero-shot, untrained heads, ...
    saved_as: str | None = None  # "full", "adapter" or "merged"
    trainable: dict | None = None  # mm_hf.training.trainable_parameters: parameters trained / total
    train_runtime: float | None = None  # None: not trained
    hardware: str | None = None
    transformers_version: str | None = None
    resumed_from: str | None = None  # the checkpoint an interrupted run was resumed from (--resume_from_checkpoint)

    def __post_init__(self):
        self.task = self.task or self.pipeline_tag


# Written only when set, so each recipe's run_info.json keeps the keys it always had.
_OPTIONAL_FIELDS = ("eval_task_type", "head", "usage", "extra_tags", "resumed_from")


def write_run_info(output_dir: str, info: RunInfo) -> dict:
    """`run_info.json`: `info` with this machine's hardware and transformers version; returns what was written."""
    info = dataclasses.replace(info, hardware=_hardware(), transformers_version=transformers.__version__)
    record = {k: v for k, v in dataclasses.asdict(info).items() if v is not None or k not in _OPTIONAL_FIELDS}
    with atomic_write(os.path.join(output_dir, RUN_INFO)) as f:
        json.dump(record, f, indent=2)
    return record


def read_run_info(output_dir: str) -> RunInfo:
    """The `RunInfo` an output folder recorded (keys this version does not know are ignored)."""
    record = _read_json(output_dir, RUN_INFO)
    names = {f.name for f in dataclasses.fields(RunInfo)}
    return RunInfo(**{k: v for k, v in record.items() if k in names})


def write_model_card(
    output_dir: str,
    saved_as: str | None = None,
    target_dir: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """Render `README.md` for the run in `output_dir` into `target_dir` (default: the same folder).

    `saved_as` overrides the variant recorded at training time (e.g. "merged" when publishing a merged
    copy of an adapter run); `repo_id` is used in the loading snippets (default: the folder's path).
    """
    card = render_model_card(output_dir, saved_as, repo_id, license)
    with atomic_path(os.path.join(target_dir or output_dir, "README.md")) as path:
        card.save(path)
    return card


def render_model_card(
    output_dir: str, saved_as: str | None = None, repo_id: str | None = None, license: str | None = None
) -> ModelCard:
    info = read_run_info(output_dir)
    results = _read_json(output_dir, "all_results.json")
    with open(os.path.join(output_dir, "run_config.yaml")) as f:
        resolved = yaml.safe_load(f) or {}
    saved_as = saved_as or info.saved_as
    split, dataset = info.eval_split, info.dataset
    # A fusion model has one base model per encoder: the Hub's `base_model` is then a list of ids.
    base_models = info.base_model if isinstance(info.base_model, list) else [info.base_model]
    hub_ids = [name for name in base_models if _is_hub_id(name)]
    base_model = " + ".join(base_models)
    dataset_id = dataset if _is_hub_id(dataset) else None
    prefix = f"{split}_"
    eval_results = [
        EvalResult(
            task_type=info.eval_task_type or info.pipeline_tag,
            dataset_type=dataset_id or "custom",
            dataset_name=dataset_id or os.path.basename(os.path.normpath(dataset)),
            dataset_split=split,
            metric_type=key[len(prefix) :],
            metric_value=float(value),
        )
        for key, value in sorted(results.items())
        if key.startswith(prefix) and _is_quality_metric(key[len(prefix) :])
    ]
    eval_results += shift_eval_results(
        results, resolved, task_type=info.eval_task_type or info.pipeline_tag, dataset_type=dataset_id or "custom",
        dataset_name=dataset_id or os.path.basename(os.path.normpath(dataset)),
    )  # fmt: skip
    card_data = ModelCardData(
        library_name="peft" if saved_as == "adapter" else "transformers",
        base_model=hub_ids[0] if len(hub_ids) == 1 else hub_ids or None,
        datasets=[dataset_id] if dataset_id else None,
        license=license,
        tags=["mm-hf", info.task] + (info.extra_tags or []) + (["lora"] if info.finetune_strategy == "lora" else []),
        pipeline_tag=info.pipeline_tag,
        model_name=os.path.basename(os.path.normpath(output_dir)),
        eval_results=eval_results or None,
    )
    trainable = info.trainable
    return ModelCard.from_template(
        card_data,
        template_path=TEMPLATE,
        model_name=card_data.model_name,
        summary=f"An {info.task} model fine-tuned from {' + '.join(f'`{b}`' for b in base_models)} on {dataset} "
        "with mm-hf.",
        eval_split=split,
        eval_samples=results.get(f"{split}_samples", "?"),
        before_label=info.before_label or "zero-shot",
        before_after_table=_read_text(output_dir, "before_after.md"),
        classification_report=_read_text(output_dir, "classification_report.txt").rstrip(),  # "" when absent
        hp_search=_read_text(output_dir, "hp_search.md").rstrip(),  # the trials of --hp_search, "" without one
        robustness=_read_text(output_dir, ROBUSTNESS_REPORT).rstrip(),  # "" when absent
        plots=[{"title": t, "path": n} for n, t in PLOTS if os.path.exists(os.path.join(output_dir, n))],
        usage=_usage(saved_as, info.pipeline_tag, base_model, info.usage).replace("REPO_ID", repo_id or output_dir),
        base_model_links=" + ".join(
            f"[{name}](https://huggingface.co/{name})" if _is_hub_id(name) else f"`{name}`" for name in base_models
        ),
        dataset=dataset,
        finetune_strategy=info.finetune_strategy or "?",
        trainable_params=f"{trainable['trainable_params']:,}",
        total_params=f"{trainable['total_params']:,}",
        trainable_share=f"{trainable['trainable_share_percent']:.2f}",
        hardware=info.hardware or "?",
        train_runtime=f"{info.train_runtime:.1f} s" if info.train_runtime is not None else "not trained",
        hyperparameters="\n".join(f"- {k}: {v}" for k, v in _card_hyperparameters(resolved).items()),
        command=info.command,
        resolved_config=yaml.safe_dump(resolved, sort_keys=True).rstrip(),
        transformers_version=info.transformers_version or transformers.__version__,
    )


def _read_json(folder: str, name: str) -> dict:
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def _read_text(folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def _card_hyperparameters(resolved: dict) -> dict:
    strategy = resolved.get("finetune_strategy")
    shown = {k: resolved[k] for k in CARD_HYPERPARAMETERS if resolved.get(k) not in (None, -1)}
    # Strategy-specific knobs only matter for their strategy.
    lp_ft = strategy == "lp_ft"
    if strategy != "lora" and not (lp_ft and resolved.get("lp_ft_second_stage") == "lora"):
        shown = {k: v for k, v in shown.items() if not k.startswith("lora_")}
    if not lp_ft:
        shown.pop("lp_ft_second_stage", None)
    if not resolved.get("wise_ft_alphas"):
        shown.pop("wise_ft_select", None)
    if strategy != "top_k":
        shown.pop("unfreeze_last_n_layers", None)
    for flag in ("bf16", "fp16", "tf32"):  # precision switches: named when on (GPU defaults, mm_hf.fastpaths)
        if not shown.get(flag):
            shown.pop(flag, None)
    return shown


def shift_eval_results(results: dict, resolved: dict, *, task_type: str, dataset_type: str, dataset_name: str):
    """model-index entries for a run's --ood_dir / --ood_file sets (`dataset.config: NAME`, name "NAME (shifted:
    FOLDER)") and its --robustness sweep (`dataset.config: corruptions`, mean and relative), measured after
    training. Keyed as `python -m mm_hf.evaluate --update_card` keys them, so a later evaluation of the checkpoint
    replaces these numbers instead of standing beside them."""
    sources = dict(
        value.split("=", 1) for value in (resolved.get("ood_dir") or []) + (resolved.get("ood_file") or [])
    )  # fmt: skip
    out = []
    for name, source in sources.items():
        prefix = f"ood_{name}_"
        # a longer NAME sharing this prefix ("a" and "a_b") owns its own keys
        longer = tuple(f"ood_{other}_" for other in sources if other != name and other.startswith(f"{name}_"))
        out += [
            EvalResult(
                task_type=task_type,
                dataset_type="custom",
                dataset_name=f"{name} (shifted: {os.path.basename(os.path.normpath(source))})",
                dataset_config=name,
                dataset_split="test",
                metric_type=key[len(prefix) :],
                metric_value=float(value),
            )
            for key, value in sorted(results.items())
            if key.startswith(prefix) and not key.startswith(longer) and _is_quality_metric(key[len(prefix) :])
        ]
    sweep = {
        key: value for key, value in results.items() if key.startswith(("corruption_mean_", "corruption_relative_"))
    }
    if sweep:
        names = sorted({m.group(1) for key in results if (m := re.match(r"corruption_(.+)_s\d+_", key))})
        severities = sorted({int(m.group(1)) for key in results if (m := re.match(r"corruption_.+_s(\d+)_", key))})
        described = f"{', '.join(names)}; severities {','.join(map(str, severities))}"
        out += [
            EvalResult(
                task_type=task_type,
                dataset_type=dataset_type,
                dataset_name=f"{dataset_name} corrupted ({described})",
                dataset_config="corruptions",
                dataset_split="test",
                # mm_hf.evaluate's names: mean_corruption_<metric>, relative_<metric>
                metric_type=key.replace("corruption_mean_", "mean_corruption_").replace(
                    "corruption_relative_", "relative_"
                ),
                metric_value=float(value),
            )
            for key, value in sorted(sweep.items())
        ]
    return out


def _is_quality_metric(name: str) -> bool:
    return not name.endswith(("runtime", "per_second", "samples", "loss", "preparation_time")) and name != "epoch"


def _is_hub_id(name: str) -> bool:
    return bool(name) and not os.path.isabs(name) and not os.path.exists(name) and name.count("/") == 1


def _hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores)"


_FUSION_USAGE = (
    "The fusion model, its processor and their code ship in this repository (each modality's own processor sits in "
    "its subfolder: `image_processor/`, `tokenizer/`, `feature_extractor/`). The processor takes decoded inputs, one "
    "list per modality with None where a sample lacks it: PIL images, lists of PIL frames for video, texts, float "
    "waveforms at `processor.feature_extractor.sampling_rate`, dicts of tabular values.\n\n"
    "```python\nfrom PIL import Image\nfrom transformers import AutoModelForSequenceClassification, AutoProcessor\n\n"
    'model = AutoModelForSequenceClassification.from_pretrained("REPO_ID", trust_remote_code=True).eval()\n'
    'processor = AutoProcessor.from_pretrained("REPO_ID", trust_remote_code=True)\n'
    "print(model.config.modalities, model.config.tasks)\n"
    'inputs = processor(images=[Image.open("xray.png")], text=["no acute findings"])\n'
    "logits = model(**inputs).logits\n```\n\n"
    "With mm-hf installed, its processor also decodes files (file paths, text, tabular values; None = missing), "
    "sampling video frames as in training:\n\n"
    "```python\nimport torch\nfrom mm_hf.processing import MultimodalProcessor\n\n"
    'processor = MultimodalProcessor.from_pretrained("REPO_ID")\n'
    'inputs = processor.transform(train=False)({"image": ["xray.png"], "text": ["no acute findings"]})\n'
    "logits = model(**{k: torch.stack(v) for k, v in inputs.items()}).logits\n```"
)

# pipeline tag -> (example input, preprocessor Auto class, model Auto class) of the classifiers' snippets.
_CLASSIFIER_USAGE = {
    "image-classification": ('"image.png"', "AutoImageProcessor", "AutoModelForImageClassification"),
    "audio-classification": ('"clip.wav"', "AutoFeatureExtractor", "AutoModelForAudioClassification"),
}


# pipeline tag -> (example call, processor inputs, modality) of the plain dual encoders' snippets.
_DUAL_ENCODER_USAGE = {
    "zero-shot-image-classification": ('"image.png", candidate_labels=["a cat", "a dog"]', "images=image", "image"),
    "zero-shot-audio-classification": (
        '"clip.wav", candidate_labels=["a dog barking", "rain"]',
        "audio=waveform, sampling_rate=processor.feature_extractor.sampling_rate",
        "audio",
    ),
}


def _usage(saved_as: str, pipeline_tag: str, base_model: str, kind: str | None = None) -> str:
    if kind == "fusion":
        return _FUSION_USAGE
    if kind == "fusion_video":
        return (
            _FUSION_USAGE.replace("AutoModelForSequenceClassification", "AutoModelForVideoClassification")
            .replace(
                '{"image": ["xray.png"], "text": ["no acute findings"]}',
                '{"video": ["clip.mp4"], "text": ["a transcript"]}',
            )
            .replace(
                'inputs = processor(images=[Image.open("xray.png")], text=["no acute findings"])',
                "# frames: a clip's num_frames PIL images, each at the centre of one of num_frames equal segments\n"
                'inputs = processor(videos=[frames], text=["a transcript"])',
            )
        )
    if pipeline_tag in _DUAL_ENCODER_USAGE:  # a plain dual encoder (CLIP-style or CLAP): no remote code involved
        example, inputs, media = _DUAL_ENCODER_USAGE[pipeline_tag]
        return (
            "```python\nfrom transformers import AutoModel, AutoProcessor, pipeline\n\n"
            f'classifier = pipeline("{pipeline_tag}", model="REPO_ID")\n'
            f"classifier({example})\n\n"
            '# or embeddings for retrieval:\nmodel, processor = AutoModel.from_pretrained("REPO_ID"), '
            'AutoProcessor.from_pretrained("REPO_ID")\n'
            f'{media}_embeds = model.get_{media}_features(**processor({inputs}, return_tensors="pt")).pooler_output\n```'
        )
    example, preprocessor, auto_model = _CLASSIFIER_USAGE.get(pipeline_tag, _CLASSIFIER_USAGE["image-classification"])
    if saved_as == "adapter":
        return (
            f"This repository holds a LoRA adapter for `{base_model}` together with the trained classification "
            "head (saved through `modules_to_save`), the classifier's config and code, and the processor. "
            "Plain transformers + peft rebuild the classifier around the base model and apply the adapter:\n\n"
            "```python\nfrom peft import PeftModel\n"
            f"from transformers import AutoConfig, AutoModel, {auto_model}\n\n"
            'config = AutoConfig.from_pretrained("REPO_ID", trust_remote_code=True)\n'
            f"model = {auto_model}.from_config(config, trust_remote_code=True)\n"
            f'model.backbone = AutoModel.from_pretrained("{base_model}")  # the pretrained base weights\n'
            'model = PeftModel.from_pretrained(model, "REPO_ID").eval()  # model.merge_and_unload() for speed\n```'
        )
    return (
        "```python\nfrom transformers import pipeline\n\n"
        f'classifier = pipeline("{pipeline_tag}", model="REPO_ID", trust_remote_code=True)\n'
        f"classifier({example})\n```\n\n"
        f"or\n\n```python\nfrom transformers import {preprocessor}, {auto_model}\n\n"
        f'model = {auto_model}.from_pretrained("REPO_ID", trust_remote_code=True)\n'
        f'preprocessor = {preprocessor}.from_pretrained("REPO_ID")\n```\n\n'
        "`trust_remote_code=True` runs the model's code shipped in this repository "
        "(`configuration_*.py`, `modeling_*.py`); mm-hf itself is not needed."
    )
