"""Accelerator fast paths: what a run turns on by itself when a CUDA GPU is present, and the model FLOPs
utilisation (MFU) it reports.

- `gpu_defaults` (called by `mm_hf.run.start_run`): bf16 autocast where the GPU computes in bf16 natively,
  fused AdamW, TF32 matmuls from Ampere on; each only where the user set neither that flag nor a competing one.
  Without CUDA, or with --use_cpu, nothing changes.
- `use_attention` (called by `mm_hf.run.train_and_evaluate`): every tower on `--attn_implementation` (sdpa by
  default: torch's fused scaled-dot-product attention) where its transformers class has it, eager where not (logged).
- `StepFlops` + `mfu_metrics`: the FLOPs of one training step counted by torch, divided by the samples it saw,
  times the measured train samples/s, over the GPUs' peak: `train_flops_per_sample` and `train_mfu` in
  all_results.json.

torch.compile (--torch_compile) stays opt-in: it costs minutes of compilation, which a short fine-tuning run
does not win back, and recompiles for every new input shape (audio and text lengths vary).
"""

import logging
import re
from dataclasses import dataclass

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel, TrainerCallback

logger = logging.getLogger(__name__)

ATTENTION_CHOICES = ("sdpa", "eager")


@dataclass(frozen=True)
class Gpu:
    """What the defaults depend on: the device name (its peak FLOPs), compute capability (TF32 needs 8.0,
    Ampere) and whether it computes bf16 natively (T4/V100 only emulate it, slower than fp32)."""

    name: str
    capability: tuple[int, int]
    bf16: bool


def detect_gpu() -> Gpu | None:
    """This process's CUDA device, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return Gpu(
        torch.cuda.get_device_name(),
        tuple(torch.cuda.get_device_capability()),
        torch.cuda.is_bf16_supported(including_emulation=False),
    )


def gpu_defaults(gpu: Gpu | None, explicit: set[str], *, use_cpu: bool = False) -> dict:
    """TrainingArguments values for a run on `gpu` (None: no CUDA) whose user set the flags in `explicit`:

    - `bf16=True` unless --bf16 or --fp16 was given (either value: `--bf16 false` keeps fp32) or the GPU has no
      native bf16; Trainer then runs forward and loss under bf16 autocast, the weights and optimizer stay fp32.
    - `optim="adamw_torch_fused"` unless --optim was given: one kernel for all parameters instead of a loop
      (transformers 5.23 already defaults to it with torch >= 2.8; set here so the choice holds and is recorded).
    - `tf32=True` unless --tf32 was given, from compute capability 8.0 (Ampere) on: fp32 matmuls outside autocast
      (the fp32 head, the loss, a run with --bf16 false) on TF32 tensor cores.
    """
    if gpu is None or use_cpu:
        return {}
    chosen = {}
    if gpu.bf16 and not explicit & {"bf16", "fp16"}:
        chosen["bf16"] = True
    if "optim" not in explicit:
        chosen["optim"] = "adamw_torch_fused"
    if gpu.capability >= (8, 0) and "tf32" not in explicit:
        chosen["tf32"] = True
    return chosen


def log_gpu_defaults(gpu: Gpu | None, chosen: dict) -> None:
    if gpu is not None:
        flags = ", ".join(f"--{k} {v}" for k, v in chosen.items()) or "none (every one was set by the user)"
        logger.info("GPU fast paths on %s (capability %d.%d): %s", gpu.name, *gpu.capability, flags)


def use_attention(model: torch.nn.Module, requested: str = "sdpa") -> dict[str, str]:
    """Put every transformers model inside `model` (the towers) on the `requested` attention where its class
    supports it; returns {tower key (`model.parts()`): implementation it runs}, and logs towers that fall back.

    transformers 5.23 already picks sdpa for every class that has it (CLIP, SigLIP, ViT, DINOv2, BERT/MiniLM,
    Whisper, wav2vec2, HuBERT, AST): for those this only checks. WavLM and CLAP have no SDPA path in 5.23 and stay
    eager. nn.TransformerEncoder / nn.MultiheadAttention in the fusion layers and learned poolings call torch's
    SDPA themselves (need_weights=False), whatever this says.
    """
    if requested not in ATTENTION_CHOICES:
        raise ValueError(f"--attn_implementation must be one of {', '.join(ATTENTION_CHOICES)}; got {requested!r}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's model
    fallbacks = []
    for name, module in base.named_modules():
        if module is base or not isinstance(module, PreTrainedModel):
            continue
        if module.config._attn_implementation != requested:
            try:
                module.set_attn_implementation(requested)
            except (ValueError, ImportError):
                pass  # no SDPA in this class: it stays on what it has, reported below
        if module.config._attn_implementation != requested:
            fallbacks.append(f"{name} ({type(module).__name__}: {module.config._attn_implementation})")
    if fallbacks:
        logger.info(
            "attention: no %s implementation in transformers %s for %s; running: %s",
            requested,
            transformers.__version__,
            "these models" if len(fallbacks) > 1 else "this model",
            "; ".join(fallbacks),
        )
    towers = tower_attention(base)
    logger.info("attention per tower (--attn_implementation %s): %s", requested, towers)
    return towers


def tower_attention(model: torch.nn.Module) -> dict[str, str]:
    """{tower key: attention implementation} for the towers `model.parts()` names (read from each tower's
    config, or its nearest enclosing module's); a model without `parts()`: {module name: implementation} of the
    transformers models inside it."""
    if not hasattr(model, "parts"):
        return {
            name: m.config._attn_implementation
            for name, m in model.named_modules()
            if isinstance(m, PreTrainedModel) and name
        }
    out = {}
    for key, tower in model.parts().towers.items():
        path = tower.path
        while True:
            config = getattr(model.get_submodule(path), "config", None)
            if config is not None or not path:
                break
            path = path.rpartition(".")[0]
        out[key] = getattr(config, "_attn_implementation", None) or "eager"
    return out


# Dense (no structured sparsity) peak tensor-core TFLOPS per GPU from NVIDIA's datasheets: (bf16/fp16 with fp32
# accumulation, tf32, fp32). Matched in order against torch.cuda.get_device_name(); None: the GPU has no such
# path (T4: bf16 only emulated, no TF32). A GPU not listed gets no MFU.
PEAK_TFLOPS = (
    (r"H100.*PCIe", (756.0, 378.0, 51.2)),
    (r"H100.*NVL|H200.*NVL", (835.0, 418.0, 60.0)),
    (r"H100|H200|GH200", (989.4, 494.7, 66.9)),
    (r"A100", (312.0, 156.0, 19.5)),
    (r"\bL4\b", (121.0, 60.0, 30.3)),
    (r"\bA10\b", (125.0, 62.5, 31.2)),
    (r"\bT4\b", (None, None, 8.1)),
    (r"RTX 4090", (165.2, 82.6, 82.6)),
)
PRECISIONS = ("bf16", "tf32", "fp32")


def matmul_precision(args) -> str:
    """What most of a run's matmuls compute in: "bf16" (also fp16: the same peak where both exist) under
    autocast, else "tf32" when TF32 matmuls are on, else "fp32"."""
    if args.bf16 or args.fp16:
        return "bf16"
    if args.tf32 or torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "fp32"


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of one `device_name` GPU at `precision` ("bf16", "tf32", "fp32"), None when unknown."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            tflops = peaks[PRECISIONS.index(precision)]
            return tflops * 1e12 if tflops is not None else None
    return None


def mfu_metrics(
    flops_per_sample: float, samples_per_second: float, device_name: str, precision: str, num_devices: int = 1
) -> dict:
    """`train_flops_per_sample`, and `train_mfu` = flops_per_sample x samples_per_second / (num_devices x the
    device's peak at `precision`) when the peak is known (else logged and left out)."""
    out = {"train_flops_per_sample": float(flops_per_sample)}
    peak = peak_flops(device_name, precision)
    if peak is None:
        logger.info("no MFU: peak %s FLOP/s of %r is not in mm_hf.fastpaths.PEAK_TFLOPS", precision, device_name)
        return out
    out["train_mfu"] = flops_per_sample * samples_per_second / (num_devices * peak)
    out["train_peak_flops"] = num_devices * peak
    logger.info(
        "train MFU %.2e: %.3g FLOPs/sample x %.1f samples/s / (%d x %s peak %.3g %s FLOP/s)",
        out["train_mfu"], flops_per_sample, samples_per_second, num_devices, device_name, peak, precision,
    )  # fmt: skip
    return out


class StepFlops(TrainerCallback):
    """Counts the FLOPs of the first optimizer step of training (every micro-batch of it, forward and backward,
    with torch.utils.flop_counter: matmuls, convolutions, attention) and the samples `model`'s forward saw in it.

    Counting the step the run really takes makes the figure follow the architecture and what trains: a frozen
    weight gets no weight-gradient matmul, and nothing below the lowest trainable layer gets any backward (a
    linear probe's step is its head's); convolution stems, attention's quadratic term and a Whisper window or
    image size are in as they run. Activation checkpointing's recomputed forward is counted too (hardware FLOPs).
    Under the counter the step runs uncompiled (torch.compile compiles from the next one).
    """

    def __init__(self, model: torch.nn.Module | None = None):
        self.model = model
        self.flops = self.samples = 0
        self.done = False
        self._counter = self._hook = None

    def _count_samples(self, module, args, kwargs):
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() > 0]
        if tensors:
            self.samples += tensors[0].shape[0]

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.done or self._counter is not None:
            return
        self._counter = FlopCounterMode(display=False)
        self._counter.__enter__()
        # The Trainer's model of the moment (a --hp_search trial or the retrained best one is a new model).
        self._hook = (model or self.model).register_forward_pre_hook(self._count_samples, with_kwargs=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self._counter is None:
            return
        self._counter.__exit__(None, None, None)
        self._hook.remove()
        self.flops, self.done, self._counter = self._counter.get_total_flops(), True, None

    @property
    def flops_per_sample(self) -> float | None:
        return self.flops / self.samples if self.done and self.samples else None


def train_throughput(counter: StepFlops, train_metrics: dict, args, device_name: str) -> dict:
    """all_results.json's FLOPs and MFU of a Trainer run: `counter`'s FLOPs per sample, `train_samples_per_second`
    (Trainer's, over all processes and the whole train_runtime, evaluations during training included: the MFU is
    a lower bound) on `args.world_size` devices named `device_name`, at the run's `matmul_precision`."""
    per_sample, speed = counter.flops_per_sample, train_metrics.get("train_samples_per_second")
    if per_sample is None or not speed:
        return {}
    return mfu_metrics(per_sample, speed, device_name, matmul_precision(args), args.world_size)


__all__ = [
    "ATTENTION_CHOICES",
    "Gpu",
    "PEAK_TFLOPS",
    "StepFlops",
    "detect_gpu",
    "gpu_defaults",
    "log_gpu_defaults",
    "matmul_precision",
    "mfu_metrics",
    "peak_flops",
    "tower_attention",
    "train_throughput",
    "use_attention",
]
