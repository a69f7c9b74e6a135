"""The benchmark's rows, target checks, table and environment record (`mm_hf.bench.quality` writes them)."""

import datetime
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def row(recipe, strategy, dataset, mmhf, wall=None, argv=None, notes="") -> dict:
    return {
        "recipe": recipe,
        "strategy": strategy,
        "dataset": dataset,
        "metric": "accuracy",
        "mmhf": mmhf,
        "baselines": {},
        "wall_s": {"mmhf": None if wall is None else round(wall, 1)},
        "argv": argv,
        "notes": notes,
    }


def attach(rows: list[dict], scores: dict, walls: dict, notes: dict) -> None:
    for r in rows:
        r["baselines"] = {k: round(v, 4) for k, v in scores.items()}
        r["wall_s"].update({k: round(v, 1) for k, v in walls.items()})
        r["baseline_notes"] = notes


# Fusion -------------------------------------------------------------------------------------------------------


def target_checks(rows: list[dict], frozen_enough: float = 0.98) -> list[dict]:
    """The targets the table must let us check, one entry per dataset where they apply (pass: True/False)."""
    checks = []
    by = {}
    for r in rows:
        by.setdefault((r["recipe"], r["dataset"]), {})[r["strategy"]] = r

    def add(name, dataset, passed, detail):
        checks.append({"check": name, "dataset": dataset, "pass": passed, "detail": detail})

    for (recipe, dataset), strategies in by.items():
        score = {s: r["mmhf"] for s, r in strategies.items() if r["mmhf"] is not None}
        base = next(iter(strategies.values()))["baselines"]
        if "full" in score and "plain_loop" in base:
            add("full >= plain loop", dataset, score["full"] >= base["plain_loop"],
                f"{score['full']:.3f} vs {base['plain_loop']:.3f}")  # fmt: skip
        if "lora" in score and "linear_probe" in score:
            frozen = max(score["linear_probe"], base.get("sklearn_logreg", 0.0))
            passed = None if frozen >= frozen_enough else score["lora"] >= score["linear_probe"]
            add(f"lora >= linear_probe (where frozen < {frozen_enough:.2f})", dataset, passed,
                f"{score['lora']:.3f} vs {score['linear_probe']:.3f}")  # fmt: skip
        before = next((s for s in score if "before" in s), None)
        if before:
            for s in score:
                if s != before:
                    add(f"{s} > {before}", dataset, score[s] > score[before], f"{score[s]:.3f} vs {score[before]:.3f}")
        if "linear_probe" in score and "sklearn_logreg" in base:
            gap = score["linear_probe"] - base["sklearn_logreg"]
            # 0.5 points inclusive: 0.820 - 0.825 is -0.0050000000000000044 in floats.
            add("linear_probe within 0.5 pt of sklearn", dataset, gap >= -0.005 - 1e-9, f"{100 * gap:+.1f} pt")
        if recipe.startswith("fusion"):
            mlp = next((v for k, v in base.items() if "mlp" in k), None)
            for s, value in score.items():
                if mlp is not None:
                    add(
                        f"fusion {s} >= MLP on concatenated features",
                        dataset,
                        value >= mlp,
                        f"{value:.3f} vs {mlp:.3f}",
                    )
    return checks


def format_table(rows: list[dict]) -> str:
    names = []
    for r in rows:
        names += [k for k in r["baselines"] if k not in names]

    def cell(value):
        return "-" if value is None else f"{value:.3f}"

    header = ["recipe", "strategy", "dataset", "mm-hf", *names, "wall s (mm-hf)", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        wall = r["wall_s"].get("mmhf")
        cells = [r["recipe"], r["strategy"], r["dataset"], cell(r["mmhf"])]
        cells += [cell(r["baselines"].get(n)) for n in names]
        cells += ["-" if wall is None else f"{wall:.0f}", r.get("notes", "")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    walls = {}
    for r in rows:
        for k, v in r["wall_s"].items():
            if k != "mmhf" and v is not None:
                walls.setdefault(r["dataset"], {})[k] = v
    if walls:
        lines += ["", "Baseline wall seconds: " + "; ".join(
            f"{d}: " + ", ".join(f"{k} {v:.0f}" for k, v in w.items()) for d, w in walls.items())]  # fmt: skip
    return "\n".join(lines)


def format_checks(checks: list[dict]) -> str:
    mark = {True: "PASS", False: "FAIL", None: "n/a "}
    return "\n".join(f"{mark[c['pass']]} {c['check']} [{c['dataset']}]: {c['detail']}" for c in checks)


def environment() -> dict:
    import sklearn
    import torch
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft_version,
            "scikit-learn": sklearn.__version__,
            "mm_hf commit": commit,
        },
    }


# Driver -------------------------------------------------------------------------------------------------------
