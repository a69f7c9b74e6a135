"""Time a linear probe's feature caching (`mm_hf.features.precompute_features`) on 1 and 2 processes, cold and
read back from --features_cache_dir.

    OMP_NUM_THREADS=1 python scripts/bench_feature_cache.py --rows 128      # runs 1 and 2 processes (CPU, gloo)

The backbone is a real DINOv2-small (ViT-S/14, 224 px) as the image tower of a VisionTextDualEncoder with the real
MiniLM text tower (~/.cache/mm-hf-dev/realmodels, or --vision/--text), over sklearn digits written as class
folders. Each configuration runs in fresh processes: a cold pass into an empty cache folder, then the same pass
again, read from that folder. Prints one JSON line per configuration.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

REAL = os.path.expanduser("~/.cache/mm-hf-dev/realmodels")


def worker(args) -> None:
    import torch.distributed as dist
    from transformers import AutoImageProcessor

    from mm_hf.data.loading import read_class_folder
    from mm_hf.data.transforms import build_image_transform
    from mm_hf.feature_cache import process_group
    from mm_hf.features import precompute_features
    from mm_hf.models import build_dual_encoder_classifier

    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    rank, world = process_group()
    images = read_class_folder(os.path.join(args.work, "digits", "train"), "image", "label")
    images = images.select(range(min(args.rows, len(images))))
    names = sorted(set(images["label"]))
    data = images.add_column("labels", [names.index(v) for v in images["label"]]).remove_columns("label")
    transform = build_image_transform(AutoImageProcessor.from_pretrained(args.vision), train=False)
    model = build_dual_encoder_classifier(
        os.path.join(args.work, "dual-encoder"), dict(enumerate(names)), head_init="random"
    )
    cache = os.path.join(args.work, f"cache-{world}")
    timings = {}
    for attempt in ("cold", "cached"):
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        precompute_features(model, data, transform, args.batch_size, cache_dir=cache, desc=None)
        if world > 1:
            dist.barrier()
        timings[attempt] = round(time.perf_counter() - start, 2)
    if rank == 0:
        print(json.dumps({"processes": world, "rows": len(data), "batch_size": args.batch_size, **timings}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128, help="Images to encode (sklearn digits, train split).")
    parser.add_argument("--batch_size", type=int, default=16, help="Images per forward pass and process.")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="Process counts to time.")
    parser.add_argument("--vision", default=os.path.join(REAL, "dinov2-small"), help="Image tower checkpoint.")
    parser.add_argument("--text", default=os.path.join(REAL, "all-minilm-l6-v2"), help="Text tower checkpoint.")
    parser.add_argument("--work", default=None, help="Scratch folder (default: a new temporary one).")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    args.work = args.work or tempfile.mkdtemp(prefix="bench-feature-cache-")
    from transformers import AutoImageProcessor, AutoTokenizer, VisionTextDualEncoderModel

    from mm_hf.demo import write_digits_imagefolder

    write_digits_imagefolder(os.path.join(args.work, "digits"), classes=range(10), max_per_class=60)
    model = VisionTextDualEncoderModel.from_vision_text_pretrained(args.vision, args.text)
    model.save_pretrained(os.path.join(args.work, "dual-encoder"))
    AutoTokenizer.from_pretrained(args.text).save_pretrained(os.path.join(args.work, "dual-encoder"))
    AutoImageProcessor.from_pretrained(args.vision).save_pretrained(os.path.join(args.work, "dual-encoder"))
    own = [
        "--worker", "--rows", str(args.rows), "--batch_size", str(args.batch_size), "--vision", args.vision,
        "--text", args.text, "--work", args.work,
    ]  # fmt: skip
    for n in args.processes:
        with socket.socket() as sock:  # a free port: other jobs on the machine may hold torchrun's default
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", port]
        launch = torchrun if n > 1 else [sys.executable]
        subprocess.run([*launch, os.path.abspath(__file__), *own], check=True)


if __name__ == "__main__":
    main()
