"""Robust fine-tuning on real weights (issue 13): zero-shot, linear probe, full fine-tuning, LP-FT and FLYP, each
with its WiSE-FT curve, on in-distribution and shifted test sets.

    python -m mm_hf.bench.robust --out bench_out/robust            # ~/.cache/mm-hf-dev/realmodels, CPU, minutes

1. The dual encoder: DINOv2-small image tower + MiniLM text tower + new projections (`bench.runs.build_dual_encoder`),
   aligned first with `recipes/clip_retrieval.py` (LiT: image tower locked, text tower and projections trained) on
   captioned photo crops ("a photo of the {name}."), so its zero-shot classifier means something: the
   "pre-training" the robust methods try to keep.
2. The task: which photo a crop comes from (`bench.data.write_photo_crops`, other crops than the alignment's: another
   seed); ID test = the photos' right-hand bands; OOD = the same test crops at low contrast (mm_hf.corruptions
   `contrast`, severity 3) and in greyscale.
3. One `recipes/clip_imagecls.py` run per method, each with `--wise_ft_alphas` and both OOD sets (`--ood_dir`), α
   chosen on the ID validation split: the endpoints give the method itself (α = 1) and the zero-shot model (α = 0).

Writes `robust.md` (methods × sets) and `robust.json` (every run's all_results.json) under --out.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image, ImageOps

from ..corruptions import CORRUPTIONS
from . import data
from .runs import build_dual_encoder, run_recipe

PROMPT = "a photo of the {}."
ALPHAS = "0,0.25,0.5,0.75,1"
METHODS = {  # name -> clip_imagecls flags
    "linear probe": ["--finetune_strategy", "linear_probe"],
    "full": ["--finetune_strategy", "full"],
    "LP-FT": ["--finetune_strategy", "lp_ft", "--lp_ft_second_stage", "full"],
    "FLYP": ["--finetune_strategy", "full", "--loss", "flyp"],
}


def write_shifted(test_dir: str, out_dir: str) -> dict[str, str]:
    """The test crops at contrast severity 3 and in greyscale, as class folders; returns NAME -> folder."""

    shifts = {
        "contrast": lambda image, i: CORRUPTIONS["image"]["contrast"](image, 3, np.random.default_rng(i)),
        "greyscale": lambda image, i: ImageOps.grayscale(image).convert("RGB"),
    }
    folders = {}
    for name, shift in shifts.items():
        folders[name] = os.path.join(out_dir, name)
        for label in sorted(os.listdir(test_dir)):
            os.makedirs(os.path.join(folders[name], label), exist_ok=True)
            for i, file in enumerate(sorted(os.listdir(os.path.join(test_dir, label)))):
                image = Image.open(os.path.join(test_dir, label, file)).convert("RGB")
                shift(image, i).save(os.path.join(folders[name], label, file))
    return folders


def write_captions(split_dir: str) -> None:
    """metadata.jsonl for clip_retrieval: each crop captioned with its photo's name."""
    with open(os.path.join(split_dir, "metadata.jsonl"), "w") as f:
        for label in sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))):
            for file in sorted(os.listdir(os.path.join(split_dir, label))):
                f.write(json.dumps({"file_name": f"{label}/{file}", "caption": PROMPT.format(label)}) + "\n")


def align(model: str, align_dir: str, out: str, epochs: float) -> str:
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    argv = ["--model_name_or_path", model, "--train_dir", os.path.join(align_dir, "train"),
            "--validation_dir", os.path.join(align_dir, "validation"), "--output_dir", out, "--overwrite_output_dir",
            "true", "--do_train", "--finetune_strategy", "lock_image", "--num_train_epochs", str(epochs),
            "--per_device_train_batch_size", "16", "--learning_rate", "1e-4", "--save_strategy", "no",
            "--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--max_seq_length", "16"]  # fmt: skip
    from .runs import load_recipe

    load_recipe("clip_retrieval").main(argv)  # kept: the aligned weights are the next step's model
    return out


def method_row(name: str, results: dict, ood: list[str]) -> list[dict]:
    """The method (α = 1) and its WiSE-FT (α*) rows: ID test accuracy, validation accuracy, each OOD accuracy."""
    curve = {p["alpha"]: p for p in results["wise_ft_curve"]}
    alpha = results["wise_ft_alpha"]

    def row(label, test, point):
        return {"model": label, "test": test, "validation": point["validation"]["accuracy"],
                **{s: point[s]["accuracy"] for s in ood}}  # fmt: skip

    return [
        row(name, results["finetuned_test_accuracy"], curve[1.0]),
        row(f"WiSE-FT of {name} (α* = {alpha:g})", results["test_accuracy"], curve[alpha]),
    ]


def format_table(rows: list[dict], ood: list[str]) -> str:
    header = ["model", "ID test", "ID validation"] + [f"OOD {s}" for s in ood]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["model"], r["test"], r["validation"]] + [r[s] for s in ood]
        lines.append("| " + " | ".join(c if isinstance(c, str) else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench_out/robust")
    parser.add_argument("--realmodels", default=os.path.expanduser("~/.cache/mm-hf-dev/realmodels"))
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--per_class", default="10,5,10", help="train,validation,test crops per photo")
    parser.add_argument("--align_epochs", type=float, default=10)
    parser.add_argument("--epochs", type=float, default=5, help="fine-tuning epochs of full, LP-FT and FLYP")
    # CLIP-style fine-tuning rates (WiSE-FT, FLYP: 1e-5 to 3e-5), one for every trained method, not the recipe's
    # 1e-4 default for a random head.
    parser.add_argument("--learning_rate", type=float, default=2e-5, help="of full, LP-FT's second stage and FLYP")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    per_class = tuple(int(n) for n in args.per_class.split(","))
    task, align_data = os.path.join(out, "photos"), os.path.join(out, "align")
    if not os.path.isdir(task):
        data.write_photo_crops(task, per_class=per_class, size=args.image_size, seed=0)
        data.write_photo_crops(align_data, per_class=per_class, size=args.image_size, seed=1)
        for split in ("train", "validation"):
            write_captions(os.path.join(align_data, split))
    shifted = write_shifted(os.path.join(task, "test"), os.path.join(out, "shifted"))
    base = build_dual_encoder(args.realmodels, os.path.join(out, "dual_encoder"), image_size=args.image_size)
    model = align(base, align_data, os.path.join(out, "aligned"), args.align_epochs)

    rows, everything = [], {}
    for name in args.methods.split(","):
        argv = ["--model_name_or_path", model, "--output_dir", os.path.join(out, "runs", name.replace(" ", "_")),
                "--overwrite_output_dir", "true", "--do_train", "--do_eval", "--do_predict",
                "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", "16",
                "--head_init", "zeroshot", "--prompt_templates", PROMPT, "--save_strategy", "no",
                "--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--wise_ft_alphas", ALPHAS,
                *METHODS[name]]  # fmt: skip
        if name != "linear probe":
            argv += ["--learning_rate", str(args.learning_rate)]
        for split in data.SPLITS:
            argv += [f"--{split}_dir", os.path.join(task, split)]
        for shift, folder in shifted.items():
            argv += ["--ood_dir", f"{shift}={folder}"]
        results, _, wall = run_recipe("clip_imagecls", argv)
        everything[name] = {**results, "wall_seconds": wall}
        if not rows:
            start = {p["alpha"]: p for p in results["wise_ft_curve"]}[0.0]
            rows.append({"model": "zero-shot (aligned dual encoder)", "test": results["zeroshot_test_accuracy"],
                         "validation": start["validation"]["accuracy"],
                         **{s: start[s]["accuracy"] for s in shifted}})  # fmt: skip
        rows += method_row(name, results, list(shifted))
        table = format_table(rows, list(shifted))
        with open(os.path.join(out, "robust.md"), "w") as f:
            f.write(table)
        with open(os.path.join(out, "robust.json"), "w") as f:
            json.dump(everything, f, indent=2)
        print(table, flush=True)


if __name__ == "__main__":
    main()
