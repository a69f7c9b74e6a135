"""A fusion checkpoint and the labelled files it is scored on: the columns and problem types its run recorded
(run_config.yaml), the model and its saved processor, and a CSV/JSONL file read as the recipe's test split, with its
labels refused (both lists named) unless they are the heads' own."""

from __future__ import annotations

import os

from transformers import AutoModelForSequenceClassification

from ...args import DataArguments
from ...data.multimodal import MultimodalColumns, check_media, load_multimodal_splits
from ...errors import DataError, UserError
from ...processing import MultimodalProcessor


def head_type(problem_type: str) -> str:
    """The model head's problem type: a ranking run trains a binary (relevant or not) head."""
    return "binary_classification" if problem_type == "ranking" else problem_type


def fusion_columns(candidate) -> MultimodalColumns:
    """The columns the fusion run was trained with (its run_config.yaml), any number of tasks."""
    config = candidate.run_config
    if not config:
        raise UserError(
            f"{candidate.path}: a fusion checkpoint reads the columns its run recorded in run_config.yaml, and "
            "there is none (save it with recipes/fusion_imagetext_cls.py)"
        )
    return MultimodalColumns(
        image=config.get("image_column"),
        text=config.get("text_column"),
        audio=config.get("audio_column"),
        video=config.get("video_column"),
        numeric=config.get("numeric_columns") or [],
        categorical=config.get("categorical_columns") or [],
        labels=list(config.get("label_column") or []),
        group=config.get("group_column"),
    )


def run_columns(candidate) -> tuple[MultimodalColumns, list[str]]:
    """The columns and problem type(s), one per head, the fusion run was trained with."""
    columns = fusion_columns(candidate)
    problem_types = list(candidate.run_config.get("problem_type") or [])
    # One problem type: one head over all label columns (multi-label findings); one per label column: multi-task.
    if len(problem_types) not in (1, len(columns.labels)):
        raise UserError(f"--model {candidate.name}={candidate.path}: its run_config.yaml has problem types "
                        f"{problem_types} for the label columns {columns.labels}")  # fmt: skip
    return columns, problem_types


def load_fusion(path: str, device="cpu") -> tuple:
    """(model in eval mode on `device`, its saved MultimodalProcessor) of a fusion checkpoint folder."""
    model = AutoModelForSequenceClassification.from_pretrained(path).eval().to(device)
    return model, MultimodalProcessor.from_pretrained(path)


def read_set(path: str, columns: MultimodalColumns, problem_type, task, cache_dir, data_args, sampling_rate,
             source: str | None = None):  # fmt: skip
    """One labelled file as the recipe's test split (labels encoded as the checkpoint's heads expect: `task` one
    head's dict or the list of them, `problem_type` its type or theirs); `source` names it in errors (default: the
    path)."""
    source = source or path
    tasks = task if isinstance(task, list) else [task]
    if os.path.isdir(path):
        raise DataError(f"{source}: fusion data is a CSV/JSONL file with one column per modality, not a folder")
    # The label space comes from the file itself: it must be the head's (refused with both lists otherwise).
    data = DataArguments(train_file=path, validation_file=path, test_file=path)
    multi_task = len(tasks) > 1
    splits, spaces = load_multimodal_splits(
        data, columns, [head_type(p) for p in problem_type] if multi_task else head_type(problem_type), cache_dir
    )
    for head in tasks:
        space = spaces[head["name"]] if multi_task else spaces
        if head["problem_type"] != "regression" and space.names != head["labels"]:
            unseen = sorted(set(space.names) - set(head["labels"]))
            raise DataError(
                f"{source}: labels {space.names} are not the fusion model's {head['labels']}"
                + (f" (head {head['name']})" if multi_task else "")
                + (f" (label(s) {unseen} were not seen in training)" if unseen else "")
                + ": evaluate data with the classes the model was trained on (every class present)"
            )
    test = splits["test"]
    if data_args.max_predict_samples is not None and path == data_args.test_file:
        test = test.select(range(min(data_args.max_predict_samples, len(test))))
    checked, skipped = check_media(
        {"test": test}, columns.modalities, skip_bad=data_args.skip_bad_samples, audio_sampling_rate=sampling_rate
    )
    return checked["test"], skipped.get("test", [])
