"""Host (CPU) memory: keep glibc's heap from holding freed tensors, which sets a CPU run's peak RSS.

glibc serves an allocation from `mmap` (returned to the system on free) only above a threshold that it raises
to the size of every mmapped block freed, up to 32 MB. After the first training step every activation (a
32 x 50 x 768 float tensor is 4.9 MB, a 3072-wide MLP one 19.6 MB) therefore comes from the heap, whose freed
holes stay resident: the process keeps the memory of its largest step for good, and the peak grows with
fragmentation. A fixed 1 MiB threshold returns each freed tensor at once. One training step of the CLIP
ViT-B/32 classifier, batch 32, one thread: peak RSS 2787 -> 1875 MB (LoRA), 3259 -> 2803 MB (full), 1861 ->
1153 MB (LoRA + gradient checkpointing); whole runs in README "Memory benchmark" (`python -m mm_hf.bench.memory`).
The price is a fresh page for every such tensor: +22 % CPU time per CPU training step there (sys 0.45 -> 1.7 s);
a 16 MB threshold costs nothing and saves nothing. Any MALLOC_* setting in the environment (e.g.
MALLOC_MMAP_THRESHOLD_=33554432 for speed) is left to rule.
"""

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20
# Setting one of these in the environment is the user's own glibc tuning: it is left as it is.
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def return_freed_tensors_to_os(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve allocations of `threshold` bytes or more from mmap for the rest of the process (glibc `mallopt`),
    so freed activations leave the resident set instead of staying in the heap. Returns whether it was set: not
    without glibc (macOS, musl) nor when the environment already tunes glibc's malloc."""
    if any(name in os.environ for name in GLIBC_MALLOC_ENV):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    if done:  # a speed/memory trade the user should see once, with the way out
        logger.info(
            "glibc mmap threshold set to %d bytes: freed tensors leave the resident set (lower peak RAM; on CPU "
            "about 20%% more time per training step). MALLOC_MMAP_THRESHOLD_=33554432 keeps glibc's default.",
            threshold,
        )
    return done


__all__ = ["return_freed_tensors_to_os"]
