"""Writing a run's output folder: model (full, LoRA adapter or merged), processor, arguments, results, plots."""

import json
import os
import shlex
import sys

import yaml
from transformers.dynamic_module_utils import custom_object_save

from .reports import plot_training_curves, write_classification_report, write_confusion_matrix, write_task_report


def save_model(trainer, output_dir: str, merge_lora: bool = False) -> str:
    """Save the trained model and the Trainer's processor; returns "full", "adapter" or "merged".

    Call on every process (Trainer coordinates who writes). A LoRA run saves the adapter (with the
    trained head, via modules_to_save) plus the classifier's config.json, or with `merge_lora` a plain
    checkpoint whose LoRA deltas are folded into the weights.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "peft_config")
    if not is_peft:
        trainer.save_model(output_dir)
        return "full"
    if not merge_lora:
        trainer.save_model(output_dir)
        if trainer.is_world_process_zero():
            save_adapter_base_config(model, output_dir)
        return "adapter"
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        merged = model.merge_and_unload()
        merged.save_pretrained(output_dir)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()
    return "merged"


def save_adapter_base_config(peft_model, output_dir: str) -> None:
    """Next to an adapter: the base classifier's config.json (classes, backbone id) and its code files.

    The adapter alone cannot say how many classes there are or what they are called; with the config and
    code, plain transformers + peft rebuild the classifier (`AutoModelForImageClassification.from_config(
    config, trust_remote_code=True)`) and apply the adapter, without mm_hf.
    """
    base = peft_model.get_base_model()
    if getattr(base, "_auto_class", None) is not None:
        custom_object_save(base, output_dir, config=base.config)  # copies the code files, sets auto_map
    base.config.save_pretrained(output_dir)


def recipe_command(argv=None, script: str | None = None) -> str:
    """The exact launch command of this run, with any token value hidden."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script = script or os.path.relpath(sys.argv[0])
    shown, hide = [], False
    for arg in argv:
        shown.append("***" if hide else arg)
        hide = arg in ("--hub_token", "--token")
        if arg.startswith(("--hub_token=", "--token=")):
            shown[-1] = arg.split("=", 1)[0] + "=***"
    return shlex.join(["accelerate", "launch", script, *shown])


def write_run_config(output_dir: str, resolved: dict, command: str) -> str:
    """`run_config.yaml`: every resolved argument (secrets removed), usable again with --config."""
    path = os.path.join(output_dir, "run_config.yaml")
    with open(path, "w") as f:
        f.write(f"# {command}\n")
        yaml.safe_dump(_yaml_safe(resolved), f, sort_keys=True)
    return path


def write_classification_outputs(output_dir: str, report: dict, prefix: str = "") -> str:
    """Per-class report (json + txt) and confusion matrix (json + png); returns the text report."""
    text = write_classification_report(report, output_dir, prefix=prefix)
    write_confusion_matrix(report, output_dir, prefix=prefix)
    return text


class task_report_writer:  # noqa: N801 (used like a function)
    """`write_reports` for fusion heads: `write_task_report` with the model's tasks bound."""

    def __init__(self, tasks: list[dict]):
        self.tasks = tasks

    def __call__(self, output_dir: str, report: dict, prefix: str = "") -> str:
        return write_task_report(report, self.tasks, output_dir, prefix=prefix)


def write_training_curves(trainer, output_dir: str) -> str:
    return str(plot_training_curves(trainer.state.log_history, os.path.join(output_dir, "training_curves.png")))


def update_all_results(output_dir: str, metrics: dict) -> dict:
    """Merge `metrics` into `all_results.json` (the Trainer convention) and return the merged dict."""
    path = os.path.join(output_dir, "all_results.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results.update(metrics)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    return results


def _yaml_safe(value):
    if isinstance(value, dict):
        return {str(k): _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # enums, paths


def save_classification_run(
    trainer,
    run,
    *,
    command: str,
    resolved_args: dict,
    skipped: dict,
    merge_lora: bool = False,
    push_to_hub: bool = False,
    write_reports=write_classification_outputs,
    **run_info,
) -> dict:
    """The last section of a classification recipe: save the model and write the complete output folder.

    `run` is the recipe's `mm_hf.evaluation.BeforeAfter`. Call on every process (saving is coordinated by
    Trainer); only the main process writes the rest: the per-class report and confusion matrix after training
    and before it (prefixed `zeroshot_`), training curves, `all_results.json` (merged with `run.results`; the
    merged dict is returned), `run_config.yaml`, `before_after.md`, `run_info.json` (`run_info` holds task,
    pipeline_tag, base_model, dataset, before_label, finetune_strategy, trainable; the eval split and train
    runtime come from `run`) and the model card; prints the summary, lists skipped samples (`skipped`: split -> [(source, reason)]) and,
    with `push_to_hub`, publishes the folder. `write_reports(output_dir, report, prefix="")` writes the report
    files and returns their text (`task_report_writer` for fusion heads).
    """
    from .hub import write_model_card, write_run_info
    from .publish import publish_run

    out = trainer.args.output_dir
    results = run.results
    if any(skipped.values()):
        results = {**results, "skipped_bad_samples": sum(len(v) for v in skipped.values())}
    saved_as = save_model(trainer, out, merge_lora=merge_lora)
    if not trainer.is_world_process_zero():
        return results
    report_text = write_reports(out, run.after_report)
    write_reports(out, run.before_report, prefix="zeroshot_")
    write_training_curves(trainer, out)
    results = update_all_results(out, results)
    write_run_config(out, resolved_args, command)
    with open(os.path.join(out, "before_after.md"), "w") as f:
        f.write(run.table)
    split = run.eval_key
    write_run_info(
        out, command=command, saved_as=saved_as, eval_split=split, train_runtime=run.train_runtime, **run_info
    )
    write_model_card(out)
    print(f"\nEvaluation on the {split} split ({results.get(f'{split}_samples')} samples):\n\n{run.table}")
    print(report_text)
    bad = [f"{source} ({why})" for samples in skipped.values() for source, why in samples[:5]]
    if bad:
        print(f"Skipped {sum(len(v) for v in skipped.values())} unreadable samples: " + "; ".join(bad))
    if push_to_hub:
        publish_run(trainer.args, out)
    return results


def save_fusion_run(trainer, run, *, tasks: list[dict], modalities: list[str], encoders: dict, **kwargs) -> dict:
    """`save_classification_run` for a fusion recipe: merged LoRA (the encoders' adapters fold into one
    checkpoint that loads with plain transformers), per-head reports, the fusion card snippet.

    `run` is the recipe's `BeforeAfter`; `kwargs` are save_classification_run's (command, resolved_args, skipped,
    push_to_hub, dataset, finetune_strategy, trainable, ...) and may override pipeline_tag / eval_task_type.
    """
    from .evaluation import FUSION_BEFORE_LABEL

    kwargs.setdefault("pipeline_tag", None)
    kwargs.setdefault("eval_task_type", "multimodal-classification")
    kwargs.setdefault("before_label", FUSION_BEFORE_LABEL)
    usage, tags = "fusion", []
    if "video" in modalities:
        # A video classifier also answers to AutoModelForVideoClassification, with mm_hf (registered in
        # mm_hf.models) and without it (auto_map, next to the AutoModelForSequenceClassification entry
        # save_pretrained writes). No pipeline tag: transformers' video pipeline feeds `pixel_values` from an
        # image/video processor at the repo root, while the frames go through MultimodalProcessor.
        from .models import MultimodalFusionForClassification as fusion_class

        config = trainer.accelerator.unwrap_model(trainer.model).config
        code = f"{fusion_class.__module__.rsplit('.', 1)[-1]}.{fusion_class.__name__}"
        config.auto_map = {**(getattr(config, "auto_map", None) or {}), "AutoModelForVideoClassification": code}
        usage, tags = "fusion_video", ["video-classification"]
    return save_classification_run(
        trainer,
        run,
        merge_lora=True,
        write_reports=task_report_writer(tasks),
        task=f"multimodal ({' + '.join(modalities)}) classification",
        usage=usage,
        extra_tags=tags,
        base_model=list(dict.fromkeys(path for path in encoders.values() if path)),
        **kwargs,
    )
