"""Labelled sets as the models see them, shared by `python -m mm_hf.evaluate` and the recipes' end-of-run
evaluation (`--ood_dir` / `--ood_file`): read, labels mapped to ids in the models' order (a label the models never
learned is refused, named), every sample decoded once to check it."""

from __future__ import annotations

import os

from ..data.audio import check_audio
from ..data.images import check_images
from ..data.loading import read_labelled_split
from ..errors import DataError, UserError


def prepare_set(raw, texts, source, label_names, column, modality, *, skip_bad, num_proc, sampling_rate, limit=None,
                whose="the models'"):  # fmt: skip
    """`(dataset, skipped)`: `raw` (the input column) with `labels` as ids in `label_names`' order, truncated to
    `limit`, bad samples refused (or dropped with `skip_bad`, listed in `skipped`). `whose` names the label list in
    the refusal of an unseen label ("the models'", "the labels seen in training")."""
    unseen = sorted(set(texts) - set(label_names))
    if unseen:
        raise DataError(f"{source}: label(s) {unseen[:10]} are not among {whose} labels {label_names}")
    index = {name: i for i, name in enumerate(label_names)}
    dataset = raw.add_column("labels", [index[text] for text in texts])
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    check = dict(skip_bad=skip_bad, num_proc=num_proc, split_name=source)
    if modality == "image":
        return check_images(dataset, column, **check)
    return check_audio(dataset, column, sampling_rate=sampling_rate, **check)


def read_shifted_sets(shifted: dict, label_names, column, label_column, modality, *, data_args, cache_dir,
                      sampling_rate=None, input_flag=None):  # fmt: skip
    """`(sets, skipped)` of a recipe's `--ood_dir` / `--ood_file` sets (`shifted`: NAME -> (flag, path), as
    `RobustnessArguments.shifted_sets` gives it), each read like the test split, with `labels` as ids of the trained
    model's `label_names`. A set with a label unseen in training is refused, naming the label, the flag and the set.
    `skipped` is keyed `ood_<NAME>` (the run reports skipped samples per split)."""
    sets, skipped = {}, {}
    for name, (flag, path) in shifted.items():
        folder = flag == "--ood_dir"
        if folder != os.path.isdir(path):
            expected = "a folder of class sub-folders" if folder else "a CSV/JSONL file"
            raise UserError(f"{flag} {name}={path}: expected {expected}" + ("" if os.path.exists(path) else
                            f" (no such path, relative to {os.getcwd()})"))  # fmt: skip
        raw, texts, source = read_labelled_split(path, column, label_column, cache_dir=cache_dir, input_flag=input_flag)
        sets[name], skipped[f"ood_{name}"] = prepare_set(
            raw, texts, f"{flag} {name}={source}", label_names, column, modality, skip_bad=data_args.skip_bad_samples,
            num_proc=data_args.preprocessing_num_workers, sampling_rate=sampling_rate,
            whose="the labels seen in training",
        )  # fmt: skip
    return sets, skipped
