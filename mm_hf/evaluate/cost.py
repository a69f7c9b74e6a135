"""What a model costs to keep and to run: parameters, size on disk, latency, throughput, peak memory."""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np
import torch
from transformers import default_data_collator

# Weight files only: a folder's plots, reports and optimizer states are not the model.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
LATENCY_BATCH_SIZES = (1, 32)


def parameter_counts(model) -> dict[str, int]:
    """Total parameters of the model as evaluated (a LoRA model: base + adapter) and those requiring grad."""
    params = list(model.parameters())
    return {
        "total_params": sum(p.numel() for p in params),
        "requires_grad_params": sum(p.numel() for p in params if p.requires_grad),
    }


def disk_bytes(path: str) -> int | None:
    """Bytes of the weight files directly in `path` (None for a Hub id, which is not on disk here)."""
    if not os.path.isdir(path):
        return None
    return sum(
        os.path.getsize(os.path.join(path, name))
        for name in os.listdir(path)
        if name.endswith(WEIGHT_SUFFIXES) and os.path.isfile(os.path.join(path, name))
    )


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: VmHWM on Linux (`clear_refs` 5), CUDA's max allocated on a GPU."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the process-lifetime peak is reported instead
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, int]:
    """Peak resident set size of this process since `reset_peak_memory` (bytes), and CUDA's max allocated."""
    out = {"peak_rss_bytes": _peak_rss()}
    if device.type == "cuda":
        out["peak_gpu_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def trainable_params(candidate, model) -> int:
    """Parameters fine-tuning trained: the run's record for an mm-hf folder, 0 for zero-shot, else all of them."""
    recorded = (candidate.run_info.get("trainable") or {}).get("trainable_params")
    if recorded is not None:
        return int(recorded)
    if candidate.kind == "zero-shot":
        return 0
    return int(sum(p.numel() for p in model.parameters()))


def model_cost(candidate, model) -> dict:
    """evaluation.json's `cost` without latency and memory: total / requires-grad / trained parameters, weight bytes."""
    return {**parameter_counts(model), "trainable_params": trainable_params(candidate, model),
            "disk_bytes": disk_bytes(candidate.path)}  # fmt: skip


@torch.no_grad()
def time_calls(call, batch_of, device: torch.device, batch_sizes=LATENCY_BATCH_SIZES, warmup: int = 3,
               runs: int = 10) -> dict:  # fmt: skip
    """Latency of `call(batch_of(b))` per batch size b (p50/p95 seconds over `runs` after `warmup`) and throughput
    (samples/s): `{"batch_<b>": {"p50_s", "p95_s", "throughput_per_s"}}`. The batch is built once, outside the
    timing: only `call` is timed (a forward pass, one tower's embedding), not decoding."""
    out = {}
    for batch_size in batch_sizes:
        inputs = batch_of(batch_size)
        times = []
        for step in range(warmup + runs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            call(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
        p50, p95 = np.percentile(times, [50, 95])
        out[f"batch_{batch_size}"] = {"p50_s": float(p50), "p95_s": float(p95), "throughput_per_s": batch_size / p50}
    return out


def real_batch(dataset, transform, batch_size: int) -> dict:
    """`batch_size` real rows of `dataset` (repeated when it is smaller) through `transform`, collated."""
    rows = dataset.select([i % len(dataset) for i in range(batch_size)]).with_transform(transform)
    return default_data_collator([rows[i] for i in range(batch_size)])


def measure_latency(model, dataset, transform, device: torch.device, batch_sizes=LATENCY_BATCH_SIZES,
                    warmup: int = 3, runs: int = 10, not_inputs=("labels",)) -> dict:  # fmt: skip
    """Forward-pass latency of `model` on real test batches through `transform` (`time_calls`); batch keys starting
    with one of `not_inputs` (labels, a fusion head's `labels_<task>`, a ranking run's group ids) are not passed."""

    def batch_of(batch_size: int) -> dict:
        batch = real_batch(dataset, transform, batch_size)
        return {k: v.to(device) for k, v in batch.items()
                if isinstance(v, torch.Tensor) and not k.startswith(tuple(not_inputs))}  # fmt: skip

    return time_calls(lambda inputs: model(**inputs), batch_of, device, batch_sizes, warmup, runs)
