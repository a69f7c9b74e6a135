"""`python -m mm_hf.export CHECKPOINT --format onnx --output_dir DIR` (see the package docstring)."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
import yaml

from ..args import parse_args
from ..errors import UserError
from . import onnx as onnx_export
from .checkpoints import build_specs, inspect_checkpoint, label_mapping, load_model, load_processor
from .readme import write_readme

logger = logging.getLogger(__name__)

# audio_cls's own default clip length, used for the example inputs when the run's run_config.yaml has none.
DEFAULT_AUDIO_SECONDS = 5.0


@dataclass
class ExportArguments:
    checkpoint: str = field(
        metadata={"help": "The model folder to export (also as the first positional argument): an mm-hf run's output "
                  "folder (full, merged or LoRA adapter), an image/audio-classification checkpoint, or a "
                  "CLIP/SigLIP/CLAP/VisionTextDualEncoder dual encoder (exported as two towers)."}
    )  # fmt: skip
    output_dir: str = field(metadata={"help": "Folder for the .onnx file(s), processor, labels, README and report."})
    format: str = field(default="onnx", metadata={"help": "Export format; only 'onnx' for now."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base model of a LoRA adapter CHECKPOINT (default: the one its adapter_config.json "
                  "records)."},
    )  # fmt: skip
    batch_sizes: list[int] = field(
        default_factory=lambda: [1, 32],
        metadata={"help": "Batch sizes at which the export is checked against PyTorch and timed."},
    )
    tolerance: float = field(
        default=1e-4, metadata={"help": "Largest max-abs output difference (fp32) accepted against PyTorch."}
    )
    latency_repeats: int = field(default=10, metadata={"help": "Timed runs per batch size (median reported)."})
    audio_seconds: float | None = field(
        default=None,
        metadata={"help": "Length of the example clips the audio export is traced and timed on (default: the run's "
                  f"--max_length_seconds from run_config.yaml, else {DEFAULT_AUDIO_SECONDS})."},
    )  # fmt: skip


class ExportMismatchError(RuntimeError):
    """The ONNX graph's outputs differ from PyTorch's by more than the tolerance: a bug, not a user mistake."""


def _positional_checkpoint(argv: list[str]) -> list[str]:
    if argv and not argv[0].startswith("-"):
        return ["--checkpoint", argv[0], *argv[1:]]
    return argv


def _audio_seconds(args: ExportArguments) -> float:
    if args.audio_seconds is not None:
        return args.audio_seconds
    run_config = os.path.join(args.checkpoint, "run_config.yaml")
    if os.path.isfile(run_config):
        with open(run_config) as f:
            recorded = (yaml.safe_load(f) or {}).get("max_length_seconds")
        if recorded:
            return float(recorded)
    return DEFAULT_AUDIO_SECONDS


def main(argv=None) -> dict:
    """Export, check and time; returns the export_report.json dict."""
    # 1. Arguments and the checkpoint's kind (refused before anything loads)
    argv = _positional_checkpoint(list(sys.argv[1:] if argv is None else argv))
    (args,) = parse_args([ExportArguments], argv)
    if args.format != "onnx":
        raise UserError(f"--format {args.format}: only 'onnx' is supported")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise UserError(f"--batch_sizes {args.batch_sizes}: give one or more positive batch sizes")
    if os.path.abspath(args.output_dir) == os.path.abspath(args.checkpoint):
        raise UserError(f"--output_dir {args.output_dir} is the CHECKPOINT folder itself: give the export its own")
    checkpoint = inspect_checkpoint(args.checkpoint)

    # 2. Model (adapter merged), processor and the graphs to trace
    processor = load_processor(args.checkpoint)
    model = load_model(checkpoint, args.base_model)
    specs = build_specs(checkpoint, model, processor, _audio_seconds(args))
    os.makedirs(args.output_dir, exist_ok=True)

    # 3. Export each graph, check it against PyTorch at every batch size, time both
    threads = torch.get_num_threads()
    report = {
        "checkpoint": args.checkpoint,
        "kind": checkpoint.kind,
        "modality": checkpoint.modality,
        "merged_adapter": checkpoint.adapter,
        "exporter": f"torch.onnx (TorchScript, dynamo=False), opset {onnx_export.OPSET}",
        "torch": torch.__version__,
        "onnxruntime": onnx_export.ort.__version__,
        "threads": threads,
        "tolerance": args.tolerance,
        "files": {},
    }
    for spec in specs:
        path = os.path.join(args.output_dir, f"{spec.name}.onnx")
        onnx_export.export(spec, path)
        session = onnx_export.session_for(path, threads)
        diffs = {str(b): onnx_export.max_abs_diff(spec, session, b) for b in args.batch_sizes}
        timing = {str(b): onnx_export.latency(spec, session, b, args.latency_repeats) for b in args.batch_sizes}
        report["files"][spec.name] = {
            "inputs": {i.name: i.shape for i in session.get_inputs()},
            "output": spec.output_name,
            "output_shape": session.get_outputs()[0].shape,
            "max_abs_diff": diffs,
            "latency": timing,
        }
        for batch in args.batch_sizes:
            t = timing[str(batch)]
            print(f"{spec.name}.onnx batch {batch}: max abs diff {diffs[str(batch)]:.2e}, PyTorch {t['pytorch_ms']} ms, "
                  f"ONNX Runtime {t['onnxruntime_ms']} ms ({t['speedup']}x)")  # fmt: skip

    # 4. Processor, labels, report and README next to the graphs
    processor.save_pretrained(args.output_dir)
    labels = label_mapping(model) if checkpoint.kind != "dual-encoder" else None
    if labels:
        with open(os.path.join(args.output_dir, "labels.json"), "w") as f:
            json.dump(labels, f, indent=2)
    with open(os.path.join(args.output_dir, "export_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    write_readme(os.path.join(args.output_dir, "README.md"), os.path.abspath(args.output_dir), checkpoint, report)
    worst = max(d for file in report["files"].values() for d in file["max_abs_diff"].values())
    if worst > args.tolerance:
        raise ExportMismatchError(
            f"the ONNX export in {args.output_dir} differs from PyTorch by up to {worst:.2e} (> --tolerance "
            f"{args.tolerance}); see export_report.json"
        )
    print(f"exported {args.checkpoint} -> {args.output_dir} (max abs diff {worst:.2e})")
    return report
