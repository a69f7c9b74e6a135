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

import logging
from dataclasses import dataclass, field

from ..corruptions import parse_severities, select_corruptions
from ..errors import UserError
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

    def __bool__(self) -> bool:
        return bool(self.sets or self.corruptions)

    def table_rows(self) -> list[str]:
        """The before/after table's rows for these shifts (metric keys without the before/after prefix)."""
        rows = [f"ood_{name}_{metric}" for name in self.sets for metric in ("accuracy", "macro_f1")]
        if self.corruptions:
            rows += ["corruption_mean_accuracy", "corruption_relative_accuracy"]
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
