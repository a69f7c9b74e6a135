"""One pass of a frozen model over a dataset, done once: split across the processes, gathered, and kept on disk.

The passes (a linear probe's cached features, `mm_hf.features`; a fusion model's frozen encoder outputs,
`mm_hf.fusion_features`; retrieval embeddings, `mm_hf.retrieval`) all go through `shared_pass`:

- each process computes a contiguous shard of the rows (`shard_rows`) and the shards are gathered in order, so
  every process ends with the same arrays that one process alone would compute (N processes: ~1/N of the time);
- the main process shows a progress bar (tqdm, off with --disable_tqdm);
- with a cache folder (--features_cache_dir), the arrays are stored under a key made of what determines them:
  the weights and config of the modules that run (`model_fingerprint`), the data (`data_fingerprint`: the
  datasets fingerprint and the size and modification time of every file the rows name) and the preprocessing
  (`transform_fingerprint`). The next run with the same three (another probe solver, learning rate, head, fusion
  layer...) reads them instead of running the backbone; anything else that changes them is a new key.

An entry is a folder `<kind>-<key>/` holding one `.npy` per column and `meta.json` (what the key was made of, rows,
seconds the pass took), written to a temporary folder and renamed, so a run killed mid-write leaves no entry.

Size bound (--features_cache_max_gb, else MM_HF_FEATURES_CACHE_MAX_GB, else none): after writing an entry, the
main process removes the least recently used entries (the modification time of `meta.json`, renewed by every read)
until the folder is under the bound. Safe with concurrent runs and ranks: one run evicts at a time (a lock file in
the folder); an entry this run has read or written is never evicted by it; an entry goes by one atomic rename
before it is deleted, so another run reads it whole or not at all, and one that finds it gone computes the pass
again. The folder is listed, trimmed and cleared with `python -m mm_hf.feature_cache ls|trim|clear DIR`.
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
import xxhash
from tqdm.auto import tqdm

from .errors import UserError

logger = logging.getLogger(__name__)

# Bump when what a pass computes changes for the same model, data and transform, so old entries stop matching.
CACHE_FORMAT = 1
# Config entries that name or label a model without changing what its towers compute.
_CONFIG_NOISE = ("id2label", "label2id", "_name_or_path", "transformers_version", "architectures", "auto_map")


def process_group() -> tuple[int, int]:
    """(rank, world size) of the default torch.distributed group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_rows(num_rows: int, rank: int, world_size: int) -> range:
    """The contiguous block of `num_rows` that process `rank` of `world_size` computes; blocks differ by at most
    one row and, concatenated in rank order, give back range(num_rows) (as `Dataset.shard(contiguous=True)`)."""
    size, extra = divmod(num_rows, world_size)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def progress(iterable, *, desc: str, total: int | None = None, enabled: bool = True):
    """`iterable` with a tqdm bar on the main process (when `enabled`), plain elsewhere."""
    return tqdm(iterable, desc=desc, total=total, unit="batch", disable=not enabled or process_group()[0] != 0)


def gather_rows(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's `columns` (its shard's rows) concatenated in rank order, on every process. A process with no
    rows (more processes than rows) passes {}."""
    rank, world = process_group()
    if world == 1:
        return columns
    parts: list = [None] * world
    dist.all_gather_object(parts, columns)  # pickled through the group's backend (gloo on CPU, NCCL on GPUs)
    parts = [p for p in parts if p]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}


# ---- fingerprints: what determines a pass's result ----


def _hash_tensor(hasher, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
    hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().data)


def config_fingerprint(config) -> dict:
    """A model config as a dict without its names and label maps (they change no output)."""
    if config is None:
        return {}
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in values.items() if k not in _CONFIG_NOISE}


def model_fingerprint(module: torch.nn.Module, exclude: tuple[str, ...] = (), config=None) -> str:
    """A hash of `module`'s class, every tensor of its state dict (name, dtype, shape, bytes) except those under
    `exclude` (e.g. the head a probe trains) and `config` (default: the module's own config, labels left out).

    Hashing reads every weight once (xxh3: ~2 s for 1 GB on one core), small next to the pass it saves.
    """
    hasher = xxhash.xxh3_128()
    hasher.update(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        if not any(name == prefix or name.startswith(prefix + ".") for prefix in exclude):
            _hash_tensor(hasher, name, tensor)
    config = getattr(module, "config", None) if config is None else config
    hasher.update(json.dumps(config_fingerprint(config), sort_keys=True, default=str).encode())
    return hasher.hexdigest()


def data_fingerprint(dataset) -> str:
    """The dataset's own fingerprint (its source and every transformation since), plus the size and modification
    time of each file its string columns name, so a file rewritten in place under the same name is a new key."""
    hasher = xxhash.xxh3_128()
    hasher.update(str(getattr(dataset, "_fingerprint", None)).encode())
    hasher.update(str(len(dataset)).encode())
    for column, feature in dataset.features.items():
        if getattr(feature, "dtype", None) != "string" or not len(dataset):
            continue
        values = dataset[column]
        if not (isinstance(values[0], str) and os.path.isfile(values[0])):
            continue  # text, not paths
        for path in values:
            try:
                stat = os.stat(path)
                hasher.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            except OSError:
                hasher.update(f"{path}|missing\n".encode())
    return hasher.hexdigest()


def transform_fingerprint(transform) -> str | None:
    """A hash of the preprocessing object (its class and settings, e.g. the image processor's size and
    normalisation, a tokenizer's vocabulary, --max_seq_length) by datasets' own Hasher; None when it cannot be
    hashed (then nothing is cached)."""
    from datasets.fingerprint import Hasher

    try:
        return Hasher.hash(transform)
    except Exception as error:  # an object dill cannot pickle: run the pass, cache nothing
        logger.warning("features are not cached: the preprocessing %s cannot be fingerprinted (%s)", transform, error)
        return None


# ---- the pass ----


def _entry(cache_dir: str, kind: str, key: dict) -> str:
    digest = xxhash.xxh3_128(json.dumps({**key, "format": CACHE_FORMAT}, sort_keys=True).encode()).hexdigest()
    return os.path.join(cache_dir, f"{kind}-{digest}")


def _everywhere(flag: bool) -> bool:
    """Whether `flag` holds on every process: all of them take the same branch, or a collective would hang."""
    _, world = process_group()
    if world == 1:
        return flag
    flags: list = [None] * world
    dist.all_gather_object(flags, flag)
    return all(flags)


def _read(path: str) -> dict[str, np.ndarray] | None:
    """The entry's arrays, or None when it is gone (evicted by another run between the check and the read)."""
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        return {name: np.load(os.path.join(path, f"{name}.npy")) for name in meta["columns"]}
    except FileNotFoundError:
        return None


def _write(path: str, columns: dict[str, np.ndarray], meta: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, values in columns.items():
        np.save(os.path.join(tmp, f"{name}.npy"), values)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({**meta, "columns": sorted(columns)}, f, indent=2, sort_keys=True, default=str)
    try:
        os.replace(tmp, path)  # atomic: a reader sees no entry or a whole one
    except OSError:  # another run wrote the same entry first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)


def shared_pass(
    num_rows: int,
    compute: Callable[[range], dict[str, np.ndarray]],
    *,
    desc: str,
    cache_dir: str | None = None,
    kind: str = "features",
    key: dict | None = None,
) -> dict[str, np.ndarray]:
    """The arrays `compute(rows)` gives for `range(num_rows)`, computed once across the processes.

    `compute` receives this process's block of rows (`shard_rows`) and returns {column: array with one row per
    row of the block}; the blocks are gathered in order on every process. With `cache_dir` and a `key` (a dict of
    fingerprints, None when one could not be made), an entry with that key is read instead, when every process
    sees it; otherwise the main process writes the result there. Call on every process.
    """
    path = _entry(cache_dir, kind, key) if cache_dir and key is not None and None not in key.values() else None
    # Asked on every process, also those without a key: all must take the same branch (the pass is a collective).
    rank, world = process_group()
    if _everywhere(path is not None and os.path.isfile(os.path.join(path, "meta.json"))):
        columns = _read(path)
        rows = {len(v) for v in columns.values()} if columns is not None else None
        if _everywhere(rows == {num_rows}):
            _in_use.add(path)
            if rank == 0:
                _mark_used(path)
            logger.info("%s: read from the features cache %s", desc, path)
            return columns
        if columns is None:
            logger.warning("%s: the cached entry %s was evicted by another run; computing again", desc, path)
        else:
            logger.warning("%s: the cached entry %s holds %s rows, not %d; computing again", desc, path, rows, num_rows)
    start = time.perf_counter()
    rows = shard_rows(num_rows, rank, world)
    columns = gather_rows(compute(rows) if len(rows) else {})
    seconds = time.perf_counter() - start
    logger.info("%s: %d rows in %.1f s on %d process(es)", desc, num_rows, seconds, world)
    if path is not None and rank == 0:
        os.makedirs(cache_dir, exist_ok=True)
        _write(path, columns, {"key": key, "rows": num_rows, "seconds": seconds, "processes": world, "desc": desc})
        _in_use.add(path)
        logger.info("%s: cached in %s", desc, path)
        if _max_bytes() is not None:
            _bound(cache_dir, _max_bytes())
    return columns


# ---- size bound: least recently used entries evicted ----

MAX_GB_ENV = "MM_HF_FEATURES_CACHE_MAX_GB"
_STALE_SECONDS = 24 * 3600  # a temporary folder this old was left by a killed run
_settings: dict = {"max_gb": None}
_in_use: set[str] = set()  # entries this run read or wrote: it never evicts them


def configure_cache(cache_dir: str | None, max_gb: float | None) -> None:
    """Start of a run (`mm_hf.run.start_run`): the bound of --features_cache_max_gb (None: MM_HF_FEATURES_CACHE_MAX_GB,
    else no bound) for the entries this process writes; the entries an earlier run in this process used are no
    longer protected."""
    if max_gb is not None:
        if not cache_dir:
            raise UserError("--features_cache_max_gb bounds the folder of --features_cache_dir: add it")
        if max_gb <= 0:
            raise UserError(f"--features_cache_max_gb must be positive; got {max_gb}")
    _settings["max_gb"] = max_gb
    _in_use.clear()


def _max_bytes() -> int | None:
    max_gb = _settings["max_gb"]
    if max_gb is None and os.environ.get(MAX_GB_ENV):
        try:
            max_gb = float(os.environ[MAX_GB_ENV])
        except ValueError:
            raise UserError(f"{MAX_GB_ENV} must be a number of GB; got {os.environ[MAX_GB_ENV]!r}") from None
    return None if max_gb is None else int(max_gb * 1e9)


def _mark_used(path: str) -> None:
    try:
        os.utime(os.path.join(path, "meta.json"))  # the recency eviction goes by
    except OSError:  # a read-only cache: nothing is evicted there by this run anyway
        pass


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    path: str
    size: int  # bytes
    last_used: float  # seconds since the epoch
    meta: dict


def cache_entries(cache_dir: str) -> list[CacheEntry]:
    """The complete entries of `cache_dir`, least recently used first (folders being written or evicted skipped)."""
    found = []
    for name in os.listdir(cache_dir) if os.path.isdir(cache_dir) else ():
        path = os.path.join(cache_dir, name)
        if ".tmp-" in name or ".evicted-" in name:
            continue
        try:
            with open(os.path.join(path, "meta.json")) as f:
                meta = json.load(f)
            last_used = os.stat(os.path.join(path, "meta.json")).st_mtime
            size = sum(f.stat().st_size for f in os.scandir(path) if f.is_file())
        except (OSError, ValueError):  # not an entry, or evicted by another run while listed
            continue
        found.append(CacheEntry(path, size, last_used, meta))
    return sorted(found, key=lambda e: e.last_used)


@contextlib.contextmanager
def _locked(cache_dir: str):
    """One evicting process at a time across runs (an exclusive lock on `cache_dir/.lock`)."""
    import fcntl  # POSIX only, as the runs that share a cache are

    with open(os.path.join(cache_dir, ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove(path: str) -> bool:
    """Remove an entry: renamed away first (atomic: a reader sees it whole or not at all), then deleted."""
    gone = f"{path}.evicted-{os.getpid()}"
    try:
        os.rename(path, gone)
    except OSError:  # another run removed it first
        return False
    shutil.rmtree(gone, ignore_errors=True)
    return True


def evict(cache_dir: str, max_bytes: int, keep=frozenset()) -> tuple[list[CacheEntry], int]:
    """Remove the least recently used entries of `cache_dir` except those in `keep` until its entries total at most
    `max_bytes` (and temporary folders of runs killed a day ago or more). Returns (removed entries, bytes left)."""
    removed = []
    with _locked(cache_dir):
        for name in os.listdir(cache_dir):
            path = os.path.join(cache_dir, name)
            if (".tmp-" in name or ".evicted-" in name) and time.time() - os.path.getmtime(path) > _STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        found = cache_entries(cache_dir)
        total = sum(e.size for e in found)
        for entry in found:
            if total <= max_bytes:
                break
            if entry.path not in keep and _remove(entry.path):
                total -= entry.size
                removed.append(entry)
    return removed, total


def _bound(cache_dir: str, max_bytes: int) -> None:
    removed, total = evict(cache_dir, max_bytes, keep=_in_use)
    if removed:
        logger.info("features cache %s: evicted %d least recently used entries (%.1f MB) to stay under %.2f GB",
                    cache_dir, len(removed), sum(e.size for e in removed) / 1e6, max_bytes / 1e9)  # fmt: skip
    if total > max_bytes:
        logger.warning("features cache %s holds %.2f GB, over its %.2f GB bound: the rest is in use by this run",
                       cache_dir, total / 1e9, max_bytes / 1e9)  # fmt: skip


# ---- python -m mm_hf.feature_cache ls|trim|clear DIR ----


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mm_hf.feature_cache", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["ls", "trim", "clear"],
                        help="ls: the entries, least recently used first; trim: evict those down to --max_gb; "
                        "clear: remove every entry")  # fmt: skip
    parser.add_argument("cache_dir", help="the folder given to --features_cache_dir")
    parser.add_argument("--max_gb", type=float, help="trim: the size to trim the folder to")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.cache_dir):
        parser.error(f"{args.cache_dir} is not a folder")
    if args.command == "ls":
        found = cache_entries(args.cache_dir)
        print(f"{'last used':19}  {'MB':>9}  {'rows':>8}  {'kind':8}  pass")
        for e in found:
            used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.last_used))
            kind = os.path.basename(e.path).split("-")[0]
            print(f"{used}  {e.size / 1e6:9.1f}  {e.meta.get('rows', '?'):>8}  {kind:8}  {e.meta.get('desc', '')}")
        print(f"{len(found)} entries, {sum(e.size for e in found) / 1e9:.3f} GB in {args.cache_dir}")
        return
    if args.command == "trim" and (args.max_gb is None or args.max_gb < 0):
        parser.error("trim needs --max_gb, a size in GB (0 or more)")
    max_bytes = 0 if args.command == "clear" else int(args.max_gb * 1e9)
    removed, total = evict(args.cache_dir, max_bytes)
    print(f"removed {len(removed)} entries ({sum(e.size for e in removed) / 1e9:.3f} GB); {total / 1e9:.3f} GB left")


if __name__ == "__main__":
    sys.exit(main())
