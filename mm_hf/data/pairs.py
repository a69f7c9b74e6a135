"""Loading media–caption pairs (image or audio with one or several captions) with caption validation.

Every loader returns a `DatasetDict` with two columns: the media column (file paths, or undecoded
`{"bytes", "path"}` dicts for Hub media) and `captions` (a list of clean strings per item, COCO/Flickr
style). Captions that are `None`, empty, "NA"-like or not strings are dropped and counted; an item left
without any caption is an error naming its row, or is dropped with `skip_bad_samples`.
"""

import json
import logging
import os

import datasets
from datasets import Dataset, DatasetDict

from .loading import DataError, hold_out_validation, hub_split_name, read_table, select_hub_columns

logger = logging.getLogger(__name__)

MISSING_CAPTIONS = {"", "na", "n/a", "nan", "none", "null", "-"}


def clean_captions(value) -> tuple[list[str], int]:
    """(valid captions, number dropped) from a caption cell: a string, a list of strings, or junk."""
    values = value if isinstance(value, (list, tuple)) else [value]
    kept = [v.strip() for v in values if isinstance(v, str) and v.strip().lower() not in MISSING_CAPTIONS]
    return kept, len(values) - len(kept)


def load_caption_splits(
    data_args, media_column: str, caption_column: str, cache_dir=None, skip_bad: bool = False, media_flag=None
):
    """train/validation/test pairs from `--{split}_file` (CSV/JSONL), `--{split}_dir` (media folder with a
    metadata.jsonl/metadata.csv holding `file_name` + the caption column) or `--dataset_name`. `media_flag`:
    the recipe's flag for `media_column` (`--image_column`, `--audio_column`), named when the column is missing."""
    flags = {media_column: media_flag, caption_column: "--caption_column"}
    raw = {}
    hub = None
    if data_args.dataset_name:
        hub = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    for split in ("train", "validation", "test"):
        folder, path = getattr(data_args, f"{split}_dir"), getattr(data_args, f"{split}_file")
        if folder:
            path = _metadata_file(folder)
            raw[split] = (read_table(path, "file_name", caption_column, cache_dir, flags), path)
            raw[split] = (raw[split][0].rename_column("file_name", media_column), path)
        elif path:
            raw[split] = (read_table(path, media_column, caption_column, cache_dir, flags), path)
        elif hub is not None and (name := hub_split_name(hub, split)):
            ds = select_hub_columns(hub[name], media_column, caption_column, data_args.dataset_name, flags)
            raw[split] = (ds, f"{data_args.dataset_name}[{name}]")
    if "train" not in raw:
        raise DataError("no training data: pass --train_file, --train_dir or --dataset_name")
    splits = DatasetDict()
    for split, (ds, source) in raw.items():
        splits[split] = _clean_split(ds, media_column, caption_column, source, split, skip_bad)
    splits = hold_out_validation(splits, data_args, seed=42, stratify=False)
    for split, flag in {
        "train": "max_train_samples",
        "validation": "max_eval_samples",
        "test": "max_predict_samples",
    }.items():
        n = getattr(data_args, flag)
        if split in splits and n is not None:
            splits[split] = splits[split].select(range(min(n, len(splits[split]))))
    return splits


def _metadata_file(folder: str) -> str:
    for name in ("metadata.jsonl", "metadata.csv"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"{folder} has no metadata.jsonl or metadata.csv (rows of file_name + caption)")


def _clean_split(ds: Dataset, media_column: str, caption_column: str, source: str, split: str, skip_bad: bool):
    rows, empty, dropped = [], [], 0
    for i, value in enumerate(ds[caption_column]):
        kept, n_dropped = clean_captions(value)
        dropped += n_dropped
        if kept:
            rows.append(i)
        else:
            empty.append(i)
    if empty and not skip_bad:
        raise DataError(
            f"{source}: {len(empty)} row(s) of the {split} split have no usable caption in column {caption_column!r} "
            f"(first: row {empty[0]}: {json.dumps(ds[empty[0]][caption_column], default=str)}); "
            "fix them or pass --skip_bad_samples"
        )
    if dropped:
        logger.warning("%s: ignored %d empty/NA/non-string caption(s)", source, dropped)
    if empty:
        logger.warning("%s: dropped %d row(s) without a usable caption", source, len(empty))
    ds = ds.select(rows) if empty else ds
    captions = [clean_captions(v)[0] for v in ds[caption_column]]
    ds = ds.remove_columns(caption_column).add_column("captions", captions)
    if len(ds) == 0:
        raise DataError(f"the {split} split is empty: {source}")
    return ds.select_columns([media_column, "captions"])
