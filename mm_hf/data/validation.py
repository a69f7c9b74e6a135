"""Validate a dataset's samples before training starts.

A corrupt or truncated file deep in a dataset otherwise crashes a run hours in (or, worse, trains on
garbage). `check_samples` runs a loader such as `load_image` (decodes every sample: `--validate_samples full`)
or `check_image_header` (opens and size-checks it: `header`) over every sample of a split once, up front, and
either fails with a list of the bad files or drops them. Loaders report an unusable sample by raising
`BadSampleError` naming the file.

A verdict is cached on disk (`verdict_key`): the next run on the same data, and the other processes of this run
(the recipes check on the main process first), read it instead of checking again. The key covers what the check
read: each file's path, size and modification time, and for samples stored in the dataset itself (Hub bytes) the
dataset's fingerprint, so an edited or replaced file is checked again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import datasets

from ..errors import UserError

logger = logging.getLogger(__name__)

# How many bad samples an error message lists before "... and N more".
MAX_LISTED = 5
# The source name of a sample given as bytes rather than a file, in messages.
IN_MEMORY = "<in-memory bytes>"
# What --validate_samples accepts: decode every sample, read its header only, or trust the data.
VALIDATION_MODES = ("full", "header", "none")
# Bumped when a check's verdicts change meaning, so older cached verdicts are not reused.
VERDICT_VERSION = 1


class BadSampleError(UserError):
    """A sample that cannot be used: `.source` names the file (or row), `.reason` says why."""

    def __init__(self, source: Any, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"Cannot use {self.source}: {reason}")

    def __reduce__(self):
        # The default pickling replays `args` (the message) into __init__, which takes two arguments;
        # errors must survive the trip back from `num_proc` / DataLoader worker processes.
        return type(self), (self.source, self.reason)


def require_file(path: str | os.PathLike) -> None:
    """Refuse, naming `path`, what no decoder can read: a missing path, not a regular file, an empty file. One
    `os.stat` answers all three (header checks over a million files: every call counts)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise BadSampleError(path, "file not found") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadSampleError(path, "not a regular file")
    if info.st_size == 0:
        raise BadSampleError(path, "empty file (0 bytes)")


class _Wording(NamedTuple):
    """How messages about one kind of sample read."""

    progress: str  # "Checking {progress} in train"
    dropped: str  # "Dropping 2 of 9 {dropped} from train"
    all_bad: str  # hint when every sample is bad


_WORDING = {
    "images": _Wording(
        progress="images",
        dropped="unreadable images",
        all_bad="Every image is bad: check the image column and that paths resolve from this directory.",
    ),
    "audio clips": _Wording(
        progress="audio",
        dropped="unusable audio clips",
        all_bad="Every clip is bad: check the audio column and that paths resolve from this directory.",
    ),
    "videos": _Wording(
        progress="videos",
        dropped="unreadable videos",
        all_bad="Every video is bad: check the video column and that paths resolve from this directory.",
    ),
}


def check_samples(
    dataset: datasets.Dataset,
    column: str,
    load: Callable[[Any], Any],
    *,
    kind: str,
    feature_type: type[datasets.Image] | type[datasets.Audio] | type[datasets.Video],
    skip_bad: bool,
    num_proc: int | None = None,
    split_name: str = "train",
    allow_missing: bool = False,
    check_id: str | None = None,
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, list[tuple[str, str]]]:
    """Run `load` once on every sample in `dataset[column]`, before training, to find unusable ones.

    `check_id` names what `load` checks (e.g. "images/header", "audio/full/16000"); with it the verdict is cached
    under `cache_dir` (default: the datasets cache) and reused while the data is unchanged (`verdict_key`).

    With `allow_missing` a None sample is fine (a multimodal row lacking this modality) and is not loaded.

    `load` takes one sample (a path or a `{"bytes", "path"}` record: a `feature_type` column is read
    undecoded) and raises `BadSampleError` for a bad one; with `num_proc` it is pickled, so pass a
    module-level function or a `functools.partial` of one. `kind` ("images" or "audio clips") words
    the messages. Returns `(dataset, bad)` where `bad` lists `(source, reason)` pairs. With
    `skip_bad=False` any bad sample raises `BadSampleError` listing the first few; with
    `skip_bad=True` they are dropped from the returned dataset (which is otherwise unchanged), unless
    every sample is bad.
    """
    wording = _WORDING[kind]
    if column not in dataset.column_names:
        raise KeyError(f"No column {column!r} in the {split_name} split; columns are {dataset.column_names}.")
    view = _undecoded(dataset, column, feature_type)
    key = verdict_key(view, column, f"{check_id}/{allow_missing}") if check_id else None
    cached = read_verdict(key, cache_dir) if key else None
    if cached is not None and cached["total"] == len(dataset):
        logger.info("Reusing the %s check of %s (%d samples) from the cache", check_id, split_name, len(dataset))
        return _apply_verdict(dataset, [(i, (s, r)) for i, s, r in cached["bad"]], split_name, kind, skip_bad)
    found = view.map(
        _find_bad_samples,
        fn_kwargs={"load": load, "split_name": split_name, "allow_missing": allow_missing},
        batched=True,
        with_indices=True,
        input_columns=[column],
        remove_columns=view.column_names,
        # Declared so the result's types never depend on whether a batch held a bad sample
        # (an all-None column would be typed `null`).
        features=datasets.Features({"bad_source": datasets.Value("string"), "bad_reason": datasets.Value("string")}),
        num_proc=num_proc,
        # Files can change on disk under the same paths: an earlier verdict is reused only through `verdict_key`,
        # which covers their sizes and modification times.
        load_from_cache_file=False,
        keep_in_memory=True,
        desc=f"Checking {wording.progress} in {split_name}",
    )
    bad_rows = [
        (index, (source, reason))
        for index, (source, reason) in enumerate(zip(found["bad_source"], found["bad_reason"], strict=True))
        if reason is not None
    ]
    if key:
        write_verdict(key, cache_dir, len(dataset), [(i, s, r) for i, (s, r) in bad_rows])
    return _apply_verdict(dataset, bad_rows, split_name, kind, skip_bad)


def _apply_verdict(dataset, bad_rows: list, split_name: str, kind: str, skip_bad: bool):
    """`(dataset, bad)` from the bad rows `[(index, (source, reason))]`: raise, or drop them with `skip_bad`."""
    wording = _WORDING[kind]
    if not bad_rows:
        return dataset, []
    bad = [pair for _, pair in bad_rows]
    if not skip_bad or len(bad) == len(dataset):
        raise _summary_error(bad, len(dataset), split_name, kind=kind, skip_bad=skip_bad)
    logger.warning(
        "Dropping %d of %d %s from %s, e.g. %s: %s", len(bad), len(dataset), wording.dropped, split_name, *bad[0]
    )
    bad_indices = {index for index, _ in bad_rows}
    return dataset.select([i for i in range(len(dataset)) if i not in bad_indices]), bad


def _undecoded(
    dataset: datasets.Dataset, column: str, feature_type: type[datasets.Image] | type[datasets.Audio]
) -> datasets.Dataset:
    """A view whose column yields `{"bytes", "path"}` records, so the loader decodes with its own checks."""
    feature = dataset.features.get(column) if dataset.features else None
    if isinstance(feature, feature_type) and feature.decode:
        return dataset.cast_column(column, feature_type(decode=False))
    return dataset


def _find_bad_samples(
    samples: Sequence[Any], indices: Sequence[int], load: Callable[[Any], Any], split_name: str, allow_missing: bool
) -> dict[str, list]:
    found: dict[str, list] = {"bad_source": [], "bad_reason": []}
    for sample, index in zip(samples, indices, strict=True):
        try:
            if not (sample is None and allow_missing):
                load(sample)  # decoded and dropped straight away: we only validate
        except BadSampleError as error:
            found["bad_source"].append(_describe_sample(sample, index, split_name))
            found["bad_reason"].append(error.reason)
        else:
            found["bad_source"].append(None)
            found["bad_reason"].append(None)
    return found


def _describe_sample(sample: Any, index: int, split_name: str) -> str:
    if isinstance(sample, str | os.PathLike):
        return str(sample)
    if isinstance(sample, Mapping) and sample.get("path"):
        return str(sample["path"])
    return f"row {index} of {split_name}"


def _summary_error(
    bad: list[tuple[str, str]], total: int, split_name: str, *, kind: str, skip_bad: bool
) -> BadSampleError:
    listed = "\n".join(f"  - {source}: {reason}" for source, reason in bad[:MAX_LISTED])
    if len(bad) > MAX_LISTED:
        listed += f"\n  ... and {len(bad) - MAX_LISTED} more"
    if skip_bad:
        hint = _WORDING[kind].all_bad
    else:
        hint = "Fix or delete these files, or pass --skip_bad_samples to drop them and train on the rest."
    first_source, first_reason = bad[0]
    summary = f"{len(bad)} of {total} {kind} in {split_name!r} cannot be used:\n{listed}\n{hint}"
    return BadSampleError(first_source, f"{first_reason}\n{summary}")


def check_splits(splits, check: Callable, *args, **kwargs) -> tuple[Any, dict[str, list[tuple[str, str]]]]:
    """`check(split, *args, split_name=..., **kwargs)` (`check_images`, `check_audio`, a retrieval media's
    `check`) on every split: returns the splits (bad samples dropped with `skip_bad=True`) and split ->
    [(source, reason)] of what was dropped, which every recipe reports the same way (`mm_hf.outputs.save_run`)."""
    skipped = {}
    for name in list(splits):
        splits[name], skipped[name] = check(splits[name], *args, split_name=name, **kwargs)
    return splits, skipped


def verdict_key(view: datasets.Dataset, column: str, check_id: str) -> str:
    """What a check's verdict depends on, hashed: the check, the column, and each sample's identity in row order.

    A path (or a record holding only a path) counts by its path, size and modification time (nanoseconds), one
    `os.stat` each (about 2 s for a million local files); samples stored in the dataset (bytes) by the dataset's
    fingerprint, which datasets derives from its Arrow files and the operations since, so it changes with them.
    """
    digest = hashlib.sha256(f"{VERDICT_VERSION}\0{check_id}\0{column}\0{len(view)}".encode())
    stored = False
    for batch in view.select_columns([column]).with_format("arrow").iter(batch_size=10_000):
        values = batch.column(0).to_pylist()
        for value in values:
            path = value
            if isinstance(value, Mapping):
                stored = stored or bool(value.get("bytes")) or value.get("array") is not None
                path = None if value.get("bytes") else value.get("path")
            if isinstance(path, str) and path:
                try:
                    stat = os.stat(path)
                    digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
                except OSError:
                    digest.update(f"{path}\0missing\n".encode())
            else:
                digest.update(b"-\n")
    if stored:
        digest.update(view._fingerprint.encode())
    return digest.hexdigest()


def _verdict_path(key: str, cache_dir: str | None) -> str:
    root = cache_dir or datasets.config.HF_DATASETS_CACHE
    return os.path.join(str(root), "mm_hf_sample_checks", f"{key}.json")


def read_verdict(key: str, cache_dir: str | None) -> dict | None:
    """The cached verdict `{"total": n, "bad": [[index, source, reason], ...]}` under `key`, or None."""
    try:
        with open(_verdict_path(key, cache_dir), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_verdict(key: str, cache_dir: str | None, total: int, bad: list) -> None:
    """Cache a verdict (temp file + rename: a process reading it never sees half a file); a read-only cache only
    costs the reuse."""
    path = _verdict_path(key, cache_dir)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False, encoding="utf-8") as f:
            json.dump({"total": total, "bad": bad}, f)
        os.replace(f.name, path)
    except OSError as error:
        logger.warning("cannot cache the sample check in %s: %s", path, error)
