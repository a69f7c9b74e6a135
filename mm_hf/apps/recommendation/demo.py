"""The recommendation demo: build the log, train the ranking model and its ablations, print one table.

    python -m mm_hf.apps.recommendation --output_dir demo_out            (make demo-recommendation)

1. a MovieLens-style log (`data.write_synthetic_log`) -> (user, item) rows (`data.write_ranking_splits`);
2. recipes/fusion_imagetext_cls.py with recipes/configs/recommendation.yaml: image + title + user features;
3. the same config trained again without each input (title + user, image + user, image + title);
4. the popularity baseline (each item's relevance rate on the training rows) scored on the same test rows;
5. one table of recall/ndcg/hit_rate@K, mrr, roc_auc and log_loss, also written to `<output>/results.md`.
"""

import argparse
import json
import os

import numpy as np
import yaml

from ...bench.report import REPO
from ...bench.runs import load_recipe
from ...errors import UserError, run_cli
from ...metrics.tasks import compute_ranking_metrics, compute_task_metrics
from .data import write_ranking_splits, write_synthetic_log

CONFIG = str(REPO / "recipes" / "configs" / "recommendation.yaml")
# Trained ablations: the config with these keys removed (each run learns to do without that input).
ABLATIONS = {
    "title + user (no image)": "image_column",
    "image + user (no title)": "text_column",
    "image + title (no user)": "categorical_columns",
}
# Test-time ablations of the full model: its own test_without_<modality>_* numbers.
MISSING = {"image": "image missing at test", "text": "title missing at test", "tabular": "user missing at test"}


def ranking_columns(ks) -> list[str]:
    k = max(ks)
    return [f"ndcg@{k}", f"recall@{k}", f"hit_rate@{k}", "mrr", "roc_auc", "log_loss"]


def popularity_baseline(train_file: str, test_file: str, ks, seed: int = 0) -> dict:
    """Score each test row by its item's relevance rate on the training rows, (positives + 1) / (rows + 2); ties
    (items with the same counts) broken at random, as a serving system would in some arbitrary order."""
    positives, rows = {}, {}
    with open(train_file) as f:
        for line in map(json.loads, f):
            rows[line["item_id"]] = rows.get(line["item_id"], 0) + 1
            positives[line["item_id"]] = positives.get(line["item_id"], 0) + line["label"]
    with open(test_file) as f:
        test = [json.loads(line) for line in f]
    rates = np.array([(positives.get(r["item_id"], 0) + 1) / (rows.get(r["item_id"], 0) + 2) for r in test])
    scores = rates + 1e-9 * np.random.default_rng(seed).random(len(test))
    labels = np.array([r["label"] for r in test])
    logits = np.log(rates / (1 - rates))
    out = compute_task_metrics("binary_classification", logits, labels)
    out.update(compute_ranking_metrics(scores, labels, [r["user_id"] for r in test], ks))
    return out


def run_recipe(config: dict, path: str) -> dict:
    """recipes/fusion_imagetext_cls.py `main` on `config` (written to `path` first, to rerun by hand)."""
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return load_recipe("fusion_imagetext_cls").main(["--config", path, "--disable_tqdm", "true", "--report_to", "none"])


def run_demo(output_dir: str, config_path: str = CONFIG, overrides=None, log=None, splits=None):
    """Steps 1-5 above under `<output_dir>/recommendation`, with the encoders `python -m mm_hf.demo` wrote in
    `output_dir` (tiny-vit, text-encoder) unless `overrides` (config keys) names others; `log` and `splits` are
    keyword arguments of `write_synthetic_log` / `write_ranking_splits`. Returns {row name: metrics}."""
    overrides = {
        "vision_model_name_or_path": os.path.join(output_dir, "tiny-vit"),
        "text_model_name_or_path": os.path.join(output_dir, "text-encoder"),
        **(overrides or {}),
    }
    for key in ("vision_model_name_or_path", "text_model_name_or_path"):
        if not os.path.isdir(overrides[key]):
            raise UserError(f"{overrides[key]} not found: write the demo encoders first (python -m mm_hf.demo "
                            f"--output_dir {output_dir}), as make demo-recommendation does")  # fmt: skip
    root = os.path.join(output_dir, "recommendation")
    if not os.path.exists(os.path.join(root, "interactions.csv")):
        print("interaction log written:", write_synthetic_log(root, **(log or {})))
    files = write_ranking_splits(root, **(splits or {}))
    with open(config_path) as f:
        config = yaml.safe_load(f)
    config.update(train_file=files["train"], validation_file=files["validation"], test_file=files["test"])
    config.update(overrides)
    ks = config.get("ranking_ks", [1, 5, 10])
    os.makedirs(os.path.join(root, "configs"), exist_ok=True)

    rows = {"popularity (train relevance rate)": popularity_baseline(files["train"], files["test"], ks)}
    full = run_recipe({**config, "output_dir": os.path.join(root, "model")}, os.path.join(root, "configs", "full.yaml"))
    columns = ranking_columns(ks)
    rows["untrained heads (image + title + user)"] = {c: full[f"zeroshot_test_{c}"] for c in columns}
    rows["fine-tuned: image + title + user"] = {c: full[f"test_{c}"] for c in columns}
    for modality, name in MISSING.items():
        rows[f"fine-tuned, {name}"] = {c: full[f"test_without_{modality}_{c}"] for c in columns}
    for name, key in ABLATIONS.items():
        variant = {k: v for k, v in config.items() if k != key}
        slug = key.split("_")[0]
        variant["output_dir"] = os.path.join(root, f"model_without_{slug}")
        results = run_recipe(variant, os.path.join(root, "configs", f"without_{slug}.yaml"))
        rows[f"trained on {name}"] = {c: results[f"test_{c}"] for c in columns}

    table = format_table(rows, columns)
    print(f"\nRecommendation: rank each test user's held-out items among sampled negatives ({files['test']})\n")
    print(table)
    with open(os.path.join(root, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(root, "results.json"), "w") as f:
        json.dump({name: {c: float(m[c]) for c in columns} for name, m in rows.items()}, f, indent=2)
    return rows


def format_table(rows: dict, columns: list[str]) -> str:
    header = ["model", *columns]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += ["| " + " | ".join([name, *(f"{m[c]:.4f}" for c in columns)]) + " |" for name, m in rows.items()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_out", help="Where the log, the models and results.md go.")
    parser.add_argument("--config", default=CONFIG, help="The recipe config the runs start from.")
    args = parser.parse_args(argv)
    return run_demo(args.output_dir, args.config)


if __name__ == "__main__":
    run_cli(main)
