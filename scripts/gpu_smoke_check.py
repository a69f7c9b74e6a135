"""What scripts/gpu_smoke.sh checks after each run (the expectations are written out in scripts/gpu_smoke.md).

argv: config recipe output_dir log exit_code num_processes (config "fastpaths": the one-GPU run checking the GPU
defaults). Prints one line; exit status 1 on the first unmet one.
"""

import glob
import json
import os
import sys


def fail(message: str) -> None:
    print(message)
    sys.exit(1)


def check_fast_paths(out: str, text: str) -> None:
    """A one-GPU run given no --bf16/--optim/--tf32 (mm_hf/fastpaths.py): the defaults taken, logged and recorded,
    every tower on SDPA, the step's FLOPs counted and an MFU in (0, 1)."""
    import torch
    import yaml

    if "GPU fast paths on" not in text:
        fail("no 'GPU fast paths on' log line: the GPU defaults were not decided")
    config = yaml.safe_load(open(os.path.join(out, "run_config.yaml")))
    expected = {"optim": "adamw_torch_fused", "attn_implementation": "sdpa"}
    if torch.cuda.is_bf16_supported(including_emulation=False):
        expected["bf16"] = True
    if torch.cuda.get_device_capability() >= (8, 0):
        expected["tf32"] = True
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k) != v}
    if wrong:
        fail(f"run_config.yaml: {wrong}, expected {expected}")
    results = json.load(open(os.path.join(out, "all_results.json")))
    attention = results.get("attn_implementation") or {}
    if not attention or set(attention.values()) != {"sdpa"}:
        fail(f"towers not all on sdpa: {attention}")
    mfu, flops = results.get("train_mfu"), results.get("train_flops_per_sample")
    if not flops or flops <= 0:
        fail(f"train_flops_per_sample missing or not positive: {flops}")
    if mfu is None or not 0 < mfu < 1:
        fail(f"train_mfu missing or outside (0, 1): {mfu} ({torch.cuda.get_device_name()} in PEAK_TFLOPS?)")
    print(
        f"bf16={config.get('bf16')} tf32={config.get('tf32')} optim={config['optim']} attention={attention} "
        f"flops/sample={flops:.3g} mfu={mfu:.2e} at {results['train_samples_per_second']:.0f} samples/s"
    )


def main(config: str, recipe: str, out: str, log: str, rc: str, nproc: str) -> None:
    text = open(log).read()
    if rc != "0":
        fail("non-zero exit: " + " | ".join(text.strip().splitlines()[-3:]))
    if config == "fastpaths":
        return check_fast_paths(out, text)
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
