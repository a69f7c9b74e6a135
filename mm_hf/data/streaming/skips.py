"""Bad samples in a stream: judged as rows are read (`SkipBadRows`, inside the data workers), skipped and recorded
per worker (`SkipLog`), gathered from every worker and process at the end of training (`StreamSkips`), which stops
the run when more than `--max_bad_fraction` were bad. `StreamedSplit` is the training split the recipes hand the
Trainer: a stream decoded on the fly through `SkipBadRows`."""

import json
import logging
import os
import shutil
from collections.abc import Callable

from datasets import Dataset, IterableDataset
from transformers import TrainerCallback

from ...errors import DataError
from ..validation import BadSampleError

logger = logging.getLogger(__name__)

# Samples decoded together by the recipe's transform; its batch is cut again by the DataLoader.
DECODE_BATCH = 32
# A worker stops the run early only once the fraction of bad samples it saw rests on enough samples for
# --max_bad_fraction to mean something (10 / fraction: 1000 at the default 1 %); the end of training checks the
# whole stream's count in any case.
MIN_BAD_COUNT = 10


def describe_row(row: dict, column: str, index: int) -> str:
    """A row's name in messages: its file (inside its WebDataset shard), its shard and key, or its position."""
    value = row.get(column)
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    url = row.get("__url__")
    if path and url:
        return f"{os.path.basename(url)}:{path}"
    return str(path or (f"{os.path.basename(url)} sample {row.get('__key__')}" if url else f"training row {index}"))


class SkipLog:
    """Where the data workers of one process record what they read and skipped: one JSON-lines file per worker
    process under `folder` (workers are processes: nothing in their memory reaches the trainer). Picklable, so
    it travels into DataLoader workers inside the dataset. Each copy also stops its worker early when more than
    `max_bad_fraction` of what it read was bad, once that rests on `MIN_BAD_COUNT / max_bad_fraction` samples."""

    def __init__(self, folder: str, max_bad_fraction: float):
        self.folder, self.max_bad_fraction = folder, max_bad_fraction
        self.seen = self.bad = 0

    def record(self, seen: int, bad: list[tuple[str, str]]) -> None:
        with open(os.path.join(self.folder, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"seen": seen, "bad": bad}) + "\n")
        self.seen, self.bad = self.seen + seen, self.bad + len(bad)
        enough = self.seen >= (MIN_BAD_COUNT / self.max_bad_fraction if self.max_bad_fraction else 0)
        if bad and enough and self.bad > self.max_bad_fraction * self.seen:
            raise DataError(_too_many(self.bad, self.seen, self.max_bad_fraction, bad[:1], "so far in one data worker"))

    def read(self) -> tuple[int, list]:
        """(samples read, [(source, reason)] skipped) by every worker of this process so far."""
        seen, bad = 0, []
        for name in sorted(os.listdir(self.folder)):
            with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    seen += record["seen"]
                    bad += [tuple(pair) for pair in record["bad"]]
        return seen, bad


def _too_many(bad: int, seen: int, fraction: float, examples: list, where: str) -> str:
    listed = "; ".join(f"{source}: {reason}" for source, reason in examples[:5])
    return (
        f"{bad} of {seen} training samples read {where} were unusable ({bad / seen:.1%}), more than --max_bad_fraction "
        f"{fraction} allows; e.g. {listed}. Fix or remove them, or raise --max_bad_fraction"
    )


class SkipBadRows:
    """A batched `IterableDataset.map` function: raw rows -> `transform`'s model inputs, without the rows that
    `prepare` or `transform` find unusable (`BadSampleError`), which `log` records.

    `prepare(rows)` gives, per raw row, `(source, row for the transform)` or `(source, BadSampleError)`: what can
    be judged without decoding (labels, missing files, empty captions). The usable rows are transformed at once
    (so the transform pads the batch as one); only a batch holding a bad sample is retried row by row to find it.
    `empty`: the output of a batch without any usable row (its keys, each with no value)."""

    def __init__(self, transform: Callable, prepare: Callable, log: SkipLog, empty: dict):
        self.transform, self.prepare, self.log, self.empty = transform, prepare, log, empty

    def __call__(self, batch: dict) -> dict:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        bad, good = [], []
        for source, row in self.prepare(rows):
            if isinstance(row, BadSampleError):
                bad.append((source, row.reason))
            else:
                good.append((source, row))
        try:
            out = self._transform([row for _, row in good])
        except BadSampleError:
            usable = []
            for source, row in good:
                try:
                    self._transform([row])
                    usable.append((source, row))
                except BadSampleError as error:
                    bad.append((source, error.reason))
            out = self._transform([row for _, row in usable])
        self.log.record(len(rows), bad)
        return out

    def _transform(self, rows: list[dict]) -> dict:
        if not rows:
            return dict(self.empty)
        return self.transform({key: [r[key] for r in rows] for key in rows[0]})


class StreamedSplit:
    """The training split as a stream of undecoded rows (`stream`), its `features` (a classifier's: `labels` as
    a map-style split's ClassLabel) and the `SkipLog` its decoding records to.

    `with_transform(transform)` is what `Dataset.with_transform` is to a map-style split: the `IterableDataset`
    the Trainer reads, decoded on the fly by `transform`, with unusable samples skipped (`SkipBadRows`, rows
    judged first by `prepare`). `head(n)`: the first `n` usable rows of the (shuffled) stream, prepared but not
    decoded, as a map-style `Dataset`: what statistics are fitted on (tabular columns, encoder features)."""

    def __init__(self, stream: IterableDataset, prepare: Callable, log: SkipLog, empty: dict, features=None):
        self.stream, self.prepare, self.log, self.empty = stream, prepare, log, empty
        self.features = features
        self.head_check: Callable | None = None
        self._head = None

    def with_transform(self, transform: Callable) -> IterableDataset:
        skip = SkipBadRows(transform, self.prepare, self.log, self.empty)
        return self.stream.map(skip, batched=True, batch_size=DECODE_BATCH, remove_columns=self.stream.column_names)

    def head(self, n: int) -> Dataset:
        """Read on the first call; `head_check(head) -> head`, when set (e.g. dropping samples that do not
        decode), runs once on it."""
        if self._head is None:
            rows = []
            for batch in self.stream.iter(batch_size=DECODE_BATCH):
                raw = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
                rows += [row for _, row in self.prepare(raw) if not isinstance(row, BadSampleError)]
                if len(rows) >= n:
                    break
            if not rows:
                raise DataError("no usable training row in the stream: every row read was unusable")
            self._head = Dataset.from_list(rows[:n])
            self._head = self.head_check(self._head) if self.head_check is not None else self._head
        return self._head


class StreamSkips(dict, TrainerCallback):
    """split -> [(source, reason)] of the samples left out, as `check_splits` returns it: the validation and
    test splits' from their up-front check, the training stream's gathered from every worker and process at the
    end of training (`on_train_end`, on every process), which then stops the run if more than
    `max_bad_fraction` of the samples read were bad. `summary()`: what the processes read and skipped (a sample
    skipped in two passes through the stream is listed once)."""

    def __init__(self, log: SkipLog, checked: dict):
        super().__init__(checked)
        self.log, self.read_per_process, self.skipped_per_process = log, [], []

    def on_train_end(self, args, state, control, **kwargs):
        import torch.distributed as dist

        local = self.log.read()
        parts = [local]
        if dist.is_available() and dist.is_initialized():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
        shutil.rmtree(self.log.folder, ignore_errors=True)
        self.read_per_process = [seen for seen, _ in parts]
        self.skipped_per_process = [len(set(bad)) for _, bad in parts]
        seen, bad = sum(self.read_per_process), [pair for _, pairs in parts for pair in pairs]
        self["train"] = list(dict.fromkeys(bad))
        if bad and state.is_world_process_zero:
            logger.warning(
                "skipped %d unusable training samples (%d skips) of %d read, e.g. %s: %s",
                len(self["train"]), len(bad), seen, *bad[0],
            )  # fmt: skip
        if seen and len(bad) > self.log.max_bad_fraction * seen:
            raise DataError(_too_many(len(bad), seen, self.log.max_bad_fraction, self["train"], "from the stream"))

    def summary(self) -> dict:
        """For all_results.json: the training samples each process read (every pass) and the distinct ones it
        skipped; each process reads its own shards, so the skipped ones add up to `len(self["train"])`."""
        return {
            "train_samples_read": sum(self.read_per_process),
            "train_samples_read_per_process": self.read_per_process,
            "train_samples_skipped_per_process": self.skipped_per_process,
        }
