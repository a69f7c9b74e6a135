"""Loading labelled splits from the Hub, class folders, or CSV/JSONL files, with errors that name the source.

Every loader returns a `DatasetDict` with exactly two columns: the input column (file paths, or
undecoded `{"bytes", "path"}` dicts for Hub media) and `labels` (a `ClassLabel` whose names come from
the training split), so recipes never see the differences between sources.
"""

import logging
import math
import os
from collections import Counter

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from ..errors import DataError, UserError

logger = logging.getLogger(__name__)

VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")


def load_classification_splits(
    data_args, input_column: str, label_column: str, cache_dir=None, seed: int = 42, input_flag: str | None = None
):
    """train/validation/test splits from `data_args` (an `mm_hf.args.DataArguments`).

    Sources per split: `--{split}_dir`, `--{split}_file`, or `--dataset_name`. Without a validation
    split, `--train_val_split` of train is held out (stratified by label). Eval/test labels must occur
    in train, which must hold at least two classes. The recipes evaluate before and after training, so a
    validation or test split is required. `input_flag` is the running recipe's flag for `input_column`
    (`--image_column`, `--audio_column`): a missing column's error names it, as it names `--label_column`.
    """
    flags = {input_column: input_flag, label_column: "--label_column"}
    raw = {}
    hub = None
    if data_args.dataset_name:
        hub = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    for split in ("train", "validation", "test"):
        folder = getattr(data_args, f"{split}_dir")
        path = getattr(data_args, f"{split}_file")
        if folder and path:
            raise DataError(f"give either --{split}_dir or --{split}_file, not both")
        if folder:
            raw[split] = (read_class_folder(folder, input_column, label_column), folder)
        elif path:
            raw[split] = (read_table(path, input_column, label_column, cache_dir, flags), path)
        elif hub is not None and (name := hub_split_name(hub, split)):
            ds = select_hub_columns(hub[name], input_column, label_column, data_args.dataset_name, flags)
            raw[split] = (ds, f"{data_args.dataset_name}[{name}]")
    if "train" not in raw:
        raise DataError("no training data: pass --train_dir, --train_file or --dataset_name")
    for split, (ds, source) in raw.items():
        if len(ds) == 0:
            raise DataError(f"the {split} split is empty: {source}")

    names = _label_names(raw["train"][0], label_column)
    texts = {split: _label_texts(ds, label_column, source) for split, (ds, source) in raw.items()}
    seen = set(texts["train"])
    if len(seen) < 2:
        raise DataError(f"{raw['train'][1]}: {_single_class_hint(seen, raw['train'][1], data_args, label_column)}")
    absent = [n for n in names if n not in seen]
    if absent:  # ClassLabel names can list classes the training data lacks: they get no training signal
        logger.warning("classes with no training examples: %s", absent[:10])
    for split, (_, source) in raw.items():
        unseen = sorted(set(texts[split]) - seen)
        if unseen:
            raise DataError(f"{source}: label(s) {unseen[:10]} in the {split} split never occur in the training data")
    index = {name: i for i, name in enumerate(names)}
    splits = DatasetDict()
    for split, (ds, _) in raw.items():
        ds = ds.remove_columns(label_column).add_column("labels", [index[v] for v in texts[split]])
        splits[split] = ds.cast_column("labels", ClassLabel(names=names))
    splits = hold_out_validation(splits, data_args, seed, stratify=True)
    require_evaluation_split(splits)
    limits = {"train": "max_train_samples", "validation": "max_eval_samples", "test": "max_predict_samples"}
    for split, flag in limits.items():
        n = getattr(data_args, flag)
        if split in splits and n is not None:
            ds = splits[split].shuffle(seed=seed) if split == "train" else splits[split]
            splits[split] = ds.select(range(min(n, len(ds))))
    return splits


def read_labelled_split(
    path: str | None,
    input_column: str,
    label_column: str,
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "test",
    cache_dir=None,
    input_flag: str | None = None,
) -> tuple[Dataset, list[str], str]:
    """One labelled split on its own, without a training split (evaluation of saved models).

    `path` is a class folder or a CSV/JSONL file; without it, split `split` of the Hub dataset `dataset_name`.
    Returns `(dataset with only input_column, label name per row, source description)`; errors name the source.
    """
    flags = {input_column: input_flag, label_column: "--label_column"}
    if path and os.path.isdir(path):
        ds, source = read_class_folder(path, input_column, label_column), path
    elif path:
        ds, source = read_table(path, input_column, label_column, cache_dir, flags), path
    elif dataset_name:
        hub = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        if split not in hub:
            raise DataError(f"{dataset_name} has no {split!r} split; its splits are {sorted(hub)}")
        ds = select_hub_columns(hub[split], input_column, label_column, dataset_name, flags)
        source = f"{dataset_name}[{split}]"
    else:
        raise DataError("no data: pass a folder, a CSV/JSONL file or --dataset_name")
    if len(ds) == 0:
        raise DataError(f"the {split} split is empty: {source}")
    texts = _label_texts(ds, label_column, source)
    return ds.remove_columns(label_column), texts, source


def hold_out_validation(splits: DatasetDict, data_args, seed: int, stratify: bool) -> DatasetDict:
    """Without a validation split, hold out `--train_val_split` of train as one.

    With `stratify`, the split is stratified by the `labels` ClassLabel when every class fits on both sides,
    and drawn at random with a warning otherwise (`--train_val_split` is honoured either way).
    """
    fraction = data_args.train_val_split
    if "validation" in splits or not fraction:
        return splits
    flag = f"--train_val_split {fraction}"
    if not 0 < fraction < 1:
        raise UserError(f"{flag}: the fraction of the training data held out for validation must be between 0 and 1")
    train = splits["train"]
    n_validation = math.ceil(fraction * len(train))  # as Dataset.train_test_split counts them
    n_train = len(train) - n_validation
    if n_train < 1:
        raise DataError(
            f"{flag} holds out all {len(train)} training rows, leaving none to train on: lower it, or pass a "
            "validation split (--validation_dir / --validation_file)"
        )
    column = _stratify_column(train, n_train, n_validation, flag) if stratify else None
    parts = train.train_test_split(test_size=float(fraction), seed=seed, stratify_by_column=column)
    splits["train"], splits["validation"] = parts["train"], parts["test"]
    return splits


def require_evaluation_split(splits) -> None:
    """Refuse splits without a validation or test split: the recipes evaluate before and after training."""
    if "validation" not in splits and "test" not in splits:
        raise DataError(
            "nothing to evaluate on: there is no validation or test split, and --train_val_split 0 holds none out of "
            "the training data. The recipe evaluates the model before and after training: pass a validation or test "
            "split (--validation_dir / --validation_file / --test_dir / --test_file), or hold out part of the "
            "training data with --train_val_split 0.15"
        )


def _single_class_hint(seen: set, source: str, data_args, label_column: str) -> str:
    found = f"the training data holds a single class ({next(iter(seen))!r})" if seen else "no classes"
    if data_args.train_dir and source == data_args.train_dir:
        fix = f"put each class in its own sub-folder: {source}/<class name>/<file>"
    else:
        fix = f"check that --label_column {label_column} is the column holding the classes"
    return f"{found}; a classifier needs at least two classes: {fix}"


def dataset_display_name(data_args) -> str:
    """How a card names the data: the Hub id, or the local folder/file holding the training split."""
    if data_args.dataset_name and not (data_args.train_dir or data_args.train_file):
        return data_args.dataset_name
    path = os.path.normpath(data_args.train_dir or data_args.train_file)
    # data/train -> data: the split folder's name says nothing about the dataset.
    return os.path.dirname(path) if os.path.basename(path) in ("train", "training") and data_args.train_dir else path


def read_class_folder(folder: str, input_column: str, label_column: str) -> Dataset:
    if not os.path.isdir(folder):
        raise DataError(f"folder not found: {folder}")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class sub-folders (expected {folder}/<class name>/<file>)")
    paths, labels = [], []
    for name in classes:
        for root, dirs, files in os.walk(os.path.join(folder, name)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if not f.startswith("."):  # .DS_Store and friends
                    paths.append(os.path.abspath(os.path.join(root, f)))
                    labels.append(name)
    return Dataset.from_dict({input_column: paths, label_column: labels})


def read_data_file(path: str, cache_dir=None, split: str = "train") -> Dataset:
    """A CSV/TSV/JSON/JSONL file as a Dataset; errors name the file (and an empty file as an empty `split`)."""
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    builder = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}.get(ext)
    if builder is None:
        raise DataError(f"{path}: unsupported file type {ext!r} (use .csv, .tsv, .json or .jsonl)")
    kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
    # Checked first: the datasets library reports a Latin-1 file (a spreadsheet's default "CSV") with neither
    # the encoding nor the line, after logging pandas' error twice.
    if undecodable := _first_non_utf8_line(path):
        number, line = undecodable
        name, stem = os.path.basename(path), os.path.splitext(os.path.basename(path))[0]
        raise DataError(
            f"{path} is not UTF-8 text: line {number} holds byte(s) that are not UTF-8 (read as Latin-1: "
            f"{line.decode('latin-1').strip()[:80]!r}). Save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 "
            f'{name} > {stem}.utf8{ext}` (or a spreadsheet\'s "CSV UTF-8"), and pass that file'
        )
    try:
        return datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir, **kwargs)
    except Exception as e:  # pyarrow/pandas parse errors do not say which file
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = sum(1 for line in f if line.strip())
        if lines <= (1 if builder == "csv" else 0):  # the datasets library fails on these with cryptic errors
            raise DataError(f"the {split} split is empty: {path}") from e
        raise DataError(f"{path}: cannot parse as {builder.upper()}: {_root_cause(e)}") from e


def _first_non_utf8_line(path: str) -> tuple[int, bytes] | None:
    """(line number from 1, raw line) of the first line that is not UTF-8, or None."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):  # a UTF-8 character never holds a newline byte
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number, line
    return None


def _root_cause(error: BaseException) -> str:
    """The innermost exception's message: the datasets library wraps the pandas/pyarrow one that names the line."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}"


def read_table(path: str, input_column: str, label_column: str, cache_dir, flags: dict | None = None) -> Dataset:
    ds = read_data_file(path, cache_dir)
    require_columns(ds, (input_column, label_column), path, flags)
    base = os.path.dirname(os.path.abspath(path))

    def resolve(batch):
        batch[input_column] = [resolve_path(p, base) for p in batch[input_column]]
        return batch

    ds = ds.select_columns([input_column, label_column])
    return ds.map(resolve, batched=True, desc=f"resolving paths in {os.path.basename(path)}")


def resolve_path(value, base: str):
    """A relative local path in a CSV/JSONL file, made absolute against the file's folder `base`; else as is."""
    if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value:
        return os.path.join(base, value)
    return value


def hub_split_name(hub: DatasetDict, split: str) -> str | None:
    candidates = VALIDATION_SPLIT_NAMES if split == "validation" else (split,)
    return next((name for name in candidates if name in hub), None)


def select_hub_columns(ds: Dataset, input_column: str, label_column: str, source: str, flags=None) -> Dataset:
    require_columns(ds, (input_column, label_column), source, flags)
    ds = ds.select_columns([input_column, label_column])
    # Decode media ourselves (robust modes, errors naming the sample) instead of in the datasets library.
    feature = ds.features[input_column]
    if isinstance(feature, (datasets.Image, datasets.Audio)):
        ds = ds.cast_column(input_column, type(feature)(decode=False))
    return ds


def require_columns(ds: Dataset, columns, source: str, flags: dict | None = None) -> None:
    """Refuse `ds` without every one of `columns`; `flags` (column -> the recipe's flag naming it) says what to set."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        fixes = [flag for c in missing if (flag := (flags or {}).get(c))]
        fix = f"; pass the right name(s) with {' / '.join(fixes)}" if fixes else ""
        raise DataError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; available: {', '.join(ds.column_names)}"
            + fix
        )


def _label_names(train: Dataset, label_column: str) -> list[str]:
    feature = train.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = {v for v in train[label_column] if v is not None}
    if all(isinstance(v, int) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted(str(v) for v in values)


def _label_texts(ds: Dataset, label_column: str, source: str) -> list[str]:
    feature = ds.features[label_column]
    if isinstance(feature, ClassLabel):
        values = [None if v is None or v < 0 else feature.names[v] for v in ds[label_column]]
    else:
        values = [None if v is None else str(v) for v in ds[label_column]]
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} row(s) without a label in column {label_column!r} (first: row {missing[0]})"
        )
    return values


def _stratify_column(train: Dataset, n_train: int, n_validation: int, flag: str) -> str | None:
    """ "labels" when a stratified split can hold every class on both sides; else None (random split), with a warning."""
    counts = Counter(train["labels"])
    names = train.features["labels"].names
    if min(counts.values()) < 2:
        single = [names[label] for label, n in counts.items() if n == 1]
        logger.warning(
            "%s: the validation split is drawn at random, not stratified by class: class(es) %s have a single "
            "training example",
            flag,
            single[:5],
        )
        return None
    if min(n_train, n_validation) < len(counts):
        # ceil(f * n) >= k for f >= k / n: the smallest fraction (2 decimals) leaving room for every class.
        enough = math.ceil(100 * len(counts) / len(train)) / 100
        fix = (
            f"pass --train_val_split {enough} or more, or a validation split"
            if len(train) - math.ceil(enough * len(train)) >= len(counts)
            else "pass a validation split"
        )
        logger.warning(
            "%s holds out %d of %d training rows, fewer than the %d classes: the validation split is drawn at random, "
            "not stratified by class, so some classes are missing from it. For a stratified split %s "
            "(--validation_dir / --validation_file).",
            flag,
            n_validation,
            len(train),
            len(counts),
            fix,
        )
        return None
    return "labels"
