"""Time `--validate_samples header` (and the cached re-run) on a synthetic manifest of N image files.

    python scripts/bench_validation.py --rows 1000000 --workdir /tmp/mm_hf_bench_validation

Writes N distinct small PNG files (1000 per folder) and a CSV manifest `path,label` once, then times, on that
manifest as the recipes load it (`read_table`): the verdict key (one os.stat per file), the header check with 1
and with 2 processes (`--preprocessing_num_workers`), and a second run that reuses the cached verdict. Prints one
JSON line: wall seconds (`*_s`) and CPU seconds of this process and its workers (`*_cpu_s`), which on a shared,
busy machine say what the wall time would be on idle cores (CPU seconds / processes). Delete the work folder afterwards (N files of one disk block each: ~4 GB for a million).
"""

import argparse
import io
import json
import os
import resource
import shutil
import tempfile
import time

from PIL import Image

from mm_hf.data.images import check_images
from mm_hf.data.loading import read_table
from mm_hf.data.validation import verdict_key


def write_manifest(workdir: str, rows: int) -> str:
    manifest = os.path.join(workdir, "manifest.csv")
    if os.path.exists(manifest):
        return manifest
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buffer, format="PNG")
    data = buffer.getvalue()
    with open(manifest + ".tmp", "w") as f:
        f.write("image,label\n")
        for i in range(rows):
            folder = os.path.join(workdir, "images", f"{i // 1000:04d}")
            if i % 1000 == 0:
                os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{i:07d}.png")
            with open(path, "wb") as image:
                image.write(data)
            f.write(f"images/{i // 1000:04d}/{i:07d}.png,{'cat' if i % 2 else 'dog'}\n")
    os.replace(manifest + ".tmp", manifest)
    return manifest


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes (datasets' map workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mm_hf_bench_validation"))
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    start = time.perf_counter()
    manifest = write_manifest(args.workdir, args.rows)
    timings = {"rows": args.rows, "write_s": round(time.perf_counter() - start, 1), "cpus": os.cpu_count()}
    start = time.perf_counter()
    dataset = read_table(manifest, "image", "label", cache_dir=os.path.join(args.workdir, "datasets"))
    timings["load_manifest_s"] = round(time.perf_counter() - start, 1)
    start, cpu = time.perf_counter(), cpu_seconds()
    verdict_key(dataset, "image", "images/header")
    timings["verdict_key_s"] = round(time.perf_counter() - start, 1)
    timings["verdict_key_cpu_s"] = round(cpu_seconds() - cpu, 1)
    for processes in args.processes:
        cache = os.path.join(args.workdir, f"verdicts-{processes}")
        shutil.rmtree(cache, ignore_errors=True)
        start, cpu = time.perf_counter(), cpu_seconds()
        kept, bad = check_images(
            dataset, "image", skip_bad=False, mode="header", num_proc=processes if processes > 1 else None,
            cache=True, cache_dir=cache,
        )  # fmt: skip
        timings[f"header_{processes}proc_s"] = round(time.perf_counter() - start, 1)
        timings[f"header_{processes}proc_cpu_s"] = round(cpu_seconds() - cpu, 1)
        assert len(kept) == args.rows and not bad
    start = time.perf_counter()
    check_images(dataset, "image", skip_bad=False, mode="header", cache=True, cache_dir=cache)
    timings["cached_rerun_s"] = round(time.perf_counter() - start, 1)
    timings["load_average"] = os.getloadavg()[0]
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
