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


@torch.no_grad()
def measure_latency(
    model, dataset, transform, device: torch.device, batch_sizes=LATENCY_BATCH_SIZES, warmup: int = 3, runs: int = 10
) -> dict:
    """Forward-pass latency per batch (p50/p95 seconds over `runs` after `warmup`) and throughput (samples/s).

    The batch is real test samples (repeated when the set is smaller), transformed once beforehand: only the model is
    timed, not decoding. Returns {"batch_<b>": {"p50_s", "p95_s", "throughput_per_s"}}.
    """
    out = {}
    for batch_size in batch_sizes:
        rows = dataset.select([i % len(dataset) for i in range(batch_size)]).with_transform(transform)
        batch = default_data_collator([rows[i] for i in range(batch_size)])
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
        times = []
        for step in range(warmup + runs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(**inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
        p50, p95 = np.percentile(times, [50, 95])
        out[f"batch_{batch_size}"] = {"p50_s": float(p50), "p95_s": float(p95), "throughput_per_s": batch_size / p50}
    return out
