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
Entries are never evicted: delete the folder to reclaim the space.
"""

import json
import logging
import os
import shutil
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
import xxhash
from tqdm.auto import tqdm

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


def _read(path: str) -> dict[str, np.ndarray]:
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    return {name: np.load(os.path.join(path, f"{name}.npy")) for name in meta["columns"]}


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
    if _everywhere(path is not None and os.path.isfile(os.path.join(path, "meta.json"))):
        columns = _read(path)
        rows = {len(v) for v in columns.values()}
        if rows == {num_rows}:
            logger.info("%s: read from the features cache %s", desc, path)
            return columns
        logger.warning("%s: the cached entry %s holds %s rows, not %d; computing again", desc, path, rows, num_rows)
    rank, world = process_group()
    start = time.perf_counter()
    rows = shard_rows(num_rows, rank, world)
    columns = gather_rows(compute(rows) if len(rows) else {})
    seconds = time.perf_counter() - start
    logger.info("%s: %d rows in %.1f s on %d process(es)", desc, num_rows, seconds, world)
    if path is not None and rank == 0:
        os.makedirs(cache_dir, exist_ok=True)
        _write(path, columns, {"key": key, "rows": num_rows, "seconds": seconds, "processes": world, "desc": desc})
        logger.info("%s: cached in %s", desc, path)
    return columns
