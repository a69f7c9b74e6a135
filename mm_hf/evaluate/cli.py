"""`python -m mm_hf.evaluate`: arguments and the flow (data -> each model on each set -> comparisons -> report)."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field

from transformers import AutoFeatureExtractor

from ..args import (
    AudioColumnArguments,
    CaptionColumnArguments,
    DataArguments,
    HubArguments,
    ImageColumnArguments,
    LabelColumnArguments,
    explicit_flags,
    media_column,
    parse_args,
)
from ..corruptions.registry import parse_severities, select_corruptions
from ..data.loading import read_labelled_split
from ..data.streaming.flags import refuse_streaming
from ..errors import UserError
from ..metrics.calibration import fit_temperature
from ..metrics.robustness import effective_robustness, fit_id_ood_line, line_accuracy, robustness_summary
from ..metrics.streaming import ClassificationMetrics
from . import candidates as cands
from .card import eval_results, update_card
from .cost import measure_latency, model_cost, peak_memory, reset_peak_memory
from .fusion.evaluation import evaluate_fusion
from .processes import inference_processes, main_process_first, process_rank
from .report import evaluation_record, write_outputs
from .retrieval import NOT_FOR_RETRIEVAL, evaluate_retrieval_models
from .scoring import INDEX_COLUMN, confidence_intervals, corruption_sweep, paired_tests, score
from .sets import prepare_set

logger = logging.getLogger(__name__)

# DataArguments flags about training/validation data: this command scores one test set, so they are refused.
_TRAINING_DATA_FLAGS = (
    "train_dir",
    "validation_dir",
    "train_file",
    "validation_file",
    "train_val_split",
    "max_train_samples",
    "max_eval_samples",
)


@dataclass
class EvaluateArguments(
    CaptionColumnArguments, LabelColumnArguments, AudioColumnArguments, ImageColumnArguments, HubArguments
):
    model: list[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=PATH, repeatable: an mm-hf output folder (full, merged or LoRA adapter), a transformers "
            "image/audio-classification checkpoint, or a CLIP/SigLIP/CLAP dual encoder (evaluated zero-shot from "
            "class prompts), or an mm-hf fusion checkpoint (scored on --test_file with its run's columns).",
            "action": "extend",
        },
    )
    output_dir: str = field(default="evaluation", metadata={"help": "Where evaluation.json/.md and plots go."})
    ood: list[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=DIR_OR_FILE, repeatable: a shifted test set (class folder or CSV/JSONL) with the same labels.",
            "action": "extend",
        },
    )
    retrieval: bool = field(
        default=False,
        metadata={
            "help": "Score dual encoders (CLIP/SigLIP/CLAP, clip_retrieval outputs) on media-caption retrieval "
            "(Recall@K, ranks over --caption_column captions of --test_dir/--test_file) instead of classification; "
            "--corruptions corrupts the items (image/audio corruptions) or the captions (typos, word_dropout)."
        },
    )
    calibration_data: str | None = field(
        default=None,
        metadata={"help": "Class folder or CSV/JSONL to fit temperature scaling on (e.g. the validation split)."},
    )
    save_temperature: bool = field(
        default=False,
        metadata={
            "help": "Write the temperature fitted on --calibration_data into each mm-hf checkpoint's config.json "
            "(`calibration_temperature`, applied to the logits at inference, so pipeline() scores are calibrated; a fusion "
            "checkpoint's is `{head: T}`, one per classification head). "
            "Plain transformers and zero-shot models have no such field: nothing is written for them."
        },
    )
    update_card: bool = field(
        default=False,
        metadata={
            "help": "Add the results to each mm-hf checkpoint's README.md model-index (one entry per dataset/shift: "
            "accuracy, macro F1, ECE, a fusion model's headline metric; the corruption sweep's mean and relative); the "
            "rest of the card is kept."
        },
    )
    corruptions: str | None = field(
        default=None,
        metadata={
            "help": "Robustness sweep on the test set: 'all' or a comma-separated list of mm_hf.corruptions names: "
            "image or audio ones for classifiers; for fusion checkpoints those of their image/text/audio columns "
            "(text: typos, word_dropout; a video's frames take the image ones); with --retrieval the items' "
            "image/audio ones and typos/word_dropout on the captions."
        },
    )
    severities: str = field(default="1,2,3,4,5", metadata={"help": "Corruption severities (1..5), comma-separated."})
    prompt_templates: list[str] | None = field(
        default=None, metadata={"help": "Zero-shot models: prompt templates with {} for the class name."}
    )
    max_length_seconds: float | None = field(
        default=None,
        metadata={"help": "Audio: cut clips to this length (default: the mm-hf run's own, else 5.0)."},
    )
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Batch size of the scoring passes."})
    dataloader_num_workers: int = field(
        default=2, metadata={"help": "DataLoader worker processes (decoding and corruptions run there)."}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if available)."})
    num_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples for CIs and paired tests."})
    latency_runs: int = field(
        default=10, metadata={"help": "Timed forward passes per batch size (after 3 warm-up ones); 0 skips timing."}
    )
    robustness_baseline: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated --model names whose (test, OOD) accuracies define the baseline line of effective "
            "robustness on each --ood set (a least-squares line in logit space; slope 1 through a single model). "
            "Default: every zero-shot model; without one, no effective robustness is reported."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the corruptions and the bootstrap."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})
    traceback: bool = field(default=False, metadata={"help": "On an input mistake also print the traceback."})


ARGUMENT_TYPES = (EvaluateArguments, DataArguments)


def main(argv=None) -> dict | None:
    """Run the evaluation; returns the evaluation.json dict (on the main process; None on the others of a launch)."""
    # 1. Arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    args, data_args = parse_args(ARGUMENT_TYPES, argv)
    explicit = explicit_flags(argv, ARGUMENT_TYPES)
    refused = [f"--{name}" for name in _TRAINING_DATA_FLAGS if name in explicit]
    if refused:
        raise UserError(f"{', '.join(refused)}: evaluation scores a test set; give it with --test_dir/--test_file/"
                        "--dataset_name, shifted sets with --ood and a calibration set with --calibration_data")  # fmt: skip
    refuse_streaming(data_args, explicit, "mm_hf.evaluate")  # DataArguments' --streaming, --validate_samples, ...
    models = cands.parse_named(args.model, "--model")
    ood_sources = cands.parse_named(args.ood, "--ood")
    if not models:
        raise UserError("no model to evaluate: pass --model NAME=PATH (repeatable)")
    baseline_names = [n.strip() for n in (args.robustness_baseline or "").split(",") if n.strip()]
    if any(name not in models for name in baseline_names):
        raise UserError(f"--robustness_baseline {args.robustness_baseline}: "
                        f"{[n for n in baseline_names if n not in models]} are not --model names ({list(models)})")  # fmt: skip
    if "test" in ood_sources:
        raise UserError("--ood test=...: 'test' names the main test set; give the shifted set another name")
    if args.save_temperature and not args.calibration_data:
        raise UserError("--save_temperature writes the temperature fitted on --calibration_data: pass that set too")
    severities = parse_severities(args.severities, "--severities")
    # accelerate launch: one process group (gloo on CPU, e.g. --multi_gpu --num_processes 2 --device cpu); each
    # process scores a shard of every pass (classifiers, fusion checkpoints and --retrieval alike), the gathered
    # numbers are the same everywhere, the main process writes the outputs.
    device, state = inference_processes(args.device)
    rank, world_size = process_rank(state)
    is_main = rank == 0
    hub_kwargs = args.hub_kwargs()

    # 2. What each model is (no weights yet); unreadable folders are reported, not fatal
    failed, found = {}, []
    for name, path in models.items():
        try:
            found.append(cands.inspect_model(name, path, hub_kwargs, allow_video=True))
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 (any load failure is reported and the others go on)
            failed[name] = _describe(error)
            logger.error("--model %s=%s cannot be loaded: %s", name, path, failed[name])
    if args.retrieval:
        refused = [f"--{name}" for name in NOT_FOR_RETRIEVAL if name in explicit]
        if refused:
            raise UserError(f"{', '.join(refused)}: not used by --retrieval (test pairs, captions, corruptions)")
        command = shlex.join(["python", "-m", "mm_hf.evaluate", *argv])
        return evaluate_retrieval_models(found, args, data_args, failed, device, command, severities,
                                         lambda modality: media_column(args, modality, explicit), state)  # fmt: skip
    if "caption_column" in explicit:
        raise UserError("--caption_column: captions are read by --retrieval evaluation only")
    fusion_models = [c for c in found if c.kind == "fusion"]
    if fusion_models:
        return _evaluate_fusion(fusion_models, found, args, data_args, explicit, ood_sources, failed, device, state,
                                argv)  # fmt: skip
    modalities = sorted({c.modality for c in found})
    if len(modalities) > 1:
        raise UserError(f"the models mix modalities ({', '.join(f'{c.name}: {c.modality}' for c in found)}); "
                        "evaluate image and audio models in separate runs")  # fmt: skip
    modality = modalities[0] if modalities else "image"
    column = media_column(args, modality, explicit)
    corruption_names = select_corruptions(args.corruptions, modality) if args.corruptions else []

    # 3. Data: the test set, shifted sets and calibration set, each validated once and shared by every model
    # (under a launch the main process reads and checks first: the others then reuse the datasets cache).
    with main_process_first(state):
        sets, sources, skipped, calibration_set, label_names = _read_sets(
            args, data_args, found, column, modality, ood_sources
        )
    indexed_test = sets["test"].add_column(INDEX_COLUMN, list(range(len(sets["test"]))))

    # 4. Each model on each set
    metrics = ClassificationMetrics(dict(enumerate(label_names)))
    run = dict(batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers, device=device,
               progress=is_main and not args.disable_tqdm, rank=rank, world_size=world_size)  # fmt: skip
    results, scores = {}, {}
    for candidate in found:
        name = candidate.name
        reset_peak_memory(device)
        try:
            cands.load(candidate, label_names, hub_kwargs, args.prompt_templates)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001
            failed[name] = _describe(error)
            logger.error("--model %s=%s cannot be loaded: %s", name, candidate.path, failed[name])
            continue
        model = candidate.model.to(device)
        order = candidate.label_names or label_names
        permutation = [order.index(label) for label in label_names]
        transform = cands.build_transform(candidate, column, args.max_length_seconds)
        entry = {"path": candidate.path, "kind": candidate.kind, "saved_as": candidate.saved_as, "sets": {}}
        temperature = None
        if calibration_set is not None:
            fitted = score(model, calibration_set, transform, permutation, metrics, keep_logits=True,
                           description=f"{name} | calibration", **run)  # fmt: skip
            fit = fit_temperature(fitted.logits, fitted.labels)
            temperature = fit.temperature
            entry["temperature_scaling"] = {**fit.as_dict(), "samples": len(calibration_set)}
            if args.save_temperature:
                # The scored logits are already divided by a temperature saved before: the new one composes.
                entry["temperature_scaling"]["saved_temperature"] = cands.saved_temperature(candidate) * temperature
        scores[name] = {}
        for set_name, dataset in sets.items():
            scored = score(model, dataset, transform, permutation, metrics, temperature=temperature,
                           description=f"{name} | {set_name}", **run)  # fmt: skip
            scores[name][set_name] = scored
            entry["sets"][set_name] = _set_entry(scored, metrics, args, temperature)
        if corruption_names:
            entry["corruptions"] = corruption_sweep(
                model, indexed_test, transform, permutation, metrics, corruption_names, severities,
                modality=candidate.modality, column=column, seed=args.seed, name=name, **run,
            )  # fmt: skip
        entry["cost"] = model_cost(candidate, model)
        if candidate.saved_as == "adapter":
            entry["cost"]["base_model"] = candidate.model.peft_config["default"].base_model_name_or_path
        if args.latency_runs > 0 and is_main:  # timed once, by the main process
            entry["cost"]["latency"] = measure_latency(model, sets["test"], transform, device, runs=args.latency_runs)
        entry["cost"].update(peak_memory(device))
        results[name] = entry
        candidate.model = None
        del model
        gc.collect()
    if not results:
        raise UserError("no model could be evaluated: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
    if not is_main:  # the comparisons and every file are the main process's (the others hold the same scores)
        return None

    # 5. Comparisons: generalization gaps, robustness summaries, paired tests between every two models
    for entry in results.values():
        test_accuracy = entry["sets"]["test"]["metrics"]["accuracy"]
        for set_name in ood_sources:
            accuracy = entry["sets"][set_name]["metrics"]["accuracy"]
            entry["sets"][set_name]["gap"] = {
                "accuracy_minus_test": accuracy - test_accuracy,
                "relative_to_test": accuracy / test_accuracy if test_accuracy > 0 else 0.0,
            }
    lines = _id_ood_lines(results, ood_sources, args.robustness_baseline)
    if corruption_names:
        baseline = next((n for n, e in results.items() if e["kind"] == "zero-shot"), None)
        for name, entry in results.items():
            reference = None
            if baseline is not None and baseline != name:
                reference = _robustness_input(results[baseline])
            entry["robustness"] = robustness_summary(*_robustness_input(entry), baseline=reference)
            if reference is not None:
                entry["robustness"]["effective_robustness_baseline"] = baseline
    paired = {}
    for set_name in sets:
        paired[set_name] = {
            f"{a} vs {b}": paired_tests(scores[a][set_name], scores[b][set_name], len(label_names),
                                        args.num_resamples, args.seed)
            for a, b in itertools.combinations(results, 2)
        }  # fmt: skip

    # 6. Outputs
    evaluation = evaluation_record(
        command=shlex.join(["python", "-m", "mm_hf.evaluate", *argv]), modality=modality, device=device,
        processes=world_size, corruptions=corruption_names, severities=severities, seed=args.seed, models=results,
        failed=failed, label_names=label_names, effective_robustness_lines=lines, paired_tests=paired,
        sets={
            name: {"source": sources[name], "samples": len(ds), "skipped_bad_samples": len(skipped[name])}
            for name, ds in sets.items()
        },
    )  # fmt: skip
    predictions = {
        set_name: {"labels": scores[next(iter(results))][set_name].labels}
        | {name: scores[name][set_name].predictions for name in results}
        for set_name in sets
    }
    by_name = {candidate.name: candidate for candidate in found}
    if args.save_temperature:
        for name, entry in results.items():
            scaling = entry["temperature_scaling"]
            scaling["saved_to"] = cands.save_temperature(by_name[name], scaling.pop("saved_temperature"))
    if args.update_card:
        for name, entry in results.items():
            entry["card"] = None
            if by_name[name].kind != "mm-hf" or not os.path.isdir(entry["path"]):
                logger.warning("--update_card: %s=%s is not a local mm-hf checkpoint folder; no card is written",
                               name, entry["path"])  # fmt: skip
                continue
            entry["card"] = update_card(entry["path"], eval_results(evaluation, name))
    write_outputs(args.output_dir, evaluation, predictions)
    print(f"Evaluated {', '.join(results)} on {', '.join(sets)}: {os.path.join(args.output_dir, 'evaluation.md')}")
    if failed:
        print("Not evaluated: " + "; ".join(f"{name} ({why})" for name, why in failed.items()), file=sys.stderr)
    return evaluation


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


# Flags of the image/audio flow that the fusion flow does not implement: refused, never ignored.
_NOT_FOR_FUSION = (
    "prompt_templates", "max_length_seconds", "test_dir", "dataset_name", "robustness_baseline",
)  # fmt: skip


def _evaluate_fusion(fusion_models, found, args, data_args, explicit, ood_sources, failed, device, state, argv):
    others = [c.name for c in found if c.kind != "fusion"]
    if others:
        raise UserError(f"--model {', '.join(others)} are not fusion checkpoints like "
                        f"{', '.join(c.name for c in fusion_models)}: evaluate them in separate runs")  # fmt: skip
    refused = [f"--{name}" for name in _NOT_FOR_FUSION if name in explicit]
    if refused:
        raise UserError(f"{', '.join(refused)}: not available for fusion checkpoints yet (they get the recipe's "
                        "metrics, calibration, each modality missing and --corruptions, on --test_file and --ood files)")  # fmt: skip
    command = shlex.join(["python", "-m", "mm_hf.evaluate", *argv])
    severities = parse_severities(args.severities, "--severities")
    return evaluate_fusion(fusion_models, args, data_args, ood_sources, failed, device, command, severities, state)


def _read_sets(args, data_args, found, column, modality, ood_sources):
    """(sets, sources, skipped, calibration set, label names): every set read, label-checked and validated once."""
    data_kwargs = dict(cache_dir=args.cache_dir, input_flag=f"--{modality}_column")
    source = data_args.test_dir or data_args.test_file
    if not (source or data_args.dataset_name):
        raise UserError("no test set: pass --test_dir, --test_file or --dataset_name (its test split)")
    raw, texts, test_source = read_labelled_split(
        source, column, args.label_column, dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name, **data_kwargs,
    )  # fmt: skip
    labelled = [c for c in found if c.label_names is not None]
    label_names = labelled[0].label_names if labelled else sorted(set(texts))
    for candidate in labelled:
        cands.check_labels(candidate, label_names, set(texts), test_source)
    sampling_rate = _sampling_rate(found) if modality == "audio" else None
    sets, skipped = {}, {}
    sets["test"], skipped["test"] = _prepare(raw, texts, test_source, label_names, column, modality, data_args,
                                             sampling_rate, data_args.max_predict_samples)  # fmt: skip
    sources = {"test": test_source}
    for name, path in ood_sources.items():
        raw, texts, sources[name] = read_labelled_split(path, column, args.label_column, **data_kwargs)
        sets[name], skipped[name] = _prepare(raw, texts, path, label_names, column, modality, data_args, sampling_rate)
    calibration_set = None
    if args.calibration_data:
        raw, texts, _ = read_labelled_split(args.calibration_data, column, args.label_column, **data_kwargs)
        calibration_set, skipped["calibration"] = _prepare(
            raw, texts, args.calibration_data, label_names, column, modality, data_args, sampling_rate
        )
    return sets, sources, skipped, calibration_set, label_names


def _sampling_rate(found) -> int | None:
    # Validation decodes the clips once, at the first model's rate; each model's transform resamples to its own.
    for candidate in found:
        try:
            return int(AutoFeatureExtractor.from_pretrained(candidate.path).sampling_rate)
        except Exception:  # noqa: BLE001 (a model that cannot load is reported later)
            continue
    return 16000


def _prepare(raw, texts, source, label_names, column, modality, data_args, sampling_rate, limit=None):
    """The set as the models see it: labels as ids in the evaluation's order, bad samples checked or dropped."""
    return prepare_set(raw, texts, source, label_names, column, modality, skip_bad=data_args.skip_bad_samples,
                       num_proc=data_args.preprocessing_num_workers, sampling_rate=sampling_rate, limit=limit)  # fmt: skip


def _set_entry(scored, metrics: ClassificationMetrics, args, temperature) -> dict:
    entry = {
        "samples": len(scored.labels),
        "metrics": scored.metrics,
        "confidence_intervals": confidence_intervals(
            scored, metrics.num_labels, metrics.top_k, args.num_resamples, args.seed
        ),
        "per_class": scored.report["per_class"],
        "confusion_matrix": scored.report["confusion_matrix"],
        "calibration": {**scored.calibration, "reliability": scored.reliability},
    }
    if temperature is not None:
        entry["calibration_temperature_scaled"] = {**scored.calibration_scaled, "temperature": temperature}
    return entry


def _id_ood_lines(results: dict, ood_sources: dict, baseline_flag: str | None) -> dict | None:
    """Per OOD set the baseline ID -> OOD line (`fit_id_ood_line` over the baseline models' points, `models` naming
    them) and each model's `effective_robustness` `{value, expected_accuracy}` against it, set into `results`."""
    if baseline_flag:
        baselines = [name.strip() for name in baseline_flag.split(",") if name.strip()]
        baselines = [name for name in baselines if name in results]  # one that failed to load has no point
    else:
        baselines = [name for name, entry in results.items() if entry["kind"] == "zero-shot"]
    if not baselines or not ood_sources:
        return None
    lines = {}
    for set_name in ood_sources:
        accuracy = {name: (entry["sets"]["test"]["metrics"]["accuracy"], entry["sets"][set_name]["metrics"]["accuracy"])
                    for name, entry in results.items()}  # fmt: skip
        line = {**fit_id_ood_line([accuracy[name] for name in baselines]), "models": baselines}
        lines[set_name] = line
        for name, entry in results.items():
            entry["sets"][set_name]["effective_robustness"] = {
                "value": effective_robustness(line, *accuracy[name]),
                "expected_accuracy": line_accuracy(line, accuracy[name][0]),
            }
    return lines


def _robustness_input(entry: dict):
    accuracies = {name: list(per.values()) for name, per in entry["corruptions"].items()}
    return entry["sets"]["test"]["metrics"]["accuracy"], accuracies
