"""What scripts/gpu_smoke.sh checks after each run (the expectations are written out in scripts/gpu_smoke.md).

argv: config recipe output_dir log exit_code num_processes. Prints one line; exit status 1 on the first unmet one.
"""

import glob
import json
import os
import sys


def fail(message: str) -> None:
    print(message)
    sys.exit(1)


def main(config: str, recipe: str, out: str, log: str, rc: str, nproc: str) -> None:
    text = open(log).read()
    if rc != "0":
        fail("non-zero exit: " + " | ".join(text.strip().splitlines()[-3:]))
    if f"world_size={nproc} " not in text:
        fail(f"no 'world_size={nproc}' line: the processes did not form one group")
    results = json.load(open(os.path.join(out, "all_results.json")))
    if results.get("train_runtime") is None or results.get("epoch", 0) <= 0:
        fail("no training recorded in all_results.json")
    checkpoint = os.path.join(out, "checkpoint-4")
    if not os.path.isdir(checkpoint):
        fail("no checkpoint-4")
    found = os.listdir(checkpoint)
    if config == "fsdp" and not any(name.startswith("pytorch_model_fsdp") for name in found):
        fail(f"FSDP checkpoint is not sharded (SHARDED_STATE_DICT): {sorted(found)}")
    if config.startswith("deepspeed") and not glob.glob(os.path.join(checkpoint, "global_step*")):
        fail(f"no DeepSpeed checkpoint (global_step*) in checkpoint-4: {sorted(found)}")
    # The final model is a normal checkpoint that loads without accelerate: gathered from the shards.
    import torch
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.disable_progress_bar()  # the one line printed is the verdict

    import mm_hf.models  # noqa: F401

    if not os.path.isfile(os.path.join(out, "model.safetensors")):
        fail(f"no model.safetensors in {out}: {sorted(os.listdir(out))}")
    loader = {
        "clip_imagecls": AutoModelForImageClassification,
        "fusion_imagetext_cls": AutoModelForSequenceClassification,
        "clip_retrieval": AutoModel,
    }[recipe]
    model = loader.from_pretrained(out)
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all() or p.numel() == 0]
    if bad:
        fail(f"reloaded parameters empty or not finite: {bad[:3]}")
    key = next((k for k in ("test_accuracy", "test_image_to_text_recall@1") if k in results), None)
    if key is None:
        fail(f"no test metric in all_results.json: {sorted(results)[:10]}")
    print(
        f"{key}={results[key]:.3f}, train_loss={results.get('train_loss', float('nan')):.3f}, reloaded {type(model).__name__}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:7])
