"""Fusion checkpoints in `python -m mm_hf.evaluate`: recipes/fusion_imagetext_cls.py and video_cls.py output folders
side by side.

A fusion run's inputs are several columns of one CSV/JSONL file, so the data comes from `--test_file` (and
`--ood NAME=FILE`) read with the columns and problem type the run itself recorded in run_config.yaml. Each model
is scored with its saved `MultimodalProcessor` (eval transform) and `mm_hf.metrics.tasks.compute_task_metrics`,
the recipe's own metrics, so the clean test numbers equal the recipe's `test_*` ones; then again with each modality
marked missing (the learned placeholder stands in), the recipe's `test_without_<modality>_*` numbers, and the
relative score of each missing-modality case (metric without / metric with all modalities).

A `--problem_type ranking` run (a binary head) is read with its `group_column` and also gets the recipe's ranking
metrics (recall/ndcg/hit_rate@K, mrr per group, `compute_ranking_metrics`), ndcg@<largest K> as its headline.

Calibration, with the classifier path's keys and functions (`mm_hf.metrics.calibration`, report.py's writers): per
set `calibration` `{ece (15 bins), mce, nll, brier, accuracy, confidence, reliability}` of each single-label or
binary head (binary: softmax([0, z]) = sigmoid(z)); a multi-label head's are means over its labels, each a binary
problem, with `per_label` and a `reliability` pooling every (sample, label) decision. Regression and ranking heads
have none: `calibration` is null (a regression head predicts values; a ranking head is scored by its order within a
group, which no temperature changes). `--calibration_data FILE` (read like --test_file) fits one temperature per
calibrated head (a multi-label head's over all its labels' binary cross-entropy): `temperature_scaling`
`{temperature, before, after, samples}` (+ `saved_to` with `--save_temperature`, which writes the product with the
one already saved into config.json's `calibration_temperature` `{head: T}`) and per set
`calibration_temperature_scaled`. One head: these keys hold the head's values as a classifier's do; several heads:
each is `{head name: value or null}`. Plots: `plots/reliability_<model>[_<head>].png` (test set), listed in `plots`.

Error bars, comparisons and cost as for classifiers (`scoring.head_confidence_intervals` / `head_paired_tests`,
`cost.py`): per set 95 % bootstrap CIs of each head's headline metric (and accuracy / macro F1 of classification
heads) over resampled rows, a ranking head's over resampled groups; McNemar and paired bootstrap tests between every
two models on the same rows; parameters, weight size, latency on real test batches, peak RSS.

Scope: any heads (a multi-task model's metrics `<task>_`-prefixed, as its run's `test_<task>_*`). Logits are kept
whole per set (N x outputs), as the recipes' Trainer evaluation does, and every model's until the paired tests.
Under `accelerate launch -m mm_hf.evaluate` every pass (each set, each modality missing, each corruption and
severity, the calibration set) is split across the processes and gathered in row order (`head_outputs`); the
metrics, error bars, paired tests, temperature fits and files are the main process's. `--corruptions` corrupt the
image / text / audio columns and a video column's decoded frames (`fusion_corruption_sweep`).

By concern: `sets` (the run's columns, the checkpoint, a labelled file read and refused), `scoring` (the passes over a
set and each head's metrics), `robustness` (the corruption passes), `calibration` (per-head calibration, temperature
fits and saving), `report` (evaluation.md, reliability diagrams), `evaluation` (`evaluate_fusion`, the whole run).
"""

from .calibration import (
    CALIBRATED,
    calibrated_heads,
    fit_head_temperature,
    fit_temperatures,
    head_calibration,
    per_head,
    save_fusion_temperatures,
    set_calibration,
)
from .evaluation import evaluate_fusion
from .report import fusion_markdown, reliability_plots
from .robustness import corruption_modality, fusion_corruption_sweep, select_fusion_corruptions, sweep_summary
from .scoring import HEADLINE, head_outputs, headline_key, outputs_metrics, task_scores
from .sets import fusion_columns, head_type, load_fusion, read_set, run_columns

__all__ = [
    "CALIBRATED",
    "HEADLINE",
    "calibrated_heads",
    "corruption_modality",
    "evaluate_fusion",
    "fit_head_temperature",
    "fit_temperatures",
    "fusion_columns",
    "fusion_corruption_sweep",
    "fusion_markdown",
    "head_calibration",
    "head_outputs",
    "head_type",
    "headline_key",
    "load_fusion",
    "outputs_metrics",
    "per_head",
    "read_set",
    "reliability_plots",
    "run_columns",
    "save_fusion_temperatures",
    "select_fusion_corruptions",
    "set_calibration",
    "sweep_summary",
    "task_scores",
]
