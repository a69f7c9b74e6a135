"""The "measure" step of the run protocol (`mm_hf.run.train_and_evaluate`), one kind per recipe family.

A measure (the `Measure` protocol below) scores the model on the held-out split before training and after it:

- `TrainerMeasure`: `Trainer.evaluate` with the Trainer's `compute_metrics` (the classification recipes' streaming
  `ClassificationMetrics`, the fusion recipes' `TaskMetrics`, with modality ablations after training).
- `RetrievalMeasure`: `mm_hf.retrieval.measure_retrieval` of a dual encoder (recall@K, median rank, zero-shot
  classification), the Trainer's evaluation giving only the contrastive loss.
"""

from collections.abc import Callable
from typing import Protocol

from .engines import full_parameters
from .metrics.tasks import compute_ranking_metrics, compute_task_metrics
from .models.fusion import Task
from .outputs import write_classification_outputs
from .retrieval import measure_retrieval


class Measure(Protocol):
    """What `train_and_evaluate` asks of a recipe's measure. `split` is the dataset name ("test" / "validation"),
    `prefix` / `key` the Trainer's metric prefix ("zeroshot_test" before, "test" or "eval" after)."""

    report: dict | None  # the full report of the last before/after call (per class / head); None: no report files
    write_report: Callable | None  # write_report(output_dir, report, prefix="") -> its text

    def before(self, split: str, prefix: str) -> dict: ...

    def validation(self, split: str) -> dict:
        """After training: the validation split's Trainer metrics (`eval_*`) when `split` is not that split."""
        ...

    def after(self, split: str, prefix: str) -> dict: ...

    def table_metrics(self, key: str) -> list[str] | None:
        """Rows of the before/after table (None: accuracy, top-5, macro/weighted F1)."""
        ...

    def headline(self, split: str, key: str) -> str:
        """The line printed above the table: which split, how many samples."""
        ...


class TrainerMeasure:
    """`Trainer.evaluate` with the Trainer's metrics; `metrics.last_report` keeps the full report of each call.

    After training, the validation split is evaluated too when the test split is the measured one (`eval_*`),
    and `extra_after(split, key)` adds more metrics to the after-training ones (e.g. modality ablations).
    """

    def __init__(
        self,
        trainer,
        datasets: dict,
        metrics,
        *,
        table_metrics=None,
        extra_after=None,
        write_report=write_classification_outputs,
    ):
        self.trainer, self.datasets, self.metrics = trainer, datasets, metrics
        self.rows, self.extra_after, self.write_report = table_metrics, extra_after, write_report
        self.report: dict | None = None

    def before(self, split: str, prefix: str) -> dict:
        results = self.trainer.evaluate(self.datasets[split], metric_key_prefix=prefix)
        self.report = self.metrics.last_report
        return results

    def validation(self, split: str) -> dict:
        if "validation" not in self.datasets or split == "validation":
            return {}
        results = self.trainer.evaluate(self.datasets["validation"], metric_key_prefix="eval")
        return {**results, "eval_samples": len(self.datasets["validation"])}

    def after(self, split: str, prefix: str) -> dict:
        results = self.trainer.evaluate(self.datasets[split], metric_key_prefix=prefix)
        results[f"{prefix}_samples"] = len(self.datasets[split])
        self.report = self.metrics.last_report  # before extra evaluations replace it
        if self.extra_after is not None:
            results.update(self.extra_after(split, prefix))
        return results

    def table_metrics(self, key: str):
        return self.rows

    def headline(self, split: str, key: str) -> str:
        return f"Evaluation on the {key} split ({len(self.datasets[split])} samples)"


# Rows of the retrieval before/after table; {m} is the modality ("image" or "audio"), as the metric keys name it.
RETRIEVAL_TABLE_METRICS = ("{m}_to_text_recall@1", "{m}_to_text_recall@5", "text_to_{m}_recall@1",
                           "text_to_{m}_recall@5", "text_to_{m}_median_rank", "zeroshot_cls_accuracy")  # fmt: skip


class RetrievalMeasure:
    """Retrieval (and, with `zeroshot_eval_dir`, zero-shot classification) metrics of the current weights.

    Embedded by every process, each a share of the raw `splits` (with `media` and `tokenizer`; kept on disk in
    `features_cache_dir` when given), ranked by the main process (the others get `{}`); after training the
    Trainer's own evaluation of its eval dataset (the contrastive loss, `eval_loss`) is added when
    `validation_loss` (--do_eval).
    """

    report = write_report = None  # no per-class report

    def __init__(
        self,
        trainer,
        splits: dict,
        media,
        tokenizer,
        *,
        max_length: int,
        zeroshot_eval_dir: str | None = None,
        prompt_templates=None,
        validation_loss: bool = True,
        features_cache_dir: str | None = None,
    ):
        self.trainer, self.splits, self.media, self.tokenizer = trainer, splits, media, tokenizer
        self.max_length, self.validation_loss = max_length, validation_loss
        self.zeroshot_eval_dir, self.prompt_templates = zeroshot_eval_dir, prompt_templates
        self.features_cache_dir = features_cache_dir

    def before(self, split: str, prefix: str) -> dict:
        with full_parameters(self.trainer):  # FSDP: the towers run outside its forward
            return measure_retrieval(
                self.trainer.accelerator.unwrap_model(self.trainer.model),
                self.splits[split],
                self.media,
                self.tokenizer,
                batch_size=self.trainer.args.per_device_eval_batch_size,
                max_length=self.max_length,
                prefix=f"{prefix}_",
                zeroshot_eval_dir=self.zeroshot_eval_dir,
                prompt_templates=self.prompt_templates,
                cache_dir=self.features_cache_dir,
                progress_bars=not self.trainer.args.disable_tqdm,
            )

    after = before

    def validation(self, split: str) -> dict:
        if not self.validation_loss or self.trainer.eval_dataset is None:
            return {}
        return self.trainer.evaluate(metric_key_prefix="eval")

    def table_metrics(self, key: str) -> list[str]:
        return [f"{key}_{m.format(m=self.media.name)}" for m in RETRIEVAL_TABLE_METRICS]

    def headline(self, split: str, key: str) -> str:
        return f"Retrieval on the {split} split ({len(self.splits[split])} {self.media.plural})"


# The metrics that lead the before/after table for each kind of head; the first one also picks the best checkpoint
# (regression by validation loss: Trainer would otherwise treat a larger MAE as better).
HEADLINE_METRICS = {
    "single_label_classification": ("accuracy", "macro_f1", "roc_auc", "log_loss"),
    "multi_label_classification": ("macro_f1", "micro_f1", "mAP", "macro_roc_auc", "subset_accuracy"),
    "binary_classification": ("roc_auc", "log_loss", "average_precision", "accuracy", "f1"),
    "regression": ("mae", "rmse", "pearson", "spearman", "r2"),
}


FUSION_BEFORE_LABEL = "untrained heads"


class TaskMetrics:
    """`compute_metrics` for `MultimodalFusionForClassification` (Trainer with `batch_eval_metrics=False`).

    Every head is scored by `mm_hf.metrics.tasks.compute_task_metrics` for its problem type. The Trainer log
    gets the summary metrics (`<task>_` prefixed for a multi-task model); `last_report` keeps everything,
    per class / label included, for the report files. With `ranking_ks` (--problem_type ranking: one binary head)
    the label ids end with the rows' group ids, and `compute_ranking_metrics` adds recall/ndcg/hit_rate@K and mrr,
    which then lead the table (ndcg@<largest K> picks the best checkpoint).
    """

    def __init__(self, tasks: list[Task], threshold: float = 0.5, ranking_ks=None):
        self.tasks, self.threshold = tasks, threshold
        self.ranking_ks = tuple(ranking_ks) if ranking_ks else None
        self.last_report: dict | None = None

    def key(self, task: Task, metric: str) -> str:
        return metric if len(self.tasks) == 1 else f"{task.name}_{metric}"

    def headline(self, task: Task) -> tuple[str, ...]:
        if self.ranking_ks:
            k = max(self.ranking_ks)
            return (f"ndcg@{k}", f"recall@{k}", f"hit_rate@{k}", "mrr", *HEADLINE_METRICS[task.problem_type][:2])
        return HEADLINE_METRICS[task.problem_type]

    def table_metrics(self, modalities=()) -> list[str]:
        """Rows of the before/after table: each head's headline metrics, then the first one per removed modality."""
        rows = [self.key(t, m) for t in self.tasks for m in self.headline(t)]
        first = [self.key(t, self.headline(t)[0]) for t in self.tasks]
        return rows + [f"without_{m}_{metric}" for m in modalities for metric in first]

    def best_metric(self) -> str:
        if len(self.tasks) > 1 or self.tasks[0].problem_type == "regression":
            return "loss"
        return self.headline(self.tasks[0])[0]

    def __call__(self, eval_pred) -> dict:
        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        groups = None
        if self.ranking_ks:  # (labels, group ids): see FusionDataArguments.label_names
            *label_ids, groups = label_ids
            label_ids = label_ids[0] if len(label_ids) == 1 else tuple(label_ids)
        if len(self.tasks) == 1:
            predictions, label_ids = [predictions], [label_ids]
        report, summary = {}, {}
        for task, logits, labels in zip(self.tasks, predictions, label_ids, strict=True):
            names = task.labels if task.problem_type != "binary_classification" else None
            scores = compute_task_metrics(task.problem_type, logits, labels, names, self.threshold)
            if groups is not None:
                scores.update(compute_ranking_metrics(logits, labels, groups, self.ranking_ks))
            report[task.name] = scores
            per_label = tuple(f"{name}_" for name in task.labels)
            summary.update({self.key(task, k): v for k, v in scores.items() if not k.startswith(per_label)})
        self.last_report = report
        return summary


class WithoutModality:
    """A batch transform wrapper that marks modality `index` missing in every sample (modality ablation)."""

    def __init__(self, transform, index: int):
        self.transform, self.index = transform, index

    def __call__(self, batch: dict) -> dict:
        out = self.transform(batch)
        for row in out["modality_mask"]:
            row[self.index] = 0
        return out


def evaluate_without_modalities(trainer, dataset, transform, modalities: list[str], key: str) -> dict:
    """`<key>_without_<modality>_<metric>` for each modality: the split evaluated with that modality removed.

    Shows what each modality contributes (and how the model copes when one is missing at test time). With a
    single modality there is nothing to compare against, so nothing is measured.
    """
    if len(modalities) < 2:
        return {}
    results = {}
    for index, modality in enumerate(modalities):
        ablated = dataset.with_transform(WithoutModality(transform, index))
        results.update(trainer.evaluate(ablated, metric_key_prefix=f"{key}_without_{modality}"))
    return results
