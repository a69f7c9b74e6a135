"""Writing a run's output folder (`save_run`): model (full, LoRA adapter or merged), processor, arguments, results,
reports, plots, run_info.json and the model card."""

import dataclasses
import json
import os
import shlex
import sys

import yaml
from transformers.dynamic_module_utils import custom_object_save

from .atomic_files import atomic_write, write_text_atomic
from .cards import ROBUSTNESS_REPORT, RunInfo, write_model_card, write_run_info
from .engines import full_state_dict, save_fsdp_model
from .models import MultimodalFusionForClassification
from .models.fusion import Task
from .publish import publish_run
from .reports import (
    plot_training_curves,
    plot_wise_ft_curve,
    write_classification_report,
    write_confusion_matrix,
    write_task_report,
)
from .run_folder import mark_finished
from .sweeps import write_sweep_outputs


def save_model(trainer, output_dir: str, merge_lora: bool = False) -> str:
    """Save the trained model and the Trainer's processor; returns "full", "adapter" or "merged".

    Call on every process (Trainer coordinates who writes). A LoRA run saves the adapter (with the
    trained head, via modules_to_save) plus the classifier's config.json, or with `merge_lora` a plain
    checkpoint whose LoRA deltas are folded into the weights.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "peft_config")
    if not is_peft or not merge_lora:
        if trainer.is_fsdp_enabled:
            save_fsdp_model(trainer, output_dir)  # gathered from the shards into a normal checkpoint
        else:
            trainer.save_model(output_dir)
        if is_peft and trainer.is_world_process_zero():
            save_adapter_base_config(model, output_dir)
        return "adapter" if is_peft else "full"
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
    with atomic_write(path) as f:
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

    def __init__(self, tasks: list[Task]):
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
    with atomic_write(path) as f:
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


def save_dual_encoder(trainer, output_dir: str, merge_lora: bool = True) -> str:
    """The plain dual encoder inside a `ContrastiveDualEncoderModel` (LoRA always merged) + the processor.

    A CLIPModel/SiglipModel/VisionTextDualEncoderModel/ClapModel checkpoint that loads with `AutoModel` and the
    zero-shot pipelines, without mm_hf; recorded as "full" (no adapter to load). Call on every process.
    """
    trainer.accelerator.wait_for_everyone()
    gathered = full_state_dict(trainer)  # FSDP / ZeRO-3: every process joins the gather (LoRA refused before)
    if trainer.is_world_process_zero():
        trained = trainer.accelerator.unwrap_model(trainer.model)
        if gathered is not None:
            prefix = "backbone."
            state = {k.removeprefix(prefix): v for k, v in gathered.items() if k.startswith(prefix)}
            trained.backbone.save_pretrained(output_dir, state_dict=state)
        else:
            trained = trained.merge_and_unload() if hasattr(trained, "peft_config") else trained
            trained.backbone.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()
    return "full"


def report_skipped(results: dict, skipped: dict) -> dict:
    """`results` with `skipped_bad_samples` (how many samples --skip_bad_samples left out) when there were any.

    `skipped`: split -> [(source, reason)], as the data checks return it.
    """
    if not any(skipped.values()):
        return results
    return {**results, "skipped_bad_samples": sum(len(v) for v in skipped.values())}


def save_run(
    trainer,
    run,
    info: RunInfo,
    *,
    config: dict,
    skipped: dict,
    push_to_hub: bool,
    merge_lora: bool = False,
    save=save_model,
) -> dict:
    """The last section of every recipe: save the model and write the complete output folder.

    `run` is the recipe's `mm_hf.run.RunResult`, `info` what the card says about the run (save_run adds the eval
    split, before label, saved variant, trainable parameters and train runtime), `config` the resolved arguments
    (`args_to_dict`), `skipped` the samples the data checks left out (split -> [(source, reason)]).
    `save(trainer, output_dir, merge_lora)` saves the model and returns "full", "adapter" or "merged": `save_model`
    (the Trainer's model, a LoRA adapter or merged) or `save_dual_encoder` (retrieval, LoRA always merged).

    Call on every process (saving is coordinated by Trainer); only the main process writes the rest: the
    measure's reports after training and before it (prefixed `zeroshot_`), training curves, `all_results.json`
    (merged with `run.results`; the merged dict is returned), `run_config.yaml`, `before_after.md`,
    `run_info.json` and the model card (each file atomically: temp file + rename; with --hp_search also the trials
    table and plot, `hp_search.md`/`.png`), then removes the unfinished-run marker (mm_hf.run_folder); prints the
    summary and the skipped samples and, with `push_to_hub`, publishes the folder.
    """
    out = trainer.args.output_dir
    results = report_skipped(run.results, skipped)
    if run.hp_search is not None:
        results["hp_search"] = run.hp_search
        config = {**config, **run.hp_search["best_params"]}  # the flags the saved model was trained with
    saved_as = save(trainer, out, merge_lora=merge_lora)
    if not trainer.is_world_process_zero():
        return results
    report_text = None
    if run.after_report is not None:
        report_text = run.write_report(out, run.after_report)
        run.write_report(out, run.before_report, prefix="zeroshot_")
    write_training_curves(trainer, out)
    results = update_all_results(out, results)
    write_run_config(out, config, info.command)
    write_text_atomic(os.path.join(out, "before_after.md"), run.table)
    if run.hp_search is not None:
        write_sweep_outputs(out, run.hp_search)
    if run.robustness:  # WiSE-FT / LP-FT: every model the run went through, on every set, and the α curve
        write_text_atomic(os.path.join(out, ROBUSTNESS_REPORT), run.robustness)
        plot_wise_ft_curve(results, os.path.join(out, "wise_ft_curve.png"))
    measured = dict(
        eval_split=run.eval_key, before_label=run.before_label, trainable=run.trainable, train_runtime=run.train_runtime
    )
    if run.resumed_from:
        measured["resumed_from"] = os.path.basename(os.path.normpath(run.resumed_from))
    write_run_info(out, dataclasses.replace(info, saved_as=saved_as, **measured))
    write_model_card(out)
    mark_finished(out)  # the last write: from here on the folder is a finished run (publishable)
    print(f"\n{run.headline}:\n\n{run.table}")
    if run.robustness:
        print(f"Robust fine-tuning ({ROBUSTNESS_REPORT}):\n\n{run.robustness}")
    if report_text is not None:
        print(report_text)
    bad = [f"{source} ({why})" for samples in skipped.values() for source, why in samples[:5]]
    if bad:
        print(f"Skipped {sum(len(v) for v in skipped.values())} unreadable samples: " + "; ".join(bad))
    if push_to_hub:
        publish_run(trainer.args, out)
    return results


def fusion_run_info(
    modalities: list[str],
    encoders: dict,
    *,
    dataset: str,
    command: str,
    finetune_strategy: str,
    eval_task_type: str = "multimodal-classification",
) -> RunInfo:
    """The `RunInfo` of a fusion model: no pipeline tag, one base model per encoder, the fusion usage snippet.

    A video model's card shows `AutoModelForVideoClassification` (see `add_video_auto_class`) and is tagged
    video-classification.
    """
    video = "video" in modalities
    return RunInfo(
        pipeline_tag=None,
        task=f"multimodal ({' + '.join(modalities)}) classification",
        eval_task_type=eval_task_type,
        base_model=list(dict.fromkeys(path for path in encoders.values() if path)),
        dataset=dataset,
        command=command,
        finetune_strategy=finetune_strategy,
        usage="fusion_video" if video else "fusion",
        extra_tags=["video-classification"] if video else [],
    )


def add_video_auto_class(model) -> None:
    """Let a video fusion classifier load through AutoModelForVideoClassification too.

    With mm_hf it is registered (mm_hf.models); without it, `auto_map` gets an entry next to the
    AutoModelForSequenceClassification one save_pretrained writes. No pipeline tag: transformers' video pipeline
    feeds `pixel_values` from an image/video processor at the repo root, while the frames go through
    MultimodalProcessor.
    """
    config, fusion = model.config, MultimodalFusionForClassification
    code = f"{fusion.__module__.rsplit('.', 1)[-1]}.{fusion.__name__}"
    config.auto_map = {**(getattr(config, "auto_map", None) or {}), "AutoModelForVideoClassification": code}
