"""The before/after protocol of the classification recipes: evaluate untouched, train, evaluate again."""

import logging
import time
from dataclasses import dataclass

from transformers import EarlyStoppingCallback

from .data.loading import require_evaluation_split
from .reports import format_before_after_table
from .run import evaluate_before_training, prepare_training_arguments

logger = logging.getLogger(__name__)


@dataclass
class BeforeAfter:
    """What a classification run measured: `results` holds every metric for all_results.json."""

    results: dict
    before_report: dict
    after_report: dict
    table: str
    eval_key: str  # "test" or "eval": the Trainer prefix of the held-out split's metrics
    train_runtime: float | None


def train_with_before_after(
    trainer,
    datasets: dict,
    metrics,
    *,
    do_train: bool,
    early_stopping_patience=None,
    resume_from_checkpoint=None,
    before_label: str = "zero-shot",
    table_metrics=None,
    extra_after=None,
    fit=None,
) -> BeforeAfter:
    """Evaluate the untouched model on the held-out split (test, else validation), train, evaluate again.

    Keys follow Trainer's convention: `zeroshot_test_*` before, `test_*` after (`eval_*` for validation,
    which is also evaluated after training when a test split exists). `metrics` is the streaming
    `ClassificationMetrics` given to the Trainer; its full reports are returned for the output files.
    Early stopping watches only the evaluations made during training, not the before/after ones.
    `table_metrics` chooses the rows of the before/after table (default: accuracy, top-5, macro/weighted F1);
    `extra_after(split, key)` returns more after-training metrics for it (e.g. modality ablations).
    `fit()`, when given, trains instead of `trainer.train` (e.g. `mm_hf.probe.fit_classifier_head` on cached
    features) and returns what to record; its wall time is the train runtime.
    """
    require_evaluation_split(datasets)  # the loaders of the fusion recipes accept train alone
    split = "test" if "test" in datasets else "validation"
    key = "test" if split == "test" else "eval"
    before = evaluate_before_training(trainer, datasets[split], f"zeroshot_{key}")
    before_report = metrics.last_report
    results, train_runtime = dict(before), None
    if do_train and fit is not None:
        start = time.perf_counter()
        results.update(fit(), train_samples=len(datasets["train"]))
        train_runtime = results["train_runtime"] = time.perf_counter() - start
    elif do_train:
        early_stopping = None
        if early_stopping_patience is not None:
            early_stopping = EarlyStoppingCallback(early_stopping_patience=early_stopping_patience)
            trainer.add_callback(early_stopping)
        train_result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        train_runtime = train_result.metrics.get("train_runtime")
        results.update(train_result.metrics, train_samples=len(datasets["train"]))
        if early_stopping is not None:
            trainer.remove_callback(early_stopping)
    if "validation" in datasets and split != "validation":
        results.update(trainer.evaluate(datasets["validation"], metric_key_prefix="eval"))
        results["eval_samples"] = len(datasets["validation"])
    after = trainer.evaluate(datasets[split], metric_key_prefix=key)
    after[f"{key}_samples"] = len(datasets[split])
    report = metrics.last_report
    if extra_after is not None:
        after.update(extra_after(split, key))
    results.update(after)
    rows = {"metrics": table_metrics} if table_metrics else {}
    table = format_before_after_table(
        {k.removeprefix("zeroshot_"): v for k, v in before.items()}, after, before_label=before_label, **rows
    )
    return BeforeAfter(results, before_report, report, table, key, train_runtime)


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
    per class / label included, for the report files.
    """

    def __init__(self, tasks: list[dict], threshold: float = 0.5):
        self.tasks, self.threshold = tasks, threshold
        self.last_report: dict | None = None

    def key(self, task: dict, metric: str) -> str:
        return metric if len(self.tasks) == 1 else f"{task['name']}_{metric}"

    def table_metrics(self, modalities=()) -> list[str]:
        """Rows of the before/after table: each head's headline metrics, then the first one per removed modality."""
        rows = [self.key(t, m) for t in self.tasks for m in HEADLINE_METRICS[t["problem_type"]]]
        first = [self.key(t, HEADLINE_METRICS[t["problem_type"]][0]) for t in self.tasks]
        return rows + [f"without_{m}_{metric}" for m in modalities for metric in first]

    def best_metric(self) -> str:
        if len(self.tasks) > 1 or self.tasks[0]["problem_type"] == "regression":
            return "loss"
        return HEADLINE_METRICS[self.tasks[0]["problem_type"]][0]

    def __call__(self, eval_pred) -> dict:
        from .metrics.tasks import compute_task_metrics

        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        if len(self.tasks) == 1:
            predictions, label_ids = [predictions], [label_ids]
        report, summary = {}, {}
        for task, logits, labels in zip(self.tasks, predictions, label_ids, strict=True):
            names = task["labels"] if task["problem_type"] != "binary_classification" else None
            scores = compute_task_metrics(task["problem_type"], logits, labels, names, self.threshold)
            report[task["name"]] = scores
            per_label = tuple(f"{name}_" for name in task["labels"])
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


def train_fusion(model, processor, splits, tasks, modalities, training_args, ft_args, fusion_args):
    """Trainer + the fusion protocol, shared by the fusion recipes: returns `(trainer, BeforeAfter)`.

    Inputs are decoded on the fly by `processor` (train transform with augmentation for the train split), except
    those of frozen encoders, encoded once and cached (`mm_hf.fusion_features`, unless `--precompute_features
    false`); before training, the encoders' pooled features get their standardisation fitted on the train split;
    metrics come from `TaskMetrics` over every score at once (`batch_eval_metrics=False`: ROC-AUC and mAP need
    them), labels from `labels` or `labels_<task>`. The untrained heads are evaluated (the chance baseline),
    the model trained, then evaluated again, also with each modality removed (`fusion_args.ablate_modalities`).
    """
    from transformers import Trainer, default_data_collator

    from .fusion_features import CachedInputs, cache_encoder_outputs, fit_feature_statistics, frozen_modalities

    metrics = TaskMetrics(tasks, threshold=fusion_args.threshold)
    training_args = prepare_training_arguments(
        training_args,
        ft_args,
        has_validation="validation" in splits,
        best_metric=metrics.best_metric(),
        label_names=fusion_args.label_names(tasks),
        batch_eval_metrics=False,
    )
    train_transform = processor.transform(train=True, augment=fusion_args.augment)
    eval_transform = processor.transform(train=False)
    batch_size, device = training_args.per_device_eval_batch_size, training_args.device
    cached = frozen_modalities(model) if ft_args.precompute_features else []
    if cached:
        logger.info(
            "frozen encoder(s) of %s: each sample encoded once and cached (those inputs are not augmented; "
            "--precompute_features false runs them every epoch)",
            cached,
        )
        model.to(device)
        workers = training_args.dataloader_num_workers
        splits = {
            name: cache_encoder_outputs(model, ds, eval_transform, cached, batch_size, device, workers)
            for name, ds in splits.items()
        }
        train_transform = CachedInputs(train_transform, modalities, cached)
        eval_transform = CachedInputs(eval_transform, modalities, cached)
    if training_args.do_train:
        model.to(device)
        # Cached features are cheap to read in full; without a cache, 1024 rows through the encoders suffice.
        counts = fit_feature_statistics(
            model, splits["train"], eval_transform, batch_size, device, None if cached else 1024, training_args.seed
        )
        logger.info("feature standardisation fitted on %s training rows per modality", counts)
    datasets = {n: ds.with_transform(train_transform if n == "train" else eval_transform) for n, ds in splits.items()}
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("validation"),
        processing_class=processor,
        data_collator=default_data_collator,
        compute_metrics=metrics,
    )
    ablate = fusion_args.ablate_modalities

    def ablations(split, key):
        return evaluate_without_modalities(trainer, splits[split], eval_transform, modalities, key) if ablate else {}

    run = train_with_before_after(
        trainer,
        datasets,
        metrics,
        do_train=training_args.do_train,
        early_stopping_patience=ft_args.early_stopping_patience,
        resume_from_checkpoint=training_args.resume_from_checkpoint,
        before_label=FUSION_BEFORE_LABEL,
        table_metrics=metrics.table_metrics(modalities if ablate else ()),
        extra_after=ablations,
    )
    return trainer, run
