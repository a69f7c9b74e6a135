"""`--update_card`: the evaluation's numbers into each mm-hf checkpoint's README.md `model-index`.

Built with huggingface_hub's `ModelCard` / `EvalResult` (never hand-written YAML). One model-index entry per
dataset or shift, each with accuracy, macro F1 and ECE (a fusion model: its headline metric too; ECE when it has one
classification head), under the task type the checkpoint's own card used (its run_info.json):
- the test set: `dataset.split: test`, named and typed as the recipes' cards do (a Hub id, else type "custom" and
  the folder/file name), so it lands in the same entry as the recipe's own test numbers and updates them;
- each `--ood NAME=DATA`: `dataset.config: NAME` (the key the Hub groups entries by), name "NAME (shifted: ...)";
- the corruption sweep: `dataset.config: corruptions`, `mean_corruption_<headline>` and `relative_<headline>`
  (`mean_corruption_accuracy`, `relative_accuracy` for classifiers), the names the recipes' cards use.
Results already in the card under the same entry and metric are replaced (a re-run does not duplicate them);
everything else in the card, its text and other metadata, stays as it was.
"""

from __future__ import annotations

import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..cards import read_run_info

TASK_TYPES = {"image": "image-classification", "audio": "audio-classification"}
# evaluation.json metric -> (model-index metric type, display name). The types are the recipes' card keys, so the
# test numbers replace the recipe's own for the same split instead of standing next to them under another name.
SET_METRICS = {
    "accuracy": ("accuracy", "Accuracy"),
    "macro_f1": ("macro_f1", "Macro F1"),
    "ece": ("ece", "ECE (15 bins)"),
}


def _dataset(source: str) -> tuple[str, str]:
    """(type, name) of a data source as the recipes' cards write them: a Hub id ("name[split]" in evaluation.json),
    else type "custom" and the folder or file name."""
    if os.path.exists(source):
        return "custom", os.path.basename(os.path.normpath(source))
    dataset_id = source.split("[")[0]
    return dataset_id, dataset_id


def eval_results(evaluation: dict, name: str) -> list[EvalResult]:
    """The model-index results of model `name` in an `evaluation.json` dict (classifier or fusion mode)."""
    entry = evaluation["models"][name]
    task_type = _task_type(entry["path"], evaluation["modality"])
    # A fusion evaluation names its summary metric (e.g. macro_f1, roc_auc, ndcg@10); a classifier's is accuracy.
    headline = evaluation.get("headline") or "accuracy"
    wanted = {**SET_METRICS, headline: SET_METRICS.get(headline, (headline, headline.replace("_", " ")))}
    out = []
    for set_name, scored in entry["sets"].items():
        dataset_type, dataset_name = _dataset(evaluation["sets"][set_name]["source"])
        config = None if set_name == "test" else set_name
        if config is not None:
            dataset_name = f"{set_name} (shifted: {dataset_name})"
        calibration = scored.get("calibration")  # a fusion model with several heads has one per head: not listed
        values = {**scored["metrics"], "ece": calibration.get("ece") if isinstance(calibration, dict) else None}
        out += [
            EvalResult(
                task_type=task_type,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_config=config,
                dataset_split="test",
                metric_type=metric_type,
                metric_name=display,
                metric_value=float(values[key]),
            )
            for key, (metric_type, display) in wanted.items()
            if isinstance(values.get(key), int | float)
        ]
    if entry.get("robustness"):
        dataset_type, dataset_name = _dataset(evaluation["sets"]["test"]["source"])
        sweep = evaluation["corruptions"]
        severities = ",".join(str(s) for s in sweep["severities"])
        # The recipes' cards name these mean_corruption_<headline> / relative_<headline>, so the two replace each other.
        out += [
            EvalResult(
                task_type=task_type,
                dataset_type=dataset_type,
                dataset_name=f"{dataset_name} corrupted ({', '.join(sweep['names'])}; severities {severities})",
                dataset_config="corruptions",
                dataset_split="test",
                metric_type=metric_type,
                metric_name=display,
                metric_value=float(entry["robustness"][key]),
            )
            for key, metric_type, display in (
                ("mean_corruption_accuracy", f"mean_corruption_{headline}", f"Mean corruption {headline}"),
                ("relative_accuracy", f"relative_{headline}", f"Relative robustness of {headline} (corrupted / clean)"),
            )
        ]
    return out


def _task_type(path: str, modality: str) -> str:
    """The model-index task type the checkpoint's own card used (its run_info.json), so the numbers land in the
    recipe's entries; else the classifier modality's pipeline tag."""
    try:
        info = read_run_info(path)
    except (OSError, ValueError, TypeError):
        return TASK_TYPES.get(modality, "multimodal-classification")
    return info.eval_task_type or info.pipeline_tag or TASK_TYPES.get(modality, "multimodal-classification")


def _key(result: EvalResult) -> tuple:
    return (*result.unique_identifier, result.metric_type)


def update_card(path: str, results: list[EvalResult]) -> str:
    """Merge `results` into the model-index of `path`/README.md (created if missing); returns the card's path."""
    file = os.path.join(path, "README.md")
    if os.path.exists(file):
        card = ModelCard.load(file)
    else:
        data = ModelCardData(model_name=os.path.basename(os.path.normpath(path)))
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {data.model_name}\n")
    data = card.data
    replaced = {_key(result) for result in results}
    kept = [result for result in data.eval_results or [] if _key(result) not in replaced]
    data.model_name = data.model_name or os.path.basename(os.path.normpath(path))
    data.eval_results = kept + results
    card.save(file)
    return file
