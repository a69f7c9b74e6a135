"""The device and process group of an inference command (`mm_hf.evaluate`, `mm_hf.predict`)."""

from __future__ import annotations

import contextlib
import os

import torch
from accelerate import PartialState


def inference_processes(device_flag: str | None) -> tuple[torch.device, PartialState | None]:
    """`(device, state)`: the `--device` asked for (default: cuda when there is one), and under `accelerate launch`
    with several processes their group (gloo on CPU, e.g. `--multi_gpu --num_processes 2 --device cpu`), else None.

    With a group, each process works on a shard; a GPU device without an index becomes the process's own GPU.
    """
    device = torch.device(device_flag or ("cuda" if torch.cuda.is_available() else "cpu"))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, None
    state = PartialState(cpu=device.type == "cpu")
    if device_flag is None or device.type == "cuda" and device.index is None:
        device = state.device
    return device, state


def main_process_first(state: PartialState | None):
    """Under a launch, the main process runs the block first (reading and checking a dataset, which fills the datasets
    cache) and the others then reuse what it wrote; alone, a no-op."""
    return state.main_process_first() if state is not None else contextlib.nullcontext()


def process_rank(state: PartialState | None) -> tuple[int, int]:
    """`(rank, world size)` of `inference_processes`' group, `(0, 1)` without one."""
    return (state.process_index, state.num_processes) if state is not None else (0, 1)
