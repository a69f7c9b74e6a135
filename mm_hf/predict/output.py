"""The predictions file (JSONL or CSV), written chunk by chunk so an interrupted run resumes where it stopped.

Each chunk is serialised in memory and appended with one `write` on an O_APPEND descriptor, then fsync'ed: after a
crash the file holds whole chunks plus at most one torn last line, which `done_ids` cuts off before resuming (its
rows are predicted again). So the rows on disk are always complete, and a resumed run appends only the samples whose
id is not there yet: the same file as one uninterrupted pass.

Next to the output, `<output>.predict.json` records the checkpoint, the columns and the flags that change predictions;
resuming with another checkpoint or other flags (--top_k, --labels, --keep_columns, ...) is refused instead of mixing two runs' rows in one file.
"""

from __future__ import annotations

import csv
import io
import json
import os

from ..errors import UserError

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}


def output_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UserError(f"--output {path}: unsupported extension {ext!r}; use .jsonl or .csv")
    return FORMATS[ext]


def flatten(row: dict) -> dict:
    """A row as CSV cells: `top_k` -> label_1, score_1, ...; dicts -> `key.sub`; lists -> JSON."""
    flat = {}
    for key, value in row.items():
        if key.endswith("top_k") and isinstance(value, list):
            prefix = key[: -len("top_k")]
            for rank, entry in enumerate(value, 1):
                flat[f"{prefix}label_{rank}"], flat[f"{prefix}score_{rank}"] = entry["label"], entry["score"]
        elif isinstance(value, dict):
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        elif isinstance(value, list):
            flat[key] = json.dumps(value)
        else:
            flat[key] = value  # None: an empty cell (an error row's `top_k` too, as no column holds it)
    return flat


class PredictionWriter:
    def __init__(self, path: str, template: dict, checkpoint: str, settings: dict, record: bool = True):
        """`template`: a complete row (every key, values of the right shape) fixing the columns; `settings`: the flags
        that change predictions (a resumed run must have the same); `record`: write `<path>.predict.json`."""
        self.template, self.record = template, record
        self.path, self.format = path, output_format(path)
        self.columns = list(flatten(template)) if self.format == "csv" else list(template)
        self.meta_path = path + ".predict.json"
        self.meta = {"checkpoint": checkpoint, "columns": self.columns, "settings": settings}

    def done_ids(self) -> set[str]:
        """Ids of the rows already in the output (after cutting a torn last line); refuses another run's file."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return set()
        if os.path.exists(self.meta_path):
            with open(self.meta_path) as f:
                meta = json.load(f)
            if meta != self.meta:
                changed = [k for k in self.meta if meta.get(k) != self.meta[k]]
                raise UserError(
                    f"--output {self.path} holds predictions of another run ({', '.join(changed)} differ: "
                    f"{meta.get('checkpoint')}, {meta.get('settings')}); resume with the same checkpoint and flags, "
                    "or write to another file"
                )
        self._cut_torn_line()
        with open(self.path, newline="", encoding="utf-8") as f:
            if self.format == "csv":
                reader = csv.DictReader(f)
                if reader.fieldnames != self.columns:
                    raise UserError(f"--output {self.path}: its columns {reader.fieldnames} are not this run's "
                                    f"{self.columns}; write to another file")  # fmt: skip
                return {row["id"] for row in reader}
            ids = set()
            for number, line in enumerate(f, 1):
                try:
                    ids.add(str(json.loads(line)["id"]))
                except (ValueError, KeyError) as error:
                    raise UserError(f"--output {self.path} line {number} is not a prediction row ({error}); "
                                    "write to another file") from error  # fmt: skip
            return ids

    def _cut_torn_line(self) -> None:
        with open(self.path, "rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            f.truncate(data.rfind(b"\n") + 1)  # 0 when not even a first line (header) was whole

    def append(self, rows: list[dict]) -> None:
        """Append `rows` as one write, then fsync (see the module doc)."""
        buffer = io.StringIO(newline="")
        fresh = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        if fresh:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
        if fresh and self.record:
            with open(self.meta_path, "w") as f:
                json.dump(self.meta, f, indent=2)
        if self.format == "csv":
            writer = csv.DictWriter(buffer, self.columns, restval="", extrasaction="ignore", lineterminator="\n")
            if fresh:
                writer.writeheader()
            writer.writerows(flatten(row) for row in rows)
        else:
            buffer.writelines(json.dumps(row, default=str) + "\n" for row in rows)
        self._write(buffer.getvalue().encode("utf-8"))

    def _write(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- accelerate launch: one part file per process
    def part_path(self, rank: int, world_size: int) -> str:
        root, ext = os.path.splitext(self.path)
        return f"{root}.part-{rank:05d}-of-{world_size:05d}{ext}"

    def part(self, rank: int, world_size: int) -> PredictionWriter:
        """The writer of process `rank`'s part file (same format, no .predict.json), emptied for a fresh shard."""
        part = PredictionWriter(self.part_path(rank, world_size), self.template, "", {}, record=False)
        part.meta = self.meta
        if os.path.exists(part.path):
            os.remove(part.path)
        return part

    def leftover_parts(self) -> list[str]:
        root, ext = os.path.splitext(self.path)
        folder, stem = os.path.split(root)
        prefix = os.path.basename(stem) + ".part-"
        names = sorted(n for n in os.listdir(folder or ".") if n.startswith(prefix) and n.endswith(ext))
        return [os.path.join(folder, name) for name in names]

    def merge(self, parts: list[str]) -> None:
        """Append the rows of each part file (in the given order) that the output lacks, then delete the part.

        Rows are matched by id, so a merge interrupted between appending a part and deleting it never duplicates."""
        for path in parts:
            if not os.path.exists(path):
                continue
            part = PredictionWriter(path, self.template, "", {}, record=False)
            part.meta, part.columns = self.meta, self.columns
            rows = part.rows()
            done = self.done_ids()
            fresh = [row for row in rows if str(row["id"]) not in done]
            if fresh or not os.path.exists(self.path):
                self.append(fresh)
            os.remove(path)

    def rows(self) -> list[dict]:
        """The rows of the file (after cutting a torn last line): dicts as written (CSV: cells as strings)."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return []
        self._cut_torn_line()
        with open(self.path, newline="", encoding="utf-8") as f:
            if self.format == "csv":
                return list(csv.DictReader(f))
            return [json.loads(line) for line in f]
