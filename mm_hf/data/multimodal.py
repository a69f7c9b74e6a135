"""Loading multimodal rows (image / video / text / audio / tabular features -> labels), with errors naming the row.

`load_multimodal_splits` returns a `DatasetDict` whose columns are the used modalities under canonical names
("image", "video", "text", "audio": media as absolute file paths, or undecoded `{"bytes", "path"}` dicts for
Hub media), the numeric and categorical columns under their own names (raw values: `TabularProcessor`
standardises them, fitted on train) and `labels`, plus the `LabelSpace` of the training split.

A missing value (None, "", NaN) in a modality column means that sample lacks the modality: it stays None
and the model has to cope. A row lacking every modality, or naming a media file that does not exist, is an
error (or is dropped and counted with `skip_bad`). Row numbers in messages count data rows from 0 (the first
row after a CSV header, the first line of a JSONL file), before any row is dropped.

Labels are encoded by `mm_hf.data.labels.encode_labels` (one label space per task).
"""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict

from ..errors import UserError
from ..models.configuration_multimodal_fusion import MODALITIES, PROBLEM_TYPES
from .audio import check_audio
from .images import check_images
from .labels import LabelSpace, check_problem_type, encode_labels, is_missing
from .loading import DataError, hold_out_validation, hub_split_name, read_data_file, resolve_path
from .validation import MAX_LISTED
from .video import check_videos

logger = logging.getLogger(__name__)

MEDIA_MODALITIES = ("image", "video", "audio")
# The batch key of the ranking group ids (int codes of --group_column per split). A `labels*` key passes through the
# batch transforms, the Trainer gathers it with the labels (label_names), and the fusion model ignores it.
RANKING_GROUP_KEY = "labels_ranking_group"


@dataclass
class MultimodalColumns:
    """Which source columns hold each modality, the tabular features and the label(s)."""

    image: str | None = None
    text: str | None = None
    audio: str | None = None
    video: str | None = None
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # one for single-task; several for 0/1 or regression targets
    group: str | None = None  # ranking: the user/query id column, carried as RANKING_GROUP_KEY (may also be an input)

    def __post_init__(self):
        self.labels = [self.labels] if isinstance(self.labels, str) else list(self.labels)
        self.numeric, self.categorical = list(self.numeric), list(self.categorical)

    @property
    def modalities(self) -> list[str]:
        """Used modalities in the fixed order image, video, text, audio, tabular."""
        return [m for m in MODALITIES if (self.numeric or self.categorical if m == "tabular" else getattr(self, m))]

    @property
    def renames(self) -> dict[str, str]:
        """Source column -> output column for the media and text modalities."""
        return {getattr(self, m): m for m in ("image", "video", "text", "audio") if getattr(self, m)}

    @property
    def inputs(self) -> list[str]:
        """Source columns holding model inputs, in output order."""
        return [*self.renames, *self.numeric, *self.categorical]

    @property
    def read(self) -> list[str]:
        """Every source column read: the inputs, the labels and the ranking group (once, if it is an input too)."""
        return list(dict.fromkeys([*self.inputs, *self.labels, *([self.group] if self.group else [])]))


def load_multimodal_splits(
    data_args,
    columns: MultimodalColumns,
    problem_type: str | Sequence[str],
    cache_dir=None,
    seed: int = 42,
    skip_bad: bool = False,
) -> tuple[DatasetDict, LabelSpace | dict[str, LabelSpace]]:
    """train/validation/test splits from `data_args` (an `mm_hf.args.DataArguments`) and their label space.

    Sources per split: `--{split}_file` (CSV/TSV/JSON/JSONL; media paths relative to the file's folder or
    absolute) or `--dataset_name`. Without a validation split, `--train_val_split` of train is held out
    (stratified by class for single-label classification). `--max_*_samples` truncate, train after shuffling.

    Multi-task: `problem_type` a list with one problem type per label column; each column becomes a task with
    its own `labels_<column>` output column, and a dict column -> LabelSpace is returned.
    """
    tasks = task_outputs(columns, problem_type)
    hub = None
    if data_args.dataset_name:
        hub = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    raw = read_raw_splits(data_args, columns, cache_dir, ("train", "validation", "test"), hub)
    if "train" not in raw:
        raise DataError("no training data: pass --train_file or --dataset_name")
    splits, space = clean_and_encode(raw, columns, tasks, skip_bad)
    splits = hold_out_validation(splits, data_args, seed, stratify=problem_type == "single_label_classification")
    limits = {"train": "max_train_samples", "validation": "max_eval_samples", "test": "max_predict_samples"}
    for split, flag in limits.items():
        n = getattr(data_args, flag)
        if split in splits and n is not None:
            ds = splits[split].shuffle(seed=seed) if split == "train" else splits[split]
            splits[split] = ds.select(range(min(n, len(ds))))
    return splits, space


def task_outputs(columns: MultimodalColumns, problem_type: str | Sequence[str]) -> list[tuple[str, list[str], str]]:
    """(output column, label columns, problem type) per task: `labels` for one head, `labels_<column>` per head of
    a multi-task model; the columns and problem types checked first."""
    multi_task = not isinstance(problem_type, str)
    if multi_task and len(problem_type) != len(columns.labels):
        raise UserError(f"multi-task: one --problem_type per --label_column, got {problem_type} for {columns.labels}")
    for task_type in problem_type if multi_task else [problem_type]:
        _check_columns(columns, task_type)
    if not multi_task:
        return [("labels", columns.labels, problem_type)]
    return [(f"labels_{col}", [col], task_type) for col, task_type in zip(columns.labels, problem_type, strict=True)]


def read_raw_splits(data_args, columns: MultimodalColumns, cache_dir, names, hub=None) -> dict[str, tuple]:
    """split -> (its rows as read, with the used columns; its source in messages) for each of `names` that
    `--{split}_file` or the Hub dataset `hub` has."""
    raw = {}
    for split in names:
        if getattr(data_args, f"{split}_dir", None):
            raise DataError(f"--{split}_dir (class folders) does not apply to multimodal data; use --{split}_file")
        path = getattr(data_args, f"{split}_file")
        if path:
            raw[split] = (_read_file(path, split, columns, cache_dir), path)
        elif hub is not None and (name := hub_split_name(hub, split)):
            source = f"{data_args.dataset_name}[{name}]"
            raw[split] = (_select_hub_columns(hub[name], columns, source), source)
    return raw


def clean_and_encode(raw: dict, columns: MultimodalColumns, tasks: list, skip_bad: bool, reference=None):
    """`(splits, space)`: the `raw` splits with bad rows refused (or dropped with `skip_bad`), labels encoded per
    task, canonical column names. The label space comes from the training split, or from `reference` (a
    `(Dataset with the label columns, source)`: a streamed run's, `mm_hf.data.multimodal_stream`)."""
    kept, rows, sources = {}, {}, {}
    for split, (ds, source) in raw.items():
        if len(ds) == 0:
            raise DataError(f"the {split} split is empty: {source}")
        kept[split], rows[split] = _clean_inputs(ds, columns, source, skip_bad)
        sources[split] = source
        if len(kept[split]) == 0:
            raise DataError(f"the {split} split is empty after dropping bad rows: {source}")
    labelled = dict(kept)
    if reference is not None:
        labelled["train"], sources["train"] = reference
    encoded = {out: encode_labels(labelled, cols, pt, sources=sources, rows=rows) for out, cols, pt in tasks}

    splits = DatasetDict()
    for split, ds in kept.items():
        if columns.group:
            ds = ds.add_column(RANKING_GROUP_KEY, _group_codes(ds[columns.group], columns.group, sources[split]))
        ds = ds.remove_columns(columns.labels)
        for out, _, task_type in tasks:
            ds = ds.add_column(out, encoded[out][0][split])
            if task_type == "single_label_classification":
                ds = ds.cast_column(out, ClassLabel(names=encoded[out][1].names))
        ds = ds.rename_columns({s: t for s, t in columns.renames.items() if s != t})
        outputs = [out for out, _, _ in tasks] + ([RANKING_GROUP_KEY] if columns.group else [])
        splits[split] = ds.select_columns([*columns.renames.values(), *columns.numeric, *columns.categorical, *outputs])
    if len(tasks) == 1 and tasks[0][0] == "labels":
        return splits, encoded["labels"][1]
    return splits, {cols[0]: encoded[out][1] for out, cols, _ in tasks}


def check_media(
    splits: DatasetDict,
    modalities: Sequence[str],
    *,
    skip_bad: bool,
    num_proc: int | None = None,
    audio_sampling_rate: int | None = None,
) -> tuple[DatasetDict, dict[str, list]]:
    """Decode every image / audio clip / video of every split once, before training (missing ones are fine).

    Returns the splits (bad rows dropped with `skip_bad`) and split -> [(source, reason)] of what was dropped;
    without `skip_bad` the first bad file raises `BadSampleError` naming it. Audio is decoded at
    `audio_sampling_rate` (the feature extractor's), and so are videos' sound tracks when it is given.
    """
    checks = {"image": check_images, "audio": check_audio, "video": check_videos}
    skipped = {name: [] for name in splits}
    for modality in (m for m in modalities if m in checks):
        kwargs = {"sampling_rate": audio_sampling_rate} if modality != "image" else {}
        for name in list(splits):
            splits[name], bad = checks[modality](
                splits[name],
                modality,
                skip_bad=skip_bad,
                num_proc=num_proc,
                split_name=name,
                allow_missing=True,
                **kwargs,
            )
            skipped[name] += bad
    return splits, skipped


# ----------------------------------------------------------------------------------------------- reading


def _check_columns(columns: MultimodalColumns, problem_type: str) -> None:
    check_problem_type(problem_type)
    if not columns.modalities:
        raise UserError(
            "no input column given: set at least one of --image_column, --video_column, --text_column, --audio_column, "
            "--numeric_columns, --categorical_columns"
        )
    if not columns.labels:
        raise UserError("no label column given (--label_column)")
    if columns.group in columns.labels:
        raise UserError(
            f"--group_column {columns.group} is also a --label_column: group rows by a user/query id column"
        )
    used = [*columns.inputs, *columns.labels]
    repeated = sorted({c for c in used if used.count(c) > 1})
    if repeated:
        raise UserError(f"column(s) {repeated} used for more than one role (inputs and labels must differ)")
    outputs = [*columns.renames.values(), *columns.numeric, *columns.categorical, "labels"]
    clashes = sorted({c for c in outputs if outputs.count(c) > 1})
    if clashes:
        raise UserError(f"output column name(s) {clashes} would clash: rename the tabular column(s) in the data")


def _read_file(path: str, split: str, columns: MultimodalColumns, cache_dir) -> Dataset:
    ds = read_data_file(path, cache_dir, split)
    require_multimodal_columns(ds, columns, path)
    ds = ds.select_columns(columns.read)
    base = os.path.dirname(os.path.abspath(path))
    for modality in MEDIA_MODALITIES:  # relative to the file's folder, as in loading.py
        if col := getattr(columns, modality):
            values = [None if is_missing(v) else resolve_path(str(v).strip(), base) for v in ds[col]]
            ds = ds.remove_columns(col).add_column(col, values, feature=datasets.Value("string"))
    return ds.select_columns(columns.read)


def _select_hub_columns(ds: Dataset, columns: MultimodalColumns, source: str) -> Dataset:
    require_multimodal_columns(ds, columns, source)
    ds = ds.select_columns(columns.read)
    # Decode media ourselves (robust modes, errors naming the sample) instead of in the datasets library.
    for modality in MEDIA_MODALITIES:
        col = getattr(columns, modality)
        feature = ds.features[col] if col else None
        if isinstance(feature, (datasets.Image, datasets.Audio, datasets.Video)):
            ds = ds.cast_column(col, type(feature)(decode=False))
    return ds


def require_multimodal_columns(ds: Dataset, columns: MultimodalColumns, source: str) -> None:
    roles = dict(columns.renames)
    roles.update({c: "numeric" for c in columns.numeric} | {c: "categorical" for c in columns.categorical})
    roles.update({c: "label" for c in columns.labels})
    if columns.group:
        roles.setdefault(columns.group, "group")
    absent = {c: role for c, role in roles.items() if c not in ds.column_names}
    if absent:
        # The flag setting each role: --image_column ... --label_column, --numeric_columns, --categorical_columns.
        flags = dict.fromkeys(
            f"--{role}_column{'s' if role in ('numeric', 'categorical') else ''}" for role in absent.values()
        )
        raise DataError(
            f"{source}: missing column(s) {', '.join(f'{c!r} ({role})' for c, role in absent.items())}; available: "
            f"{', '.join(ds.column_names)}; pass the right name(s) with {' / '.join(flags)}"
        )


def _group_codes(values: list, column: str, source: str) -> list[int]:
    """Ranking group ids as ints (0, 1, ... in order of first appearance in the split): they travel as tensors."""
    missing = [i for i, value in enumerate(values) if is_missing(value)]
    if missing:
        raise DataError(
            f"{source}: --group_column {column!r} is empty in {len(missing)} row(s), e.g. row(s) "
            f"{missing[:MAX_LISTED]}: every ranked row needs its user/query id"
        )
    codes: dict = {}
    return [codes.setdefault(str(value), len(codes)) for value in values]


# ------------------------------------------------------------------------------------- missing modalities


def _media_cells(ds: Dataset, col: str) -> list[tuple]:
    """(path, has bytes) per row; undecoded Hub media are read as Arrow structs, keeping their bytes out of Python."""
    if not isinstance(ds.features[col], (datasets.Image, datasets.Audio, datasets.Video)):
        return [(v.get("path"), v.get("bytes") is not None) if isinstance(v, dict) else (v, False) for v in ds[col]]
    cells = ds.with_format("arrow")[col]
    valid = cells.is_valid().to_pylist()
    paths = pc.struct_field(cells, "path").to_pylist()
    has_bytes = pc.is_valid(pc.struct_field(cells, "bytes")).to_pylist()
    return [(p, b) if ok else (None, False) for ok, p, b in zip(valid, paths, has_bytes, strict=True)]


def _media_present(ds: Dataset, col: str) -> tuple[list[bool], list[tuple[int, str]]]:
    """(whether each row has this medium, [(row, path)] of local files that do not exist)."""
    present, absent = [], []
    for i, (path, has_bytes) in enumerate(_media_cells(ds, col)):
        if has_bytes:
            present.append(True)
        elif is_missing(path):
            present.append(False)
        else:
            present.append(True)
            if "://" not in path and not os.path.exists(path):
                absent.append((i, path))
    return present, absent


def _clean_inputs(ds: Dataset, columns: MultimodalColumns, source: str, skip_bad: bool) -> tuple[Dataset, list[int]]:
    """`ds` with missing text as None and bad rows dropped (or an error), and the original row of each kept row."""
    any_present = [False] * len(ds)
    problems = {}  # row -> why it is unusable
    for modality in MEDIA_MODALITIES:
        if col := getattr(columns, modality):
            present, absent = _media_present(ds, col)
            any_present = [a or p for a, p in zip(any_present, present, strict=True)]
            for i, path in absent:
                problems.setdefault(i, f"{modality} file not found: {path} (column {col!r})")
    if columns.text:
        texts = [None if is_missing(v) else str(v) for v in ds[columns.text]]
        any_present = [a or t is not None for a, t in zip(any_present, texts, strict=True)]
        ds = ds.remove_columns(columns.text).add_column(columns.text, texts, feature=datasets.Value("string"))
    for col in [*columns.numeric, *columns.categorical]:
        any_present = [a or not is_missing(v) for a, v in zip(any_present, ds[col], strict=True)]
    for i, present in enumerate(any_present):
        if not present:
            problems.setdefault(i, f"every input is missing ({', '.join(columns.inputs)})")
    ds = ds.select_columns(columns.read)
    if not problems:
        return ds, list(range(len(ds)))
    bad = sorted(problems)
    listed = "; ".join(f"row {i}: {problems[i]}" for i in bad[:MAX_LISTED])
    more = f"; ... ({len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
    if not skip_bad:
        raise DataError(f"{source}: {len(bad)} unusable row(s): {listed}{more}; fix them or pass --skip_bad_samples")
    logger.warning("%s: dropped %d of %d row(s): %s%s", source, len(bad), len(ds), listed, more)
    keep = [i for i in range(len(ds)) if i not in problems]
    return ds.select(keep), keep


__all__ = [
    "MODALITIES",
    "PROBLEM_TYPES",
    "RANKING_GROUP_KEY",
    "LabelSpace",
    "MultimodalColumns",
    "check_media",
    "encode_labels",
    "load_multimodal_splits",
]
