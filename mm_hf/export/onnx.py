"""ONNX export of a loaded classifier or dual-encoder tower: trace, check against PyTorch, time both.

The legacy TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) is used on purpose: it needs no
`onnxscript` (only `onnx`, to serialise the graph, and onnxruntime to check it), and tracing runs the model's own eager forward,
which already passes the parity checks (tests/test_export.py) for every tower the recipes use: ViT, DINOv2, CLIP,
SigLIP, BERT, wav2vec2, Whisper's encoder and CLAP's HTSAT. The dynamo exporter was not tried: it would add
onnxscript and a `torch.export` pass for no gain on these graphs. Tracing freezes Python-level shape checks
(TracerWarnings), which is why every graph is re-checked at other batch sizes and sequence lengths.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

OPSET = 17  # LayerNormalization is a single op from opset 17 on; onnxruntime 1.32 runs up to opset 23


class NamedInputs(nn.Module):
    """`fn(**dict(zip(input_names, inputs)))` as a module with positional inputs, which the tracer needs; `fn`
    returns the one tensor the ONNX graph outputs."""

    def __init__(self, model: nn.Module, fn, input_names: list[str]):
        super().__init__()
        self.model, self.fn, self.input_names = model, fn, list(input_names)

    def forward(self, *inputs):
        return self.fn(self.model, **dict(zip(self.input_names, inputs, strict=True)))


def classifier_logits(model, **inputs):
    return model(**inputs).logits


def tower_embedding(method: str):
    """The unit-length embedding of a dual encoder's `method` (get_image/audio/text_features) incl. projection."""

    def embed(model, **inputs):
        out = getattr(model, method)(**inputs)
        # transformers v5 returns a ModelOutput whose pooler_output is the projected embedding.
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(out, dim=-1)

    return embed


@dataclass
class ExportSpec:
    """One ONNX file: the module to trace, its input names (those the processor gives), the example inputs
    (tensors, batch first) and which input dims are dynamic besides the batch."""

    name: str  # file stem: "model", "image_tower", "text_tower", "audio_tower"
    module: nn.Module
    output_name: str  # "logits", "image_embeds", ...
    example: dict[str, torch.Tensor]  # at least 2 rows, the batch the parity check and latency runs are cut from
    sequence_inputs: tuple[str, ...] = ()  # inputs whose dim 1 varies (token ids, raw waveforms) besides batch
    extra: dict = field(default_factory=dict)


def export(spec: ExportSpec, path: str) -> None:
    names = list(spec.example)
    axes = {}
    for name in names:
        axes[name] = {0: "batch", 1: "sequence"} if name in spec.sequence_inputs else {0: "batch"}
    axes[spec.output_name] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            spec.module,
            tuple(spec.example[n] for n in names),
            path,
            input_names=names,
            output_names=[spec.output_name],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def _rows(example: dict, n: int) -> dict:
    """The first `n` rows of every input, repeating the example's rows when it has fewer than `n`."""
    out = {}
    for name, value in example.items():
        reps = -(-n // value.shape[0])
        out[name] = value.repeat(reps, *([1] * (value.dim() - 1)))[:n]
    return out


def _feed(session, inputs: dict) -> dict:
    # The tracer drops an input the graph does not read (e.g. CLAP's `is_longer` without feature fusion).
    wanted = {i.name for i in session.get_inputs()}
    return {k: v.numpy() for k, v in inputs.items() if k in wanted}


def session_for(path: str, threads: int | None = None):
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def max_abs_diff(spec: ExportSpec, session, batch_size: int) -> float:
    """Largest |ONNX Runtime - PyTorch| over the outputs for `batch_size` rows of the example."""
    inputs = _rows(spec.example, batch_size)
    with torch.no_grad():
        expected = spec.module(*inputs.values()).numpy()
    got = session.run(None, _feed(session, inputs))[0]
    if got.shape != expected.shape:
        raise AssertionError(f"{spec.name}: ONNX output {got.shape} != PyTorch {expected.shape}")
    return float(np.abs(got - expected).max())


def latency(spec: ExportSpec, session, batch_size: int, repeats: int, warmup: int = 2) -> dict:
    """Median CPU latency (ms) of one forward at `batch_size`, PyTorch (eager, no_grad) vs ONNX Runtime.

    The two runtimes alternate run by run, so a load that comes and goes on a shared machine slows both alike
    instead of whichever happened to be timed during it.
    """
    inputs = _rows(spec.example, batch_size)
    feed = _feed(session, inputs)
    args = tuple(inputs.values())

    def torch_run():
        with torch.no_grad():
            spec.module(*args)

    runs = {"pytorch": (torch_run, []), "onnxruntime": (lambda: session.run(None, feed), [])}
    for i in range(warmup + repeats):
        for fn, times in runs.values():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    torch_ms, ort_ms = (statistics.median(times) for _, times in runs.values())
    return {
        "pytorch_ms": round(torch_ms, 3),
        "onnxruntime_ms": round(ort_ms, 3),
        "speedup": round(torch_ms / ort_ms, 2),
    }
