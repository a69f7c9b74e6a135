"""The before/after protocol of the classification recipes: evaluate untouched, train, evaluate again."""

from dataclasses import dataclass

from transformers import EarlyStoppingCallback

from .reports import format_before_after_table
from .training import evaluate_before_training


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
) -> BeforeAfter:
    """Evaluate the untouched model on the held-out split (test, else validation), train, evaluate again.

    Keys follow Trainer's convention: `zeroshot_test_*` before, `test_*` after (`eval_*` for validation,
    which is also evaluated after training when a test split exists). `metrics` is the streaming
    `ClassificationMetrics` given to the Trainer; its full reports are returned for the output files.
    Early stopping watches only the evaluations made during training, not the before/after ones.
    """
    split = "test" if "test" in datasets else "validation"
    key = "test" if split == "test" else "eval"
    before = evaluate_before_training(trainer, datasets[split], f"zeroshot_{key}")
    before_report = metrics.last_report
    results, train_runtime = dict(before), None
    if do_train:
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
    results.update(after)
    table = format_before_after_table(
        {k.removeprefix("zeroshot_"): v for k, v in before.items()}, after, before_label=before_label
    )
    return BeforeAfter(results, before_report, metrics.last_report, table, key, train_runtime)
