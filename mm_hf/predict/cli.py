"""`python -m mm_hf.predict CHECKPOINT --data ... --output preds.jsonl`: arguments and the flow (model -> data ->
batches -> rows appended chunk by chunk)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from transformers.utils.logging import tqdm  # tqdm is no direct dependency; transformers wraps it

from ..args import AudioColumnArguments, HubArguments, ImageColumnArguments, explicit_flags, media_column, parse_args
from ..data.collate import Collate
from ..errors import UserError
from ..evaluate import candidates as cands
from ..evaluate.fusion.sets import fusion_columns, load_fusion
from ..evaluate.processes import inference_processes
from .heads import Head
from .inputs import Rows, StreamRows, read_inputs, stream_inputs
from .output import PredictionWriter, output_format

logger = logging.getLogger(__name__)


@dataclass
class PredictArguments(AudioColumnArguments, ImageColumnArguments, HubArguments):
    checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "The model (also the first positional argument): an mm-hf output folder (image/audio classifier: "
            "full, merged or LoRA adapter; fusion), a transformers image/audio-classification checkpoint, or a "
            "CLIP/SigLIP/CLAP dual encoder (zero-shot over --labels)."
        },
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "A folder of image/audio/video files (any depth), a CSV/JSONL file (paths relative to it), or "
            "parquet files / WebDataset .tar shards (a path or a glob)."
        },
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id, instead of --data."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration name of the Hub dataset."})
    dataset_split: str = field(default="test", metadata={"help": "Split of --dataset_name to predict."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read --data (CSV/JSONL/parquet files, WebDataset .tar shards, globs) or --dataset_name as a "
            "stream: rows are read, predicted and appended chunk by chunk, never loaded whole (one process)."
        },
    )
    output: str | None = field(
        default=None, metadata={"help": "Predictions file, .jsonl or .csv; an existing one is resumed."}
    )
    labels: str | None = field(
        default=None, metadata={"help": "Zero-shot dual encoders: the class names, comma-separated (a,b,c)."}
    )
    prompt_templates: list[str] | None = field(
        default=None, metadata={"help": "Zero-shot: prompt templates with {} for the class name."}
    )
    top_k: int = field(default=5, metadata={"help": "Single-label heads: this many labels with probabilities."})
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "Multi-label/binary heads: a label is predicted when its probability is >= this (default: the "
            "fusion run's --threshold, else 0.5)."
        },
    )
    id_column: str | None = field(
        default=None,
        metadata={"help": "CSV/JSONL/Hub column naming each sample (default: the row number; a folder: the path)."},
    )
    keep_columns: str | None = field(
        default=None, metadata={"help": "Input columns copied into every output row, comma-separated."}
    )
    max_length_seconds: float | None = field(
        default=None, metadata={"help": "Audio: cut clips to this length (default: the mm-hf run's own, else 5.0)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Samples per forward pass."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes (decoding runs there)."})
    chunk_size: int = field(default=1024, metadata={"help": "Rows appended (and fsync'ed) to --output at once."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if available)."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})


PREDICT_ARGUMENT_TYPES = (PredictArguments,)


def main(argv=None) -> dict:
    """Predict every sample not yet in --output; returns {"predicted", "errors", "skipped" (already in the output),
    "output", "processes"} (totals over the processes of a launch)."""
    # 1. Arguments (the checkpoint may come first, without its flag)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--checkpoint", argv[0], *argv[1:]]
    (args,) = parse_args(PREDICT_ARGUMENT_TYPES, argv)
    explicit = explicit_flags(argv, PREDICT_ARGUMENT_TYPES)
    if not args.checkpoint:
        raise UserError("no checkpoint: python -m mm_hf.predict CHECKPOINT --data ... --output preds.jsonl")
    if not args.output:
        raise UserError("no --output: pass a .jsonl or .csv file for the predictions")
    output_format(args.output)
    if args.top_k < 1:
        raise UserError(f"--top_k {args.top_k}: must be at least 1")
    labels = [name.strip() for name in (args.labels or "").split(",") if name.strip()]
    keep = [name.strip() for name in (args.keep_columns or "").split(",") if name.strip()]
    if "id" in keep or "error" in keep:
        raise UserError("--keep_columns: 'id' and 'error' are the output's own columns; rename that input column")
    # accelerate launch: each process predicts a contiguous shard into its own part file; the main process
    # appends the parts in rank order, so the output is the one of a single process.
    device, state = inference_processes(args.device)
    rank, world_size = (state.process_index, state.num_processes) if state else (0, 1)
    if args.streaming and state:
        raise UserError("--streaming reads the stream in one process (a stream's length is unknown, so it cannot be "
                        "cut into the processes' contiguous shards); run it without accelerate launch, or drop "
                        "--streaming")  # fmt: skip
    hub_kwargs = args.hub_kwargs()

    # 2. The model, the transform of its inputs and its head(s)
    candidate = cands.inspect_model(None, args.checkpoint, hub_kwargs, allow_video=True)
    modality = candidate.modality  # what a --data folder's files are (by extension)
    if candidate.kind == "fusion":
        model, transform, heads, columns, media, optional, modality = _fusion(candidate, args, explicit, device)
    else:
        if candidate.kind == "zero-shot" and not labels:
            raise UserError(f"{args.checkpoint} is a {candidate.modality}-text dual encoder: it predicts zero-shot "
                            "over the class names you give with --labels a,b,c")  # fmt: skip
        if candidate.kind != "zero-shot" and labels:
            raise UserError(f"--labels: {args.checkpoint} is a trained classifier with its own labels "
                            f"{candidate.label_names}; --labels is for zero-shot dual encoders")  # fmt: skip
        cands.load(candidate, labels or candidate.label_names, hub_kwargs, args.prompt_templates)
        model = candidate.model.to(device)
        column = media_column(args, candidate.modality, explicit)
        transform = cands.build_transform(candidate, column, args.max_length_seconds)
        config = getattr(model, "config", None) or model.get_base_model().config  # a PeftModel has no .config
        problem_type = config.problem_type or "single_label_classification"
        threshold = args.threshold if args.threshold is not None else 0.5
        heads = [Head(problem_type, labels or candidate.label_names, args.top_k, threshold)]
        columns, media, optional = {column: column}, {column}, set()

    # 3. The samples, and which of them the output already holds
    # (under a launch the main process reads first: the others then reuse the datasets cache)
    source = dict(dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
                  dataset_split=args.dataset_split, columns=columns, media=media, optional=optional,
                  id_column=args.id_column, keep_columns=keep, cache_dir=args.cache_dir)  # fmt: skip
    if args.streaming:
        inputs = stream_inputs(args.data, **source)
    else:
        with state.main_process_first() if state else contextlib.nullcontext():
            inputs = read_inputs(args.data, modality=modality, **source)
    template = {"id": "", **dict.fromkeys(keep)}
    for head in heads:
        template.update(head.template())
    template["error"] = None
    settings = {name: getattr(args, name) for name in ("top_k", "threshold", "labels", "prompt_templates",
                                                       "max_length_seconds", "id_column")}  # fmt: skip
    writer = PredictionWriter(args.output, template, os.path.abspath(args.checkpoint), settings)
    with state.main_process_first() if state else contextlib.nullcontext():
        if rank == 0:  # parts a crashed sharded run left behind hold finished rows: kept, not predicted again
            writer.merge(writer.leftover_parts())
        done = writer.done_ids()
    if args.streaming:  # the rows whose id the output holds are skipped as the stream reaches them
        rows, total, skipped = StreamRows(inputs, done, args.batch_size), None, len(done)
        if done:
            logger.info("%s already holds %d samples: the stream's rows with their ids are skipped", args.output,
                        len(done))  # fmt: skip
    else:
        positions = [i for i, sample_id in enumerate(inputs.ids) if sample_id not in done]
        if done and rank == 0:
            logger.info("%s already holds %d of %d samples: predicting the other %d", args.output,
                        len(inputs.ids) - len(positions), len(inputs.ids), len(positions))  # fmt: skip
        skipped = len(inputs.ids) - len(positions)
    out = writer
    if state:
        state.wait_for_everyone()  # every process has read the output before any part is merged into it
        out = writer.part(rank, world_size)
    if not args.streaming:
        if state:
            positions = positions[rank * len(positions) // world_size : (rank + 1) * len(positions) // world_size]
        rows, total = Rows(inputs, positions), len(positions)

    # 4. Batches -> rows, appended every --chunk_size rows
    loader = DataLoader(rows, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                        collate_fn=Collate(transform))  # fmt: skip
    empty = {key: None for head in heads for key in head.empty()}
    pending, counts = [], {"predicted": 0, "errors": 0}
    progress = not args.disable_tqdm and rank == 0
    with tqdm(total=total, desc="predict", disable=not progress) as bar, torch.no_grad():
        for good, batch, errors, described in loader:
            fields = {}
            if batch is not None:
                logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
                outputs = logits if isinstance(logits, tuple) else (logits,)
                per_head = [head.fields(out.cpu()) for head, out in zip(heads, outputs, strict=True)]
                fields = {position: {k: v for f in row for k, v in f.items()}
                          for position, *row in zip(good, *per_head, strict=True)}  # fmt: skip
            for position in sorted([*good, *errors]):
                row = {k: _plain(v) for k, v in described[position].items()}  # id, kept columns
                row.update(fields.get(position, empty))
                row["error"] = errors.get(position)
                pending.append(row)
            counts["predicted"] += len(good)
            counts["errors"] += len(errors)
            bar.update(len(good) + len(errors))
            if len(pending) >= args.chunk_size:
                out.append(pending)
                pending = []
        if pending or out is not writer:
            out.append(pending)  # a part file exists even when its shard is empty
    if counts["errors"]:
        logger.warning("%d sample(s) could not be read: their rows in %s carry an `error`", counts["errors"],
                       args.output)  # fmt: skip
    if state:
        gathered = gather_object([counts])  # every process's counts, for the totals
        counts = {key: sum(c[key] for c in gathered) for key in counts}
        if rank == 0:
            writer.merge([writer.part_path(r, world_size) for r in range(world_size)])
        state.wait_for_everyone()
    if rank == 0:
        print(f"Predicted {counts['predicted']} sample(s) ({counts['errors']} unreadable, with an `error`; {skipped} "
              f"already there): {args.output}")  # fmt: skip
    return {**counts, "skipped": skipped, "output": args.output, "processes": world_size}


def _fusion(candidate, args, explicit, device):
    """A fusion checkpoint: its run's columns (run_config.yaml), its saved processor, one head per task."""
    refused = [f"--{name}" for name in ("labels", "prompt_templates", "image_column", "audio_column",
                                        "max_length_seconds") if name in explicit]  # fmt: skip
    if refused:
        raise UserError(f"{', '.join(refused)}: a fusion checkpoint reads the columns and settings its run recorded "
                        f"({os.path.join(args.checkpoint, 'run_config.yaml')}), not these flags")  # fmt: skip
    run = fusion_columns(candidate)
    model, processor = load_fusion(candidate.path, device)
    threshold = args.threshold if args.threshold is not None else float(candidate.run_config.get("threshold", 0.5))
    tasks = model.config.tasks
    heads = [Head(task["problem_type"], task["labels"], args.top_k, threshold,
                  prefix=f"{task['name']}." if len(tasks) > 1 else "") for task in tasks]  # fmt: skip
    columns = {**run.renames, **{c: c for c in [*run.numeric, *run.categorical]}}
    media = {getattr(run, m) for m in ("image", "audio", "video") if getattr(run, m)}
    # A blank medium or text is a missing modality (the model's placeholder stands in), as in the recipe's data;
    # a path that is not there or does not decode is an error row. A video run's sound track (--audio_from_video)
    # is decoded from the video column by the processor's transform: no column of its own.
    optional = media | ({run.text} if run.text else set())
    modality = next(m for m in ("video", "audio", "image") if getattr(run, m) or m == "image")
    return model, processor.transform(train=False), heads, columns, media, optional, modality


def _plain(value):
    """A kept cell as JSON can hold it: an undecoded Hub medium ({"bytes", "path"}) becomes its path."""
    if isinstance(value, dict) and "bytes" in value:
        return value.get("path")
    return value
