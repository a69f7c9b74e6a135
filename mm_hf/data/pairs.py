"""Loading media–caption pairs (image or audio with one or several captions) with caption validation.

Every loader returns a `DatasetDict` with two columns: the media column (file paths, or undecoded
`{"bytes", "path"}` dicts for Hub media) and `captions` (a list of clean strings per item, COCO/Flickr
style). Captions that are `None`, empty, "NA"-like or not strings are dropped and counted; an item left
without any caption is an error naming its row, or is dropped with `skip_bad_samples`.
"""

import json
import logging
import os
import tempfile

import datasets
from datasets import Dataset, DatasetDict

from ..errors import UserError
from .loading import (
    DataError,
    hold_out_validation,
    hub_split_name,
    read_table,
    require_columns,
    resolve_path,
    select_hub_columns,
)
from .streaming.flags import check_streaming_flags, require_full_validation
from .streaming.skips import SkipLog, StreamedSplit, StreamSkips, describe_row
from .streaming.sources import ColumnNames, first_row, open_training_stream, read_files, read_whole, shuffled, undecoded
from .validation import BadSampleError, check_splits

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
    hub = None
    if data_args.dataset_name:
        hub = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    raw = _raw_splits(data_args, media_column, caption_column, cache_dir, flags, ("train", "validation", "test"), hub)
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


def _raw_splits(data_args, media_column, caption_column, cache_dir, flags, names, hub) -> dict[str, tuple]:
    """split -> (its media and caption columns as read, its source) for each of `names` the data has."""
    raw = {}
    for split in names:
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
    return raw


def load_checked_pairs(data_args, training_args, media, caption_column: str, cache_dir=None, media_flag=None):
    """clip_retrieval's data: `(splits, skipped)`, every map-style split's media checked by `media.check` before
    any training (on the main process first: the others read its dataset cache). With --streaming the training
    split is a `StreamedSplit` (`load_caption_stream`), checked as it is read, and `skipped` a `StreamSkips`."""
    explicit = getattr(training_args, "explicit_flags", set())
    check_streaming_flags(data_args, training_args, explicit)
    require_full_validation(data_args, explicit, "clip_retrieval")
    with training_args.main_process_first(desc="loading data"):
        if data_args.streaming:
            splits = load_caption_stream(
                data_args, media.column, caption_column, cache_dir, training_args.seed, media_flag=media_flag
            )
        else:
            splits = load_caption_splits(
                data_args, media.column, caption_column, cache_dir, data_args.skip_bad_samples, media_flag
            )
    stream = splits["train"] if isinstance(splits["train"], StreamedSplit) else None
    checked, skipped = check_splits(
        {name: ds for name, ds in splits.items() if ds is not stream},
        media.check,
        skip_bad=data_args.skip_bad_samples,
        num_proc=data_args.preprocessing_num_workers,
    )
    splits = {**splits, **checked}
    return splits, skipped if stream is None else StreamSkips(stream.log, skipped)


def load_caption_stream(data_args, media_column: str, caption_column: str, cache_dir=None, seed=42, media_flag=None):
    """`load_caption_splits` for --streaming: the training pairs as a `StreamedSplit` (--train_file's CSV/JSONL/
    parquet files or WebDataset shards, --train_dir's metadata file, or --dataset_name's train split; shuffled
    with a buffer), a pair without its media or a usable caption skipped and counted (`CaptionRows`). The
    validation/test splits are read whole: retrieval ranks each caption against the whole gallery."""
    if data_args.class_names:
        raise UserError("--class_names: clip_retrieval trains on captions, not classes; drop the flag")
    flags = {media_column: media_flag, caption_column: "--caption_column"}
    if data_args.train_dir:  # its metadata file, streamed; file_name is the media column
        path = _metadata_file(data_args.train_dir)
        stream, base = read_files(path, "--train_dir", cache_dir, streaming=True)
        require_columns(ColumnNames(list(first_row(stream, path))), ("file_name", caption_column), path, flags)
        stream, source, hub = stream.rename_column("file_name", media_column), path, None
    else:
        stream, source, base, hub = open_training_stream(data_args, cache_dir)
    first = first_row(stream, source)
    require_columns(ColumnNames(list(first)), (media_column, caption_column), source, flags)
    keep = [media_column, caption_column] + [c for c in ("__key__", "__url__") if c in first]
    stream = shuffled(undecoded(stream.select_columns(keep), [media_column]), data_args, seed, source)
    if hub is not None:  # the evaluation splits of a streamed Hub dataset, read whole
        names = {hub_split_name(hub, split) for split in ("validation", "test")} - {None}
        hub = {name: read_whole(hub[name].select_columns([media_column, caption_column]), cache_dir) for name in names}
    raw = _raw_splits(data_args, media_column, caption_column, cache_dir, flags, ("validation", "test"), hub)
    if not raw:
        raise DataError(
            "nothing to evaluate on: with --streaming pass a validation or test split (--validation_file/_dir, "
            "--test_file/_dir, or a Hub dataset with one); retrieval ranks it whole"
        )
    splits = {}
    for split, (ds, where) in raw.items():
        splits[split] = _clean_split(ds, media_column, caption_column, where, split, data_args.skip_bad_samples)
        n = data_args.max_eval_samples if split == "validation" else data_args.max_predict_samples
        if n is not None:
            splits[split] = splits[split].select(range(min(n, len(splits[split]))))
    log = SkipLog(tempfile.mkdtemp(prefix="mm_hf_stream_skips_"), data_args.max_bad_fraction)
    splits["train"] = StreamedSplit(stream, CaptionRows(media_column, caption_column, base), log, {})
    logger.info("streaming %s (%d shards)", source, stream.num_shards)
    return splits


class CaptionRows:
    """`SkipBadRows`' `prepare` for a stream of pairs: the media (a path resolved against the table's folder
    `base`, or undecoded bytes) and the captions cleaned by `clean_captions`; a pair without either is bad."""

    def __init__(self, media_column: str, caption_column: str, base: str | None):
        self.media_column, self.caption_column, self.base = media_column, caption_column, base

    def __call__(self, rows: list[dict]) -> list[tuple]:
        prepared = []
        for index, row in enumerate(rows):
            source = describe_row(row, self.media_column, index)
            media, (captions, _) = row[self.media_column], clean_captions(row[self.caption_column])
            if isinstance(media, str) and self.base:
                media = resolve_path(media.strip(), self.base)
            if isinstance(media, dict) and media.get("bytes") is None and not media.get("path"):
                media = None
            reason = None
            if media is None or (isinstance(media, str) and not media.strip()):
                reason = f"no {self.media_column} (column {self.media_column!r} is empty)"
            elif isinstance(media, str) and "://" not in media and not os.path.exists(media):
                reason = f"file not found: {media}"
            elif not captions:
                reason = f"no usable caption in column {self.caption_column!r}: {row[self.caption_column]!r}"
            prepared.append(
                (source, BadSampleError(source, reason) if reason else {self.media_column: media, "captions": captions})
            )
        return prepared


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
