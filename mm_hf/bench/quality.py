"""Quality benchmark: every classification recipe and strategy on real weights and offline data, with the plain
baselines run side by side in the same run, on the same splits.

    python -m mm_hf.bench.quality [--realmodels DIR] [--out bench_out] [--only image|audio|fusion] [--quick]

(`make bench-quality`). DIR holds dinov2-small, all-minilm-l6-v2 and whisper-base, built offline by
../shared/realmodels/build.sh. The image recipe runs on a VisionTextDualEncoder made of DINOv2-small + MiniLM
(new, random projections: its zero-shot row is expected near chance) at 112 px; the audio recipe on Whisper-base.

Each recipe runs in-process through its `main([...])` with its DEFAULT flags plus only data, model, output and
(with --num_train_epochs) epoch flags, so the table judges the defaults; every row records its exact argv.
Baselines per dataset:
- sklearn_logreg: LogisticRegression (C chosen on validation) on the same frozen features as the recipe's probe
  (image: the dual encoder's projected image embedding; audio: Whisper encoder states mean-pooled over the clip,
  the encoder on the probe run's --max_length_seconds window as in the recipe);
  sklearn_logreg_cls: on the image tower's pooled output (DINOv2's CLS) before the random projection.
- plain_loop: the article's loop: AutoModelForImageClassification (dinov2-small) / AutoModelForAudioClassification
  (whisper-base) + AdamW at the `full` row's lr, epochs, batch size and weight decay; no augmentation, schedule
  or model selection.
- examples_defaults: the same model trained with the transformers example scripts' defaults, reimplemented:
  run_image_classification (lr 5e-5, batch 8, linear decay, RandomResizedCrop + flip), run_audio_classification
  (its README's lr 3e-5 with 10 % warm-up, linear decay, batch 8, random 20 s windows).
Fusion rows come from `mm_hf.bench.fusion.fusion_rows(realmodels_dir, workdir)`.

Prints one table (recipe, strategy, dataset, mm-hf vs each baseline, wall seconds) and the target checks, and
writes `<out>/bench_quality.json` (rows, checks, sizes, date, machine, versions).
"""

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np

from . import baselines as bl
from . import data
from .fusion import fusion_rows
from .report import attach, environment, format_checks, format_table, row, target_checks
from .runs import bench_image_processor, build_dual_encoder, recipe_rows

REALMODELS = os.path.expanduser("~/.cache/mm-hf-dev/realmodels")
MODEL_FOLDERS = ("dinov2-small", "all-minilm-l6-v2", "whisper-base")
IMAGE_STRATEGIES = ("linear_probe", "full", "lora", "top_k")
# The TrainingArguments defaults a plain loop falls back to when no `full` row ran (lr, batch size, epochs).
TRAINER_DEFAULTS = {
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 8,
    "num_train_epochs": 3.0,
    "weight_decay": 0.0,
}


@dataclass(frozen=True)
class BenchDataset:
    name: str
    modality: str  # image | audio
    write: object  # write(output_dir, per_class, seed) -> info
    per_class: tuple[int, int, int] | None  # train, validation, test samples per class (None: all there are)
    quick_per_class: tuple[int, int, int]
    about: str


DATASETS = (
    BenchDataset(
        "digits",
        "image",
        lambda out, per_class, seed, source="mnist": data.write_grey_digits(out, per_class, source=source, seed=seed),
        (20, 10, 20),
        (3, 2, 2),
        "MNIST scans, 28 px greyscale, 10 classes",
    ),
    BenchDataset(
        "photos",
        "image",
        lambda out, per_class, seed, **_: data.write_photo_crops(out, per_class=per_class, seed=seed),
        (20, 10, 20),
        (3, 2, 2),
        "which of 9 colour photos a crop comes from; test crops from an unseen region",
    ),
    BenchDataset(
        "speech",
        "audio",
        lambda out, per_class, seed, **_: data.write_spoken_digits(out, per_class, seed=seed),
        # 200 test clips: one clip is 0.5 points, the probe target's resolution (30 clips made it 3.3 points).
        (4, 2, 20),
        (2, 1, 1),
        "ten spoken digit words (espeak-ng); test voices unseen in training",
    ),
    BenchDataset(
        "language",
        "audio",
        lambda out, per_class, seed, **_: data.write_spoken_languages(out, per_class, seed=seed),
        (10, 5, 20),  # 200 test clips (was 6 languages x 3: one clip 5.6 points)
        (2, 1, 1),
        "spoken-language ID, 10 languages (espeak-ng); test speakers and numbers unseen",
    ),
    BenchDataset(
        "drums",
        "audio",
        lambda out, per_class, seed, **_: data.write_drum_hits(out, per_class, seed=seed),
        None,  # every recording: 302 train, 51 validation, 111 test clips (kits differ between splits)
        (3, 2, 2),
        "drum instrument (kick, snare, hi-hat, tom, cymbal), real recordings; test kits unseen in training",
    ),
)


def flat_args(source: dict) -> dict:
    """A run's resolved arguments as one {flag: value} dict (run_config.yaml may group them per dataclass)."""
    flat = {}
    for value in source.values():
        if isinstance(value, dict):
            flat.update(value)
    flat.update({k: v for k, v in source.items() if not isinstance(v, dict)})
    return flat


def loop_hparams(resolved: dict, epochs: float | None) -> dict:
    """lr, batch size, epochs and weight decay of the `full` row (the article's loop mirrors them)."""
    source = resolved.get("full") or {}
    flat = flat_args(source)
    out = {k: flat.get(k, default) for k, default in TRAINER_DEFAULTS.items()}
    if epochs is not None:
        out["num_train_epochs"] = epochs
    out["from"] = "the full row" if source else "TrainingArguments defaults (no full row)"
    return out


# Baselines ----------------------------------------------------------------------------------------------------


def image_baselines(
    realmodels, dual_dir, data_dir, hp, epochs, image_size, seed=42, loops=True
) -> tuple[dict, dict, dict]:
    """(accuracies, wall seconds, notes) of the image baselines on one dataset (`loops=False`: sklearn's only)."""
    import torch
    from transformers import AutoModelForImageClassification

    splits = {s: data.read_split(os.path.join(data_dir, s)) for s in data.SPLITS}
    classes = splits["train"][2]
    scores, walls, notes = {}, {}, {}
    feats, walls["sklearn_logreg"] = bl.timed(
        lambda: {s: bl.dual_encoder_image_features(dual_dir, splits[s][0]) for s in data.SPLITS}
    )
    for key, name in (("embeds", "sklearn_logreg"), ("pooled", "sklearn_logreg_cls")):
        probe, wall = bl.timed(bl.logreg_probe, *((feats[s][key], splits[s][1]) for s in data.SPLITS))
        scores[name], notes[name] = probe["accuracy"], f"C={probe['C']}"
        walls[name] = walls.get(name, 0.0) + wall
    walls["sklearn_logreg_cls"] = walls["sklearn_logreg"]  # one feature pass serves both
    if not loops:
        return scores, walls, notes
    processor = bench_image_processor(os.path.join(realmodels, "dinov2-small"), image_size)
    examples_epochs = epochs if epochs is not None else TRAINER_DEFAULTS["num_train_epochs"]
    variants = {
        "plain_loop": (dict(lr=hp["learning_rate"], batch_size=int(hp["per_device_train_batch_size"]),
                            epochs=hp["num_train_epochs"], weight_decay=hp["weight_decay"]), None),
        "examples_defaults": (dict(lr=5e-5, batch_size=8, epochs=examples_epochs, schedule="linear"),
                              bl.examples_image_augment(processor)),
    }  # fmt: skip
    for name, (kwargs, augment) in variants.items():
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = AutoModelForImageClassification.from_pretrained(
            os.path.join(realmodels, "dinov2-small"), num_labels=len(classes), id2label=dict(enumerate(classes))
        )
        train_paths, train_labels, _ = splits["train"]
        bl.finetune_plain(model, bl.image_batcher(processor, train_paths, augment), train_labels, seed=seed, **kwargs)
        test_paths, test_labels, _ = splits["test"]
        scores[name] = bl.accuracy(model, bl.image_batcher(processor, test_paths), len(test_labels), test_labels)
        walls[name] = time.perf_counter() - start
        notes[name] = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return scores, walls, notes


def audio_baselines(
    realmodels, data_dir, hp, epochs, seed=42, loops=True, max_length_seconds=None
) -> tuple[dict, dict, dict]:
    """(accuracies, wall seconds, notes) of the audio baselines on one dataset. `max_length_seconds`: the probe
    row's, so sklearn reads the recipe's features (Whisper on the same window); None: Whisper's 30 s window."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    whisper = os.path.join(realmodels, "whisper-base")
    extractor = AutoFeatureExtractor.from_pretrained(whisper)
    splits = {s: data.read_split(os.path.join(data_dir, s)) for s in data.SPLITS}
    clips = {s: bl.load_clips(splits[s][0], extractor.sampling_rate) for s in data.SPLITS}
    classes = splits["train"][2]
    scores, walls, notes = {}, {}, {}
    start = time.perf_counter()
    feats = {
        s: bl.whisper_encoder_features(whisper, clips[s], max_length_seconds=max_length_seconds) for s in data.SPLITS
    }
    probe = bl.logreg_probe(*((feats[s], splits[s][1]) for s in data.SPLITS))
    scores["sklearn_logreg"] = probe["accuracy"]
    notes["sklearn_logreg"] = (
        f"C={probe['C']}, Whisper window {'30 s' if not max_length_seconds else max_length_seconds}"
    )
    walls["sklearn_logreg"] = time.perf_counter() - start
    if not loops:
        return scores, walls, notes
    examples_epochs = epochs if epochs is not None else TRAINER_DEFAULTS["num_train_epochs"]
    variants = {
        "plain_loop": (dict(lr=hp["learning_rate"], batch_size=int(hp["per_device_train_batch_size"]),
                            epochs=hp["num_train_epochs"], weight_decay=hp["weight_decay"]), None),
        # Whisper has no freeze_feature_encoder(): the script runs it with --freeze_feature_encoder False.
        "examples_defaults": (dict(lr=3e-5, batch_size=8, epochs=examples_epochs, schedule="linear",
                                   warmup_ratio=0.1), 20.0),
    }  # fmt: skip
    for name, (kwargs, max_seconds) in variants.items():
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = AutoModelForAudioClassification.from_pretrained(
            whisper, num_labels=len(classes), id2label=dict(enumerate(classes))
        )
        make_batch = bl.audio_batcher(extractor, clips["train"], max_length_seconds=max_seconds, seed=seed)
        bl.finetune_plain(model, make_batch, splits["train"][1], seed=seed, **kwargs)
        test_labels = splits["test"][1]
        scores[name] = bl.accuracy(model, bl.audio_batcher(extractor, clips["test"]), len(test_labels), test_labels, 8)
        walls[name] = time.perf_counter() - start
        notes[name] = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return scores, walls, notes


def fusion_section(realmodels: str, workdir: str) -> list[dict]:
    """Rows from mm_hf.bench.fusion, or one row saying why it failed."""
    try:
        return fusion_rows(realmodels, os.path.join(workdir, "fusion"))
    except Exception as error:  # noqa: BLE001 - reported in the table
        traceback.print_exc()
        return [row("fusion_imagetext_cls", "-", "-", None, notes=f"error: {error!r}"[:300])]


# Checks and table ---------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--realmodels", default=REALMODELS, help="Folder with " + ", ".join(MODEL_FOLDERS) + ".")
    parser.add_argument("--out", default="bench_out", help="Work folder: data, models, runs, bench_quality.json.")
    parser.add_argument("--only", choices=("image", "audio", "fusion"), help="Run one section only.")
    parser.add_argument("--datasets", nargs="+", help="Only these datasets: " + ", ".join(d.name for d in DATASETS))
    parser.add_argument("--quick", action="store_true", help="Smoke run: a few samples per class, 1 epoch.")
    parser.add_argument(
        "--per_class", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), help="Samples per class (default: per set)."
    )
    parser.add_argument("--num_train_epochs", type=float, help="Epochs for every row (default: the recipes' own).")
    parser.add_argument("--image_strategies", nargs="+", default=list(IMAGE_STRATEGIES))
    parser.add_argument(
        "--audio_strategies",
        nargs="+",
        default=list(IMAGE_STRATEGIES),
        help="audio_cls strategies (default: linear_probe, full, lora, top_k).",
    )
    parser.add_argument(
        "--audio_loop_datasets",
        nargs="*",
        default=["speech"],
        help="Audio sets that get the Whisper plain-loop baselines (default: speech, the smallest training set). "
        "Those loops pay Whisper's fixed 30 s window on every step, as AutoModelForAudioClassification requires: "
        "minutes per epoch per 40 clips here.",
    )
    parser.add_argument("--no_audio_loops", action="store_true", help="Skip the (slow) Whisper plain-loop baselines.")
    parser.add_argument(
        "--no_loops",
        action="store_true",
        help="Skip every plain-loop and examples-defaults baseline (image and audio): e.g. to measure the probes only.",
    )
    parser.add_argument("--digits_source", default="mnist", choices=("mnist", "sklearn"))
    parser.add_argument("--image_size", type=int, default=112, help="Image side the dual encoder's processor uses.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data builders.")
    return parser.parse_args(argv)


def check_realmodels(realmodels: str, needed: list[str]) -> None:
    missing = [n for n in needed if not os.path.isfile(os.path.join(realmodels, n, "config.json"))]
    if missing:
        sys.exit(
            f"real models missing in {realmodels}: {', '.join(missing)}. Build them offline with "
            "../shared/realmodels/build.sh (or pass --realmodels DIR)."
        )


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started, env = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), environment()  # code as run
    epochs = 1.0 if args.quick and args.num_train_epochs is None else args.num_train_epochs
    sections = [args.only] if args.only else ["image", "audio", "fusion"]
    chosen = [d for d in DATASETS if d.modality in sections and (not args.datasets or d.name in args.datasets)]
    if args.datasets and (unknown := set(args.datasets) - {d.name for d in DATASETS}):
        sys.exit(f"unknown --datasets {sorted(unknown)}; choose from {[d.name for d in DATASETS]}")
    needed = {"image": ["dinov2-small", "all-minilm-l6-v2"], "audio": ["whisper-base"], "fusion": list(MODEL_FOLDERS)}
    check_realmodels(args.realmodels, sorted({n for s in sections for n in needed[s]}))
    os.makedirs(args.out, exist_ok=True)
    rows, sizes = [], {}
    for ds in chosen:
        per_class = args.per_class or (ds.quick_per_class if args.quick else ds.per_class)
        per_class = tuple(per_class) if per_class else None
        data_dir = os.path.join(args.out, "data", f"{ds.name}-" + "-".join(map(str, per_class or ["all"])))
        if not os.path.isdir(data_dir):
            try:
                ds.write(data_dir, per_class, args.seed, source=args.digits_source)
            except RuntimeError as error:  # a system package the set needs (espeak-ng, hydrogen-drumkits) is absent
                shutil.rmtree(data_dir, ignore_errors=True)
                print(f"\n=== {ds.name}: skipped: {error}", flush=True)
                rows.append(row("-", "-", ds.name, None, notes=f"skipped: {error}"))
                continue
        counts = {s: len(data.read_split(os.path.join(data_dir, s))[0]) for s in data.SPLITS}
        sizes[ds.name] = {"per_class": dict(zip(data.SPLITS, per_class or ["all"] * 3, strict=True)),
                          "samples": counts, "about": ds.about}  # fmt: skip
        print(f"\n=== {ds.name}: {ds.about}; per class {sizes[ds.name]['per_class']}", flush=True)
        if ds.modality == "image":
            dual = build_dual_encoder(args.realmodels, os.path.join(args.out, "models", "dinov2-minilm-dual"),
                                      args.image_size)  # fmt: skip
            new, resolved = recipe_rows("clip_imagecls", dual, ds, data_dir, args.out, args.image_strategies, epochs,
                                        "zero-shot (before)")  # fmt: skip
            hp = loop_hparams(resolved, epochs)
            attach(new, *image_baselines(args.realmodels, dual, data_dir, hp, epochs, args.image_size,
                                         loops=not args.no_loops))  # fmt: skip
        else:
            whisper = os.path.join(args.realmodels, "whisper-base")
            new, resolved = recipe_rows("audio_cls", whisper, ds, data_dir, args.out, args.audio_strategies, epochs,
                                        "untrained head (before)")  # fmt: skip
            hp = loop_hparams(resolved, epochs)
            window = flat_args(resolved.get("linear_probe") or {}).get("max_length_seconds")
            loops = not (args.no_loops or args.no_audio_loops) and ds.name in args.audio_loop_datasets
            attach(new, *audio_baselines(args.realmodels, data_dir, hp, epochs, loops=loops, max_length_seconds=window))
        rows += new
        print(format_table(new), flush=True)
    if "fusion" in sections:
        rows += fusion_section(args.realmodels, args.out)
    checks = target_checks(rows)
    report = {
        **env,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "started": started,
        # Wall times depend on what else ran: the 1/5/15-minute load average at the end says how busy the CPUs were.
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "command": "python -m mm_hf.bench.quality " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "num_train_epochs": epochs,
        "image_size": args.image_size,
        "sizes": sizes,
        "rows": rows,
        "checks": checks,
    }
    path = os.path.join(args.out, "bench_quality.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=_json_default)
    print(f"\nQuality benchmark, {report['date']}, {report['machine']}\n")
    print(format_table(rows))
    print("\nTargets:\n" + format_checks(checks))
    print(f"\nwritten {path}")
    return report


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


if __name__ == "__main__":
    failed = [r for r in main()["rows"] if str(r.get("notes", "")).startswith("error")]
    sys.exit(1 if failed else 0)  # a row that crashed fails `make bench-quality` after the table is written
