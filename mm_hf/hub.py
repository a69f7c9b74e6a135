"""Model cards (huggingface_hub `ModelCard` + a Markdown template) for the recipes' output folders."""

import os

import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = os.path.join(os.path.dirname(__file__), "templates", "model_card.md")
# The hyperparameters worth a line in a card; the complete set lives in run_config.yaml.
CARD_HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "optim",
    "seed",
    "bf16",
    "fp16",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "unfreeze_last_n_layers",
    "head_init",
    "head_dropout",
)


def write_model_card(
    output_dir: str,
    *,
    model_name: str,
    task: str,
    pipeline_tag: str,
    base_model: str,
    dataset: str,
    before: dict,
    after: dict,
    eval_split: str,
    before_after_table: str,
    classification_report: str,
    resolved_args: dict,
    trainable: dict,
    command: str,
    train_runtime: float | None,
    saved_as: str,
    before_label: str = "zero-shot",
    tags=(),
) -> ModelCard:
    """Render `README.md` in `output_dir` and return the card.

    `after` must hold the `{eval_split}_*` metrics exactly as written to all_results.json: the
    model-index is built from them, so the card's front matter and the results file never disagree.
    """
    prefix = f"{eval_split}_"
    dataset_id = dataset if "/" in dataset and not os.path.exists(dataset) else None
    eval_results = [
        EvalResult(
            task_type=pipeline_tag,
            dataset_type=dataset_id or "custom",
            dataset_name=dataset_id or os.path.basename(os.path.normpath(dataset)),
            dataset_split=eval_split,
            metric_type=key[len(prefix) :],
            metric_value=float(value),
        )
        for key, value in sorted(after.items())
        if key.startswith(prefix) and _is_quality_metric(key[len(prefix) :])
    ]
    card_data = ModelCardData(
        library_name="peft" if saved_as == "adapter" else "transformers",
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=[dataset_id] if dataset_id else None,
        tags=["mm-hf", task, *tags] + (["lora"] if resolved_args.get("finetune_strategy") == "lora" else []),
        pipeline_tag=pipeline_tag,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    plots = [
        {"title": title, "path": name}
        for name, title in (
            ("confusion_matrix.png", "Confusion matrix"),
            ("training_curves.png", "Training curves"),
        )
        if os.path.exists(os.path.join(output_dir, name))
    ]
    card = ModelCard.from_template(
        card_data,
        template_path=TEMPLATE,
        model_name=model_name,
        summary=f"An {task} model fine-tuned from `{base_model}` on {dataset} with mm-hf.",
        eval_split=eval_split,
        eval_samples=after.get(f"{prefix}samples", "?"),
        before_label=before_label,
        before_after_table=before_after_table,
        classification_report=classification_report.rstrip(),
        plots=plots,
        usage=_usage(saved_as, pipeline_tag),
        base_model=base_model,
        base_model_url=f"https://huggingface.co/{base_model}" if _is_hub_id(base_model) else base_model,
        dataset=dataset,
        finetune_strategy=resolved_args.get("finetune_strategy", "?"),
        trainable_params=f"{trainable['trainable_params']:,}",
        total_params=f"{trainable['total_params']:,}",
        trainable_share=f"{trainable['trainable_share_percent']:.2f}",
        hardware=_hardware(),
        train_runtime=f"{train_runtime:.1f} s" if train_runtime is not None else "not trained",
        hyperparameters="\n".join(f"- {k}: {v}" for k, v in _card_hyperparameters(resolved_args).items()),
        command=command,
        transformers_version=transformers.__version__,
    )
    card.save(os.path.join(output_dir, "README.md"))
    return card


def _card_hyperparameters(resolved: dict) -> dict:
    strategy = resolved.get("finetune_strategy")
    shown = {k: resolved[k] for k in CARD_HYPERPARAMETERS if k in resolved}
    # Strategy-specific knobs only matter for their strategy.
    if strategy != "lora":
        shown = {k: v for k, v in shown.items() if not k.startswith("lora_")}
    if strategy != "top_k":
        shown.pop("unfreeze_last_n_layers", None)
    if not (resolved.get("bf16") or resolved.get("fp16")):
        shown.pop("bf16", None)
        shown.pop("fp16", None)
    return shown


def _is_quality_metric(name: str) -> bool:
    return not name.endswith(("runtime", "per_second", "samples", "loss", "preparation_time")) and name != "epoch"


def _is_hub_id(name: str) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") == 1


def _hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores)"


def _usage(saved_as: str, pipeline_tag: str) -> str:
    if saved_as == "adapter":
        return (
            "This folder holds a LoRA adapter (with the trained classification head) for the base model.\n\n"
            "```python\nfrom mm_hf.models import load_clip_classifier\n\n"
            'model = load_clip_classifier("path/or/repo")  # base model + adapter (peft.PeftModel)\n```'
        )
    return (
        "```python\nfrom transformers import pipeline\n\n"
        f'classifier = pipeline("{pipeline_tag}", model="path/or/repo", trust_remote_code=True)\n'
        'classifier("image.png")\n```\n\n'
        "or\n\n```python\nfrom transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
        'model = AutoModelForImageClassification.from_pretrained("path/or/repo", trust_remote_code=True)\n'
        'processor = AutoImageProcessor.from_pretrained("path/or/repo")\n```'
    )
