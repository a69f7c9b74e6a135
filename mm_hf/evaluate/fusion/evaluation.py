"""`evaluate_fusion`: every fusion checkpoint scored on the test set and the `--ood` sets (clean, each modality
missing, each corruption and severity), calibrated, compared pair by pair and costed; evaluation.json / .md written
by the main process."""

from __future__ import annotations

import itertools

from ...data.multimodal import RANKING_GROUP_KEY
from ...errors import UserError
from ...measures import WithoutModality
from ..card import eval_results, update_card
from ..cost import measure_latency, model_cost, peak_memory, reset_peak_memory
from ..processes import main_process_first, process_rank
from ..report import evaluation_record, write_evaluation
from ..scoring import head_confidence_intervals, head_paired_tests
from .calibration import (
    CALIBRATED,
    calibrated_heads,
    fit_temperatures,
    per_head,
    save_fusion_temperatures,
    set_calibration,
)
from .report import fusion_markdown, reliability_plots
from .robustness import fusion_corruption_sweep, select_fusion_corruptions, sweep_summary
from .scoring import head_outputs, headline_key, outputs_metrics, task_scores
from .sets import load_fusion, read_set, run_columns


def evaluate_fusion(candidates, args, data_args, ood_sources: dict, failed: dict, device, command: str,
                    severities=(), state=None) -> dict | None:  # fmt: skip
    """evaluation.json for fusion checkpoints (all `candidates` are fusion ones) and the .md table; returns it.

    `state`: `inference_processes`' group under `accelerate launch` (call on every process): each scoring pass is
    split across the processes and gathered (`head_outputs`); the calibration, temperature fits and outputs are the
    main process's, which returns the dict (the others return None)."""
    if not data_args.test_file:
        raise UserError("fusion checkpoints are evaluated on --test_file (CSV/JSONL with the run's columns)")
    first = candidates[0]
    columns, problem_types = run_columns(first)
    for candidate in candidates[1:]:
        if run_columns(candidate) != (columns, problem_types):
            raise UserError(
                f"--model {candidate.name} was trained on other columns/problem type than --model {first.name} "
                f"({run_columns(candidate)} vs {(columns, problem_types)}); evaluate them in separate runs"
            )
    problem_type = problem_types[0] if len(problem_types) == 1 else problem_types
    modalities = columns.modalities
    corruptions = select_fusion_corruptions(args.corruptions, modalities) if args.corruptions else []
    ranking_ks = (first.run_config.get("ranking_ks") or [1, 5, 10]) if problem_type == "ranking" else None
    if args.calibration_data and not any(p in CALIBRATED for p in problem_types):
        raise UserError(f"--calibration_data: the fusion model's heads are {problem_types}; temperature scaling "
                        "calibrates classification heads (a regression head predicts values, a ranking head's order "
                        "within a group does not change with a temperature)")  # fmt: skip
    rank, world_size = process_rank(state)
    is_main = rank == 0
    passes = dict(batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers,
                  device=device, progress=is_main and not args.disable_tqdm, world_size=world_size)  # fmt: skip
    run = dict(passes, ranking_ks=ranking_ks)

    def read(path, task, sampling_rate):  # the main process reads and checks first, the others reuse its cache
        with main_process_first(state):
            return read_set(path, columns, problem_type, task, args.cache_dir, data_args, sampling_rate)

    results, sets_info, to_save = {}, {}, []
    kept = {}  # the main process's head_outputs per set and model: the paired tests compare them row by row
    for candidate in candidates:
        reset_peak_memory(device)
        try:
            model, processor = load_fusion(candidate.path, device)
        except Exception as error:  # noqa: BLE001 (reported; the others are still evaluated)
            failed[candidate.name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            continue
        tasks = list(model.config.tasks)
        task = tasks[0] if len(tasks) == 1 else tasks  # one head's metrics as they are; several prefixed
        headline = headline_key(tasks, ranking_ks)
        # The model's own modality order (a video run's sound track is a modality without a column of its own).
        modalities = list(model.config.modalities)
        sampling_rate = getattr(processor.feature_extractor, "sampling_rate", None)
        transform = processor.transform(train=False)
        entry = {"path": candidate.path, "kind": "mm-hf-fusion", "problem_type": problem_type, "sets": {}}
        heads = calibrated_heads(tasks, ranking=ranking_ks is not None)
        fits = {}
        if args.calibration_data:
            calibration_set, _ = read(args.calibration_data, task, sampling_rate)
            calibration_outputs = head_outputs(model, calibration_set, transform, tasks,
                                               description=f"{candidate.name} | calibration", **passes)  # fmt: skip
            if is_main:
                fits = fit_temperatures(tasks, heads, calibration_outputs)
                entry["temperature_scaling"] = per_head(tasks, fits)
                if args.save_temperature:  # written once every model is scored, as for classifiers
                    to_save.append((candidate, dict(model.config.calibration_temperature or {}), fits))
        temperatures = {head: fit["temperature"] for head, fit in fits.items()}
        for set_name, path in {"test": data_args.test_file, **ood_sources}.items():
            dataset, skipped = read(path, task, sampling_rate)
            sets_info[set_name] = {"source": path, "samples": len(dataset), "skipped_bad_samples": len(skipped)}
            outputs = head_outputs(model, dataset, transform, tasks, description=f"{candidate.name} | {set_name}",
                                   **passes)  # fmt: skip
            missing = sweep = None
            if len(modalities) > 1:  # each modality missing in every sample (the placeholder stands in)
                missing = {
                    modality: task_scores(model, dataset, WithoutModality(transform, index), task,
                                          description=f"{candidate.name} | {set_name} without {modality}", **run)
                    for index, modality in enumerate(modalities)
                }  # fmt: skip
            if set_name == "test" and corruptions:
                sweep = fusion_corruption_sweep(
                    model, dataset, transform, task, corruptions, severities, seed=args.seed,
                    sampling_rate=sampling_rate, name=candidate.name, **run,
                )  # fmt: skip
            if not is_main:  # every process took part in the passes; the numbers are the main process's to report
                continue
            scored = {"samples": len(dataset), "metrics": outputs_metrics(task, outputs, ranking_ks),
                      "confidence_intervals": head_confidence_intervals(tasks, outputs, ranking_ks,
                                                                        args.num_resamples, args.seed)}  # fmt: skip
            kept.setdefault(set_name, {})[candidate.name] = outputs
            if set_name == "test":
                test_set = dataset
            scored.update(set_calibration(tasks, heads, outputs, temperatures))
            if missing is not None:
                clean = scored["metrics"].get(headline)
                scored["missing_modality"] = missing
                scored["missing_modality_relative"] = {
                    modality: (metrics.get(headline) / clean if clean else None)
                    for modality, metrics in missing.items()
                }
            entry["sets"][set_name] = scored
            if sweep is not None:
                entry["corruptions"] = {c: {s: m.get(headline) for s, m in per.items()} for c, per in sweep.items()}
                entry["corruption_metrics"] = sweep
                lower_is_better = tasks[0]["problem_type"] == "regression"
                entry["robustness"] = sweep_summary(scored["metrics"], sweep, headline, lower_is_better)
        entry["cost"] = model_cost(candidate, model)
        if args.latency_runs > 0 and is_main:  # timed once, by the main process, on real test batches
            entry["cost"]["latency"] = measure_latency(model, test_set, transform, device, runs=args.latency_runs,
                                                       not_inputs=("labels", RANKING_GROUP_KEY))  # fmt: skip
        entry["cost"].update(peak_memory(device))
        results[candidate.name] = entry
        del model
    if not results:
        raise UserError("no model could be evaluated: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
    if not is_main:  # the files (checkpoint configs, evaluation.json/.md, plots) are the main process's
        return None
    for candidate, saved, fits in to_save:
        save_fusion_temperatures(candidate, saved, fits)
    paired = {
        set_name: {f"{a} vs {b}": head_paired_tests(tasks, by_model[a], by_model[b], ranking_ks, args.num_resamples,
                                                    args.seed) for a, b in itertools.combinations(results, 2)}
        for set_name, by_model in kept.items()
    }  # fmt: skip
    evaluation = evaluation_record(
        command=command, modality="fusion", device=device, processes=world_size, sets=sets_info,
        corruptions=corruptions, severities=severities, seed=args.seed, models=results, failed=failed,
        modalities=modalities, problem_type=problem_type, headline=headline, ranking_ks=ranking_ks, paired_tests=paired,
        label_names=task["labels"] if len(tasks) == 1 else {t["name"]: t["labels"] for t in tasks},
    )  # fmt: skip
    evaluation["plots"] = reliability_plots(args.output_dir, results, tasks)
    if args.update_card:  # a fusion checkpoint is always a local mm-hf folder (it needs its run_config.yaml)
        for name, entry in results.items():
            entry["card"] = update_card(entry["path"], eval_results(evaluation, name))
    path = write_evaluation(args.output_dir, evaluation, fusion_markdown(evaluation))
    print(f"Evaluated {', '.join(results)} on {', '.join(sets_info)}: {path}")
    return evaluation
