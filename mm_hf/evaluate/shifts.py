"""The recipes' shifted sets and corruption sweep (`--ood_dir` / `--ood_file NAME=PATH`, `--robustness`), measured
before and after fine-tuning with `python -m mm_hf.evaluate`'s own code (`read_shifted_sets`, `score`,
`corruption_sweep`, `robustness_summary`), so a run's numbers equal that command's on the saved checkpoint.

`load_run_shifts` reads and checks the sets with the run's data (section 2 of a recipe: a bad set fails before any
training); `ShiftedMeasure` wraps the recipe's measure so `train_and_evaluate` records, next to `zeroshot_test_*` /
`test_*`, for each shifted set `[zeroshot_]ood_<NAME>_<metric>` (accuracy, top-5, macro/weighted F1, ...) and for
the corrupted measured split `[zeroshot_]corruption_<name>_s<severity>_accuracy`, `[zeroshot_]corruption_mean_accuracy`
and `[zeroshot_]corruption_relative_accuracy` (corrupted / clean), and adds their headline rows to the before/after
table.
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from ..args.robustness import DEFAULT_ROBUSTNESS
from ..corruptions.registry import parse_severities, select_corruptions
from ..errors import UserError
from ..measures import HEADLINE_METRICS
from ..metrics.robustness import robustness_summary
from ..metrics.streaming import ClassificationMetrics
from ..reports import CLASSIFICATION_TABLE_METRICS
from .fusion.robustness import fusion_corruption_sweep, select_fusion_corruptions, sweep_summary
from .fusion.scoring import HEADLINE as FUSION_HEADLINE
from .fusion.scoring import task_scores
from .fusion.sets import read_set
from .scoring import corruption_sweep, score
from .sets import read_shifted_sets

logger = logging.getLogger(__name__)


@dataclass
class RunShifts:
    """What a run measures besides its own held-out split: shifted sets and a corruption sweep of that split."""

    modality: str  # "image" or "audio": which corruptions apply to `column`
    column: str
    sets: dict = field(default_factory=dict)  # NAME -> Dataset (`column` + `labels` in the model's label order)
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=list)
    seed: int = 0
    task: dict | None = None  # a fusion run's head (Task.to_dict()); None for an image/audio classifier
    sampling_rate: int | None = None  # a fusion run's audio rate (its audio corruptions decode the clips at it)

    def __bool__(self) -> bool:
        return bool(self.sets or self.corruptions)

    @property
    def headline(self) -> str:
        """The metric corruptions are summarised by: accuracy, or a fusion head's (micro F1, ROC-AUC, RMSE)."""
        return FUSION_HEADLINE[self.task["problem_type"]] if self.task else "accuracy"

    def table_rows(self) -> list[str]:
        """The before/after table's rows for these shifts (metric keys without the before/after prefix)."""
        metrics = HEADLINE_METRICS[self.task["problem_type"]][:2] if self.task else ("accuracy", "macro_f1")
        rows = [f"ood_{name}_{metric}" for name in self.sets for metric in metrics]
        if self.corruptions and not (self.task and self.task["problem_type"] == "regression"):
            rows += [f"corruption_mean_{self.headline}", f"corruption_relative_{self.headline}"]
        elif self.corruptions:
            rows += [f"corruption_{c}_s{s}_{self.headline}" for c in self.corruptions for s in self.severities]
        return rows


def load_run_shifts(robust_args, data_args, training_args, cache_dir, label_names, column, label_column, *,
                    modality: str, input_flag: str, sampling_rate: int | None = None) -> tuple[RunShifts, dict]:  # fmt: skip
    """`(shifts, skipped)`: the run's `RobustnessArguments` checked and its shifted sets read (main process first)
    with `label_names`, the trained model's classes (a set with another label is refused, naming it); `skipped`
    lists the bad samples --skip_bad_samples dropped from each set, keyed `ood_<NAME>`."""
    explicit = getattr(training_args, "explicit_flags", set())
    if robust_args.robustness is None and "robustness_severities" in explicit:
        raise UserError("--robustness_severities sets the severities of --robustness: pass --robustness too")
    spec = robust_args.corruption_spec(modality)
    try:
        corruptions = select_corruptions(spec, modality) if spec else []
    except ValueError as error:
        raise UserError(f"--robustness {robust_args.robustness}: {error}") from None
    severities = parse_severities(robust_args.robustness_severities, "--robustness_severities")
    with training_args.main_process_first(desc="loading shifted sets"):
        sets, skipped = read_shifted_sets(
            robust_args.shifted_sets(), list(label_names), column, label_column, modality, data_args=data_args,
            cache_dir=cache_dir, sampling_rate=sampling_rate, input_flag=input_flag,
        )  # fmt: skip
    shifts = RunShifts(modality, column, sets, corruptions, severities if corruptions else [], training_args.seed)
    if shifts:
        logger.info("measured before and after fine-tuning: shifted sets %s, corruptions %s at severities %s",
                    {n: len(d) for n, d in sets.items()}, corruptions, shifts.severities)  # fmt: skip
    return shifts, skipped


def load_fusion_shifts(robust_args, data_args, training_args, cache_dir, columns, tasks, sampling_rate) -> RunShifts:
    """A fusion run's shifts: `--ood_file` sets read with the run's columns (the head's classes, every one present;
    a label unseen in training is named) and `--robustness` corruptions of its image / text / audio columns and of
    a video column's frames (no value: the image/audio/text defaults of the modalities it has; a video's are the
    image ones). Single-task runs only."""
    explicit = getattr(training_args, "explicit_flags", set())
    if robust_args.robustness is None and "robustness_severities" in explicit:
        raise UserError("--robustness_severities sets the severities of --robustness: pass --robustness too")
    if robust_args.ood_dir:
        raise UserError("--ood_dir: fusion data are CSV/JSONL files with one column per modality; pass "
                        "--ood_file NAME=FILE")  # fmt: skip
    shifted = robust_args.shifted_sets()
    modalities = columns.modalities
    spec = robust_args.robustness
    if spec == "default":
        corruptible = {"image" if m == "video" else m for m in modalities}  # a video's frames: image corruptions
        spec = ",".join(DEFAULT_ROBUSTNESS[m] for m in ("image", "text", "audio") if m in corruptible)
        if not spec:
            raise UserError(f"--robustness: the run's modalities {modalities} have no corruptions "
                            "(image/video/text/audio)")  # fmt: skip
    corruptions = select_fusion_corruptions(spec, modalities, "--robustness") if spec else []
    severities = parse_severities(robust_args.robustness_severities, "--robustness_severities")
    if not (shifted or corruptions):
        return RunShifts("fusion", "")
    if len(tasks) != 1:
        raise UserError(f"--ood_file / --robustness measure single-task fusion runs; this one has {len(tasks)} heads "
                        f"({', '.join(t.name for t in tasks)})")  # fmt: skip
    task = tasks[0].to_dict()
    sets = {}
    with training_args.main_process_first(desc="loading shifted sets"):
        for name, (flag, path) in shifted.items():
            sets[name], _ = read_set(path, columns, task["problem_type"], task, cache_dir, data_args, sampling_rate,
                                     source=f"{flag} {name}={path}")  # fmt: skip
    return RunShifts("fusion", "", sets, corruptions, severities if corruptions else [], training_args.seed, task,
                     sampling_rate)  # fmt: skip


class ShiftedMeasure:
    """A recipe's measure (mm_hf.measures) plus the run's shifts, scored by mm_hf.evaluate's `score` on the same
    model right after the measure's own before / after evaluation (every process takes part: under a multi-process
    launch each scores a shard and the logits are gathered, as in `python -m mm_hf.evaluate`)."""

    def __init__(self, measure, shifts: RunShifts, trainer, splits: dict, transform, label_names):
        self.measure, self.shifts, self.trainer = measure, shifts, trainer
        self.splits, self.transform = splits, transform  # raw splits: the corruptions need the undecoded inputs
        self.label_names = list(label_names)

    @property
    def report(self):
        return self.measure.report

    @property
    def write_report(self):
        return self.measure.write_report

    def before(self, split: str, prefix: str) -> dict:
        results = self.measure.before(split, prefix)
        return {**results, **self.measure_shifts(split, results, prefix, "zeroshot_")}

    def validation(self, split: str) -> dict:
        return self.measure.validation(split)

    def after(self, split: str, prefix: str) -> dict:
        results = self.measure.after(split, prefix)
        return {**results, **self.measure_shifts(split, results, prefix, "")}

    def table_metrics(self, key: str):
        return [*(self.measure.table_metrics(key) or CLASSIFICATION_TABLE_METRICS), *self.shifts.table_rows()]

    def headline(self, split: str, key: str) -> str:
        return self.measure.headline(split, key)

    def measure_shifts(self, split: str, results: dict, prefix: str, before: str) -> dict:
        """`{before}ood_<NAME>_<metric>` per shifted set and `{before}corruption_*` of the corrupted `split`; `results`
        (the measure's, keys `{prefix}_<metric>`) gives the clean accuracy the corrupted one is relative to.

        The random streams are left as they were: each DataLoader draws its workers' base seed from torch's
        generator, so without this a run with --ood_dir would shuffle and augment differently from one without
        (measured on the demo: test accuracy 0.9783 without, 0.9728 with a single --ood_dir set)."""
        with random_state_kept():
            return self.shifted_metrics(split, results, prefix, before)

    def shifted_metrics(self, split: str, results: dict, prefix: str, before: str) -> dict:
        args = self.trainer.args
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval().to(args.device)
        run = dict(batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers,
                   device=args.device, progress=args.should_log and not args.disable_tqdm,
                   rank=args.process_index, world_size=args.world_size)  # fmt: skip
        label = "before" if before else "after"
        out = {}
        try:
            if self.shifts.task is not None:
                return self.fusion_shifts(model, split, results, prefix, before, run)
            metrics = ClassificationMetrics(dict(enumerate(self.label_names)))  # not the Trainer's: its report stays
            identity = list(range(len(self.label_names)))
            for name, dataset in self.shifts.sets.items():
                scored = score(model, dataset, self.transform, identity, metrics, description=f"{label} | ood {name}",
                               **run)  # fmt: skip
                out.update({f"{before}ood_{name}_{metric}": value for metric, value in scored.metrics.items()})
                out[f"{before}ood_{name}_samples"] = len(dataset)
            if self.shifts.corruptions:
                dataset = self.splits[split].select_columns([self.shifts.column, "labels"])
                sweep = corruption_sweep(
                    model, dataset, self.transform, identity, metrics, self.shifts.corruptions, self.shifts.severities,
                    modality=self.shifts.modality, column=self.shifts.column, seed=self.shifts.seed, name=label, **run,
                )  # fmt: skip
                for corruption, per in sweep.items():
                    out.update({f"{before}corruption_{corruption}_s{s}_accuracy": v for s, v in per.items()})
                clean = results[f"{prefix}_accuracy"]
                summary = robustness_summary(clean, {c: list(per.values()) for c, per in sweep.items()})
                out[f"{before}corruption_mean_accuracy"] = summary["mean_corruption_accuracy"]
                out[f"{before}corruption_relative_accuracy"] = summary["relative_accuracy"]
        finally:
            model.train(was_training)
        return out

    def fusion_shifts(self, model, split: str, results: dict, prefix: str, before: str, run: dict) -> dict:
        """The fusion head's `compute_task_metrics` on each shifted set and corrupted split (under a multi-process
        launch each pass split across the processes and gathered in row order, as mm_hf.evaluate's), per-class keys
        left out as in the Trainer's metrics."""
        task, shifts, out = self.shifts.task, self.shifts, {}
        run = {k: v for k, v in run.items() if k != "rank"}  # `head_outputs` shards by world_size alone
        per_label = tuple(f"{name}_" for name in task["labels"])

        def summary(metrics: dict) -> dict:
            return {k: v for k, v in metrics.items() if not k.startswith(per_label)}

        label = "before" if before else "after"
        for name, dataset in shifts.sets.items():
            scores = task_scores(model, dataset, self.transform, task, description=f"{label} | ood {name}", **run)
            out.update({f"{before}ood_{name}_{k}": v for k, v in summary(scores).items()})
            out[f"{before}ood_{name}_samples"] = len(dataset)
        if shifts.corruptions:
            sweep = fusion_corruption_sweep(
                model, self.splits[split], self.transform, task, shifts.corruptions, shifts.severities,
                seed=shifts.seed, sampling_rate=shifts.sampling_rate, name=label, **run,
            )  # fmt: skip
            headline = shifts.headline
            for corruption, per in sweep.items():
                out.update(
                    {f"{before}corruption_{corruption}_s{s}_{headline}": m.get(headline) for s, m in per.items()}
                )
            clean = {k.removeprefix(f"{prefix}_"): v for k, v in results.items() if k.startswith(f"{prefix}_")}
            robustness = sweep_summary(clean, sweep, headline, task["problem_type"] == "regression")
            if robustness is not None:
                out[f"{before}corruption_mean_{headline}"] = robustness["mean_corruption_accuracy"]
                out[f"{before}corruption_relative_{headline}"] = robustness["relative_accuracy"]
        return out


@contextlib.contextmanager
def random_state_kept():
    """Restore Python's, NumPy's and torch's (CPU and every CUDA device's) random state on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def with_shifts(measure, shifts: RunShifts, trainer, splits: dict, transform, label_names):
    """`measure`, wrapped in a `ShiftedMeasure` when the run has shifted sets or a corruption sweep."""
    return ShiftedMeasure(measure, shifts, trainer, splits, transform, label_names) if shifts else measure
