"""`python -m mm_hf.evaluate --retrieval`: dual encoders (CLIP, SigLIP, CLAP, recipes/clip_retrieval.py output folders)
side by side on media-caption retrieval, with text corruptions of the captions.

The test set is read like clip_retrieval's (`--test_dir` with a metadata.jsonl, or `--test_file`, captions in
`--caption_column`) and scored by `mm_hf.retrieval.evaluate_retrieval`, the recipe's own metrics (media->text and
text->media Recall@1/5/10, median/mean rank), so the clean numbers equal the recipe's `test_*` ones.

`--corruptions` corrupt either side of the pairs (mm_hf.corruptions), and the retrieval is scored again per
corruption and severity: an image–text model's image corruptions corrupt the items (images), a CLAP model's audio
corruptions its clips, and `typos` / `word_dropout` every caption (`all`: the model's media corruptions and both text
ones). Draws are seeded per item index (an item's captions share one generator), so every model and every rerun
sees the same corrupted pairs. A corrupted side changes both directions (as queries one way, as the gallery the
other), so the summary is over the four Recall@1/5 of both directions (`recall_keys`).

Error bars and comparisons (main process, from the gathered embeddings): the four Recall@1/5 get 95 % bootstrap CIs
resampling the queries (items one way, captions the other) against the whole gallery, and every two models a paired
bootstrap on the same queries (`scoring.query_confidence_intervals` / `query_paired_tests`). Cost: parameters and
size on disk as for classifiers, and per tower (the media one and the text one) its parameters and the latency of
embedding a batch of real test items / captions (`towers.<modality>`, `cost.time_calls`).
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch
import yaml

from ..args import DataArguments
from ..corruptions.column import CorruptColumn
from ..corruptions.registry import CORRUPTIONS
from ..data.pairs import load_caption_splits
from ..errors import UserError
from ..metrics.robustness import robustness_summary
from ..models import ContrastiveDualEncoderModel
from ..models.text_length import text_max_length
from ..retrieval import build_media, evaluate_retrieval, load_dual_encoder, resolve_modality, tokenize
from .cost import model_cost, peak_memory, real_batch, reset_peak_memory, time_calls
from .processes import main_process_first, process_rank
from .report import evaluation_record, markdown_table, with_ci, write_evaluation
from .scoring import INDEX_COLUMN, query_confidence_intervals, query_paired_tests

# clip_retrieval's --max_seq_length default: captions of a folder without run_config.yaml are cut there too.
DEFAULT_MAX_SEQ_LENGTH = 64
# Flags of the classification flow that retrieval does not use: refused, never ignored.
NOT_FOR_RETRIEVAL = (
    "calibration_data", "save_temperature", "update_card", "prompt_templates", "ood", "robustness_baseline",
    "label_column", "dataset_name",
)  # fmt: skip


def recall_keys(modality: str) -> list[str]:
    """The metrics a retrieval sweep is summarised by: Recall@1/5 in both directions."""
    return [f"{modality}_to_text_recall@1", f"{modality}_to_text_recall@5", f"text_to_{modality}_recall@1",
            f"text_to_{modality}_recall@5"]  # fmt: skip


def query_hits(metrics: dict, modality: str) -> dict[str, np.ndarray]:
    """Pops `evaluate_retrieval(..., ranks=True)`'s per-query ranks out of `metrics` and returns, per Recall@K of
    `recall_keys`, each query's hit (its correct match ranked <= K)."""
    ranks = {d: metrics.pop(f"{d}_ranks") for d in (f"{modality}_to_text", f"text_to_{modality}")}
    return {key: ranks[key.split("_recall@")[0]] <= int(key.split("@")[1]) for key in recall_keys(modality)}


def tower_cost(model, media, tokenizer, test, max_length: int, device, runs: int) -> dict:
    """`{<media modality>: {params[, latency]}, text: {...}}`: each tower's parameters (with its projection) and, with
    `runs` > 0, the latency of embedding a batch of real test items / captions (`time_calls`: batch 1 and 32)."""
    towers = model.parts().towers
    out = {}
    for role, name in (("media", media.name), ("text", "text")):
        prefixes = tuple(f"{p}." for p in (towers[role].path, towers[role].projection) if p)
        out[name] = {"params": sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))}
    if runs > 0:
        dtype = next(model.parameters()).dtype
        items, texts = test.remove_columns("captions"), [c for captions in test["captions"] for c in captions]
        transform = media.transform(train=False)

        def item_batch(size: int) -> dict:  # on the device as embed_media moves them
            batch = real_batch(items, transform, size)
            return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}

        def caption_batch(size: int) -> dict:
            encoded = tokenize(tokenizer, [texts[i % len(texts)] for i in range(size)], max_length)
            return {k: v.to(device) for k, v in encoded.items()}

        with torch.no_grad():
            out[media.name]["latency"] = time_calls(lambda b: media.embed(model, b), item_batch, device, runs=runs)
            out["text"]["latency"] = time_calls(lambda b: model.get_text_features(**b), caption_batch, device,
                                                runs=runs)  # fmt: skip
    return out


def select_retrieval_corruptions(spec: str, modality: str) -> dict[str, str]:
    """`{name: corrupted side}` ("image" / "audio": the items; "text": the captions) from `--corruptions` "all" or a
    comma-separated list, for a `modality`–text dual encoder; a name of another modality is refused with the
    valid ones."""
    available = {**dict.fromkeys(CORRUPTIONS[modality], modality), **dict.fromkeys(CORRUPTIONS["text"], "text")}
    if spec.strip() == "all":
        return available
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise UserError(f"--corruptions {spec}: {unknown or 'no name'} not a corruption of an {modality}–text dual "
                        f"encoder; choose from {sorted(available)} ({modality}: the {modality} items, typos/"
                        "word_dropout: the captions)")  # fmt: skip
    return {name: available[name] for name in names}


class CorruptedMedia:
    """`media` (mm_hf.retrieval's ImageMedia / AudioMedia) whose transform corrupts every item before the usual
    decoding (`CorruptColumn`, draws seeded by the item's row in INDEX_COLUMN, so the same in any worker or order).
    A class, so the transform pickles into DataLoader workers."""

    def __init__(self, media, corruption: str, severity: int, seed: int):
        self.media, self.corruption, self.severity, self.seed = media, corruption, severity, seed
        self.name, self.plural, self.column = media.name, media.plural, media.column

    def transform(self, *, train: bool, augment: bool = False):
        rate = self.media.feature_extractor.sampling_rate if self.name == "audio" else None
        return CorruptColumn(self.media.transform(train=train, augment=augment), modality=self.name,
                             corruption=self.corruption, severity=self.severity, column=self.column, seed=self.seed,
                             index_column=INDEX_COLUMN, sampling_rate=rate)  # fmt: skip

    def embed(self, model, batch: dict):
        return self.media.embed(model, batch)


def corrupted_pairs(dataset, media, corruption: str, side: str, severity: int, seed: int):
    """(dataset, media) to score with `corruption` at `severity` on `side` ("text": the captions, else the items)."""
    if side == "text":
        return corrupt_captions(dataset, corruption, severity, seed), media
    indexed = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    return indexed, CorruptedMedia(media, corruption, severity, seed)


def corrupt_captions(dataset, corruption: str, severity: int, seed: int):
    """`dataset` with every item's captions corrupted; item i's draws depend on (seed, i) only."""
    corruptor = CorruptColumn(lambda batch: batch, modality="text", corruption=corruption, severity=severity,
                              column="captions", seed=seed)  # fmt: skip
    return dataset.map(
        lambda batch, indices: {"captions": [corruptor.corrupt(c, i) for c, i in zip(batch["captions"], indices, strict=True)]},
        batched=True, with_indices=True, load_from_cache_file=False, desc=f"{corruption}@{severity}",
    )  # fmt: skip


def read_test_pairs(data_args, column: str, caption_column: str, cache_dir, skip_bad: bool):
    """The test split alone as clip_retrieval reads it (media column + `captions` lists)."""
    source = {"test_dir": data_args.test_dir, "test_file": data_args.test_file}
    if not any(source.values()):
        raise UserError(
            "--retrieval scores --test_dir (with a metadata.jsonl) or --test_file pairs of media + captions"
        )
    # load_caption_splits reads splits next to a training one: the test source stands in for it, nothing held out.
    only_test = DataArguments(train_dir=data_args.test_dir, train_file=data_args.test_file, train_val_split=0.0,
                              max_predict_samples=data_args.max_predict_samples, **source)  # fmt: skip
    return load_caption_splits(only_test, column, caption_column, cache_dir, skip_bad, media_flag=None)["test"]


def evaluate_retrieval_models(found, args, data_args, failed: dict, device, command: str, severities, modality_column,
                              state=None):  # fmt: skip
    """evaluation.json of the dual encoders in `found` on the test pairs (and their corrupted items or captions);
    returns it.

    `state`: `inference_processes`' group under `accelerate launch` (call on every process): the item and caption
    embeddings of each pass are split across the processes and gathered in order (`evaluate_retrieval`, through
    `mm_hf.feature_cache.shared_pass`), the similarities, Recall@K and the files are the main process's, which
    returns the dict (the others return None)."""
    rank, world_size = process_rank(state)
    others = [c.name for c in found if c.kind != "zero-shot"]
    if others:
        raise UserError(f"--retrieval scores dual encoders (CLIP/SigLIP/CLAP); --model {', '.join(others)} are not")
    results, sets, corruptions, hits = {}, {}, [], {}
    test = None
    for candidate in found:
        reset_peak_memory(device)
        try:
            backbone, processor, _ = load_dual_encoder(candidate.path, **args.hub_kwargs())
        except Exception as error:  # noqa: BLE001 (reported; the others are still evaluated)
            failed[candidate.name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            continue
        modality = resolve_modality("auto", backbone.config)
        # Checked before any scoring: which names apply depends on the model's modality.
        targets = select_retrieval_corruptions(args.corruptions, modality) if args.corruptions else {}
        column = modality_column(modality)
        media = build_media(modality, processor, column, max_length_seconds=args.max_length_seconds)
        if test is None:  # every item decoded once (bad ones refused, or dropped with --skip_bad_samples)
            with main_process_first(state):  # the main process reads first; the others reuse the datasets cache
                test = read_test_pairs(data_args, column, args.caption_column, args.cache_dir,
                                       data_args.skip_bad_samples)  # fmt: skip
                test, skipped = media.check(test, skip_bad=data_args.skip_bad_samples, split_name="test")
            sets["test"] = {"source": data_args.test_dir or data_args.test_file, "samples": len(test), "media": modality,
                            "skipped_bad_samples": len(skipped)}  # fmt: skip
        score = dict(batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers,
                     max_length=text_max_length(processor.tokenizer, backbone.config, _max_seq_length(candidate.path)))  # fmt: skip
        # The recipe's wrapper, whose get_*_features give the projected embeddings its retrieval metrics are over.
        backbone = ContrastiveDualEncoderModel.from_backbone(backbone, name_or_path=candidate.path).to(device).eval()
        clean = evaluate_retrieval(backbone, test, media, processor.tokenizer, ranks=True, **score)
        entry = {
            "path": candidate.path,
            "kind": "dual-encoder",
            "modality": modality,
            "sets": {"test": {"metrics": clean}},
        }
        if rank == 0:  # evaluate_retrieval ranks on the main process; the others get {}
            hits[candidate.name] = query_hits(clean, modality)
            entry["sets"]["test"]["confidence_intervals"] = query_confidence_intervals(
                hits[candidate.name], args.num_resamples, args.seed
            )
        if targets:
            corruptions = list(dict.fromkeys([*corruptions, *targets]))
            sweep = {}
            for name, side in targets.items():
                sweep[name] = {}
                for severity in severities:
                    pairs, corrupted_media = corrupted_pairs(test, media, name, side, severity, args.seed)
                    sweep[name][str(severity)] = evaluate_retrieval(backbone, pairs, corrupted_media,
                                                                    processor.tokenizer, **score)  # fmt: skip
            entry["corruption_targets"] = targets
        if targets and rank == 0:  # evaluate_retrieval ranks on the main process; the others get {}
            keys, clean = recall_keys(modality), entry["sets"]["test"]["metrics"]
            entry["corruption_metrics"] = sweep
            entry["corruptions"] = {c: {s: {k: m[k] for k in keys} for s, m in per.items()} for c, per in sweep.items()}
            entry["robustness"] = {
                k: robustness_summary(clean[k], {c: [m[k] for m in per.values()] for c, per in sweep.items()})
                for k in keys
            }
        entry["cost"] = model_cost(candidate, backbone)
        entry["cost"]["towers"] = tower_cost(backbone, media, processor.tokenizer, test, score["max_length"], device,
                                             args.latency_runs if rank == 0 else 0)  # fmt: skip
        entry["cost"].update(peak_memory(device))
        results[candidate.name] = entry
    if not results:
        raise UserError("no model could be evaluated: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
    if rank != 0:  # the others embedded their shares; the numbers and files are the main process's
        return None
    # Every two models on the same queries (models of one media modality: the same items and captions).
    paired = {"test": {f"{a} vs {b}": query_paired_tests(hits[a], hits[b], args.num_resamples, args.seed)
                       for a, b in itertools.combinations(results, 2) if hits[a].keys() == hits[b].keys()}}  # fmt: skip
    evaluation = evaluation_record(
        command=command, modality="retrieval", device=device, processes=world_size, sets=sets, corruptions=corruptions,
        severities=severities, seed=args.seed, models=results, failed=failed, paired_tests=paired,
    )  # fmt: skip
    path = write_evaluation(args.output_dir, evaluation, _markdown(evaluation))
    print(f"Evaluated {', '.join(results)} on retrieval: {path}")
    return evaluation


def _max_seq_length(path: str) -> int:
    """The caption length a clip_retrieval run trained with (its run_config.yaml), else that recipe's default."""
    file = os.path.join(path, "run_config.yaml")
    if os.path.isfile(file):
        with open(file) as f:
            return int((yaml.safe_load(f) or {}).get("max_seq_length") or DEFAULT_MAX_SEQ_LENGTH)
    return DEFAULT_MAX_SEQ_LENGTH


def _markdown(evaluation: dict) -> str:
    lines = ["# Retrieval evaluation\n", f"`{evaluation['command']}`\n"]
    for name, entry in evaluation["models"].items():
        m = entry["modality"]
        metrics = entry["sets"]["test"]["metrics"]
        keys = recall_keys(m)
        lines.append(f"\n## {name} ({m})\n\n| " + " | ".join(["set", *keys]) + " |\n|" + " --- |" * (len(keys) + 1))
        intervals = entry["sets"]["test"]["confidence_intervals"]
        lines.append("| test [95 % CI, queries resampled] | " + " | ".join(with_ci(metrics, intervals, k) for k in keys)
                     + " |")  # fmt: skip
        targets = entry.get("corruption_targets") or {}
        for corruption, per in (entry.get("corruption_metrics") or {}).items():
            side = "captions" if targets.get(corruption) == "text" else f"{m} items"
            for severity, scores in per.items():
                lines.append(f"| {corruption}@{severity} ({side}) | " + " | ".join(f"{scores[k]:.4f}" for k in keys)
                             + " |")  # fmt: skip
        if entry.get("robustness"):
            lines.append("\nOver the corruptions (relative: corrupted / clean):\n\n| summary | " + " | ".join(keys) + " |\n|"
                         + " --- |" * (len(keys) + 1))  # fmt: skip
            for label, field in (("mean", "mean_corruption_accuracy"), ("relative to clean", "relative_accuracy")):
                lines.append(f"| {label} | " + " | ".join(f"{entry['robustness'][k][field]:.4f}" for k in keys) + " |")
    pairs = evaluation["paired_tests"]["test"]
    if pairs:
        rows = [[pair, key.removeprefix("paired_bootstrap_"), t["difference"]["estimate"],
                 f"[{t['difference']['low']:.3f}, {t['difference']['high']:.3f}]", t["p_value"]]
                for pair, tests in pairs.items() for key, t in tests.items()]  # fmt: skip
        lines.append("\n## Paired bootstrap on the same queries (B − A, one-sided p of \"B beats A\")\n\n"
                     + markdown_table(["A vs B", "metric", "Δ (B − A)", "95 % CI", "p"], rows))  # fmt: skip
    rows = []
    for name, entry in evaluation["models"].items():
        cost = entry["cost"]
        for tower, values in cost["towers"].items():
            latency = values.get("latency", {})
            rows.append([name, tower, values["params"], cost["total_params"], cost["trainable_params"],
                         "–" if cost["disk_bytes"] is None else f"{cost['disk_bytes'] / 1e6:.1f}",
                         *(_ms(latency.get(f"batch_{b}", {}).get("p50_s")) for b in (1, 32)),
                         _ms(latency.get("batch_32", {}).get("p95_s"))])  # fmt: skip
    lines.append("\n## Cost (embedding latency per batch of real test items / captions)\n\n" + markdown_table(
        ["model", "tower", "tower params", "params", "trainable", "disk MB", "bs1 p50 ms", "bs32 p50 ms",
         "bs32 p95 ms"], rows))  # fmt: skip
    if evaluation["failed"]:
        lines.append("\nNot evaluated: " + "; ".join(f"{n} ({why})" for n, why in evaluation["failed"].items()))
    return "\n".join(lines) + "\n"


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{1000 * seconds:.2f}"
