"""`--update_card`: the evaluation's numbers into each mm-hf checkpoint's README.md `model-index`.

Built with huggingface_hub's `ModelCard` / `EvalResult` (never hand-written YAML). One model-index entry per
dataset or shift, each with accuracy, macro F1 and ECE:
- the test set: `dataset.split: test`, named and typed as the recipes' cards do (a Hub id, else type "custom" and
  the folder/file name), so it lands in the same entry as the recipe's own test numbers and updates them;
- each `--ood NAME=DATA`: `dataset.config: NAME` (the key the Hub groups entries by), name "NAME (shifted: ...)";
- the corruption sweep: `dataset.config: corruptions`, `mean_corruption_accuracy` and `relative_accuracy`.
Results already in the card under the same entry and metric are replaced (a re-run does not duplicate them);
everything else in the card, its text and other metadata, stays as it was.
"""

from __future__ import annotations

import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

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
    """The model-index results of model `name` in an `evaluation.json` dict."""
    entry = evaluation["models"][name]
    task_type = TASK_TYPES[evaluation["modality"]]
    out = []
    for set_name, scored in entry["sets"].items():
        dataset_type, dataset_name = _dataset(evaluation["sets"][set_name]["source"])
        config = None if set_name == "test" else set_name
        if config is not None:
            dataset_name = f"{set_name} (shifted: {dataset_name})"
        values = {**scored["metrics"], "ece": scored["calibration"]["ece"]}
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
            for key, (metric_type, display) in SET_METRICS.items()
        ]
    if "robustness" in entry:
        dataset_type, dataset_name = _dataset(evaluation["sets"]["test"]["source"])
        sweep = evaluation["corruptions"]
        severities = ",".join(str(s) for s in sweep["severities"])
        out += [
            EvalResult(
                task_type=task_type,
                dataset_type=dataset_type,
                dataset_name=f"{dataset_name} corrupted ({', '.join(sweep['names'])}; severities {severities})",
                dataset_config="corruptions",
                dataset_split="test",
                metric_type=key,
                metric_name=display,
                metric_value=float(entry["robustness"][key]),
            )
            for key, display in (
                ("mean_corruption_accuracy", "Mean corruption accuracy"),
                ("relative_accuracy", "Relative robustness (corrupted / clean)"),
            )
        ]
    return out


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
