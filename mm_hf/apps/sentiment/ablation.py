"""The ablation table: the fused run's settings trained on each modality alone (`ablate`), next to the fused
model before and after training and with each modality missing at test time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ...errors import UserError
from .clips import CASE_FACTORS, SENTIMENTS, best_accuracy

# The config keys that belong to one modality: a single-modality run drops the others'.
MODALITY_CONFIG_KEYS = {
    "video": ("video_column", "vision_model_name_or_path", "vision_strategy", "image_pooling", "num_frames",
              "frame_pooling", "temporal_pooling"),
    "audio": ("audio_column", "audio_model_name_or_path", "audio_strategy", "audio_pooling", "audio_from_video",
              "max_length_seconds"),
    "text": ("text_column", "text_model_name_or_path", "text_strategy", "text_pooling", "max_seq_length"),
}  # fmt: skip
# Where each single-modality run goes: frames need the video recipe; a sound file or a text the image/text one.
SINGLE_MODALITY_RECIPES = {
    "video": "video_cls.py",
    "audio": "fusion_imagetext_cls.py",
    "text": "fusion_imagetext_cls.py",
}


def single_modality_config(config: dict, modality: str, audio_column: str = "audio") -> dict:
    """The fused run's `config` (a sentiment.yaml dict) restricted to `modality`: the other modalities' keys dropped,
    the output folder `<output_dir>_only_<modality>`. Audio alone is read from `audio_column` (the WAV files
    `prepare` extracts) instead of the clips' sound track, since only the video recipe decodes clips."""
    if modality not in MODALITY_CONFIG_KEYS:
        raise ValueError(f"modality must be one of {sorted(MODALITY_CONFIG_KEYS)}, got {modality!r}")
    dropped = {key for other, keys in MODALITY_CONFIG_KEYS.items() if other != modality for key in keys}
    single = {k: v for k, v in config.items() if k not in dropped}
    if modality == "audio" and config.get("audio_from_video"):
        single.pop("audio_from_video")
        single["audio_column"] = audio_column
    if modality == "audio" and not single.get("audio_column"):
        raise UserError("the audio-only run needs audio_column (or audio_from_video) in the config")
    single["output_dir"] = f"{config['output_dir'].rstrip('/')}_only_{modality}"
    return single


def recipes_dir() -> Path:
    """recipes/ of the checkout this package runs from (the recipes are scripts, not part of the package)."""
    folder = Path(__file__).resolve().parents[3] / "recipes"
    if not (folder / "video_cls.py").is_file():
        raise FileNotFoundError(f"{folder}/video_cls.py not found: run from a clone of the repository (--recipes_dir)")
    return folder


def run_in_subprocess(script: Path, argv: list[str]) -> None:
    subprocess.run([sys.executable, str(script), *argv], check=True)


def run_single_modality(
    config_path: str, modality: str, extra_args=(), runner=run_in_subprocess, recipes: Path | None = None
) -> str:
    """Train and test the fused run's settings on `modality` alone; returns its output folder. The derived config is
    written next to it (`<output_dir>_only_<modality>.yaml`: what ran, to rerun by hand); `extra_args` go to the
    recipe's command line; `runner(script, argv)` runs it (a subprocess by default, in-process in tests)."""
    config = _read_config(config_path)
    single = single_modality_config(config, modality)
    path = f"{single['output_dir']}.yaml"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# {modality} alone: {config_path} without the other modalities (mm_hf.apps.sentiment ablate)\n")
        yaml.safe_dump(single, f, sort_keys=False)
    runner((recipes or recipes_dir()) / SINGLE_MODALITY_RECIPES[modality], ["--config", path, *extra_args])
    return single["output_dir"]


def _read_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"--config {path} not found: pass the fused run's YAML (e.g. recipes/configs/sentiment.yaml)")
    with open(path) as f:
        return yaml.safe_load(f)


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: has that run finished? (train it first, or drop --report_only)")
    with open(path) as f:
        return json.load(f)


def _per_class(report: dict) -> dict:
    """The single head's scores from a `task_report.json` (one task, named after the label column)."""
    (scores,) = report.values()
    return scores


def ablation_rows(fused_dir: str, single_dirs: dict[str, str]) -> list[tuple[str, dict]]:
    """(row name, scores) for the table: the fused run before and after training, with each modality missing at
    test time, then each single-modality run, all on the split the runs measured (test, else validation). Scores
    hold accuracy, macro_f1 and `<class>_f1` where measured."""
    results = _read_json(os.path.join(fused_dir, "all_results.json"))
    split = _read_json(os.path.join(fused_dir, "run_info.json"))["eval_split"]
    after = _per_class(_read_json(os.path.join(fused_dir, "task_report.json")))
    before = _per_class(_read_json(os.path.join(fused_dir, "zeroshot_task_report.json")))
    modalities = json.loads(Path(fused_dir, "config.json").read_text())["modalities"]
    rows = [("fused, untrained heads", before), (f"fused {'+'.join(modalities)}", after)]
    for modality in modalities:
        prefix = f"{split}_without_{modality}_"
        rows.append(
            (f"fused, {modality} missing", {k.removeprefix(prefix): v for k, v in results.items() if prefix in k})
        )
    for modality, folder in single_dirs.items():
        rows.append((f"{modality} alone", _per_class(_read_json(os.path.join(folder, "task_report.json")))))
    return rows


def format_ablation_table(rows: list[tuple[str, dict]], classes=SENTIMENTS) -> str:
    """Markdown: run | accuracy | macro-F1 | F1 per class ("–" where a run did not measure it)."""
    header = ("run", "accuracy", "macro-F1", *(f"F1 {c}" for c in classes))
    keys = ("accuracy", "macro_f1", *(f"{c}_f1" for c in classes))
    body = [(name, *(f"{scores[k]:.4f}" if k in scores else "–" for k in keys)) for name, scores in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    rule = ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]
    lines = [header, rule, *body]
    return "\n".join("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                       enumerate(zip(cells, widths, strict=True))) + " |" for cells in lines) + "\n"  # fmt: skip


def ablation_summary(rows: list[tuple[str, dict]]) -> dict:
    """The fused model's macro-F1, the best single-modality run's, and the margin between them."""
    scores = dict(rows)
    fused = next(s for name, s in rows if name.startswith("fused ") and "," not in name)["macro_f1"]
    singles = {name: s["macro_f1"] for name, s in scores.items() if name.endswith(" alone")}
    best = max(singles, key=singles.get)
    return {"fused_macro_f1": fused, "best_single": best, "best_single_macro_f1": singles[best],
            "margin": fused - singles[best]}  # fmt: skip


def factor_ceilings(rows_file: str) -> dict[str, float] | None:
    """Best possible accuracy on a split from each generating factor alone (synthetic data only: None when the rows
    lack the `words`/`voice`/`face` columns)."""
    with open(rows_file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows or not all(f in rows[0] for f in CASE_FACTORS):
        return None
    for row in rows:
        row["annotation"] = row["label"]
    names = {"words": "text", "voice": "audio", "face": "video"}
    return {names[f]: best_accuracy(rows, (f,)) for f in CASE_FACTORS}


def ablate(config_path: str, modalities, extra_args=(), train: bool = True, runner=run_in_subprocess) -> dict:
    """Run each single-modality model (unless `train` is False: their folders are read as they are), then print and
    write (`<output_dir>/ablations.md`, `ablations.json`) the table next to the fused run of `config_path`."""
    config = _read_config(config_path)
    fused = config["output_dir"]
    singles = {}
    for modality in modalities:
        if train:
            singles[modality] = run_single_modality(config_path, modality, extra_args, runner)
        else:
            singles[modality] = single_modality_config(config, modality)["output_dir"]
    rows = ablation_rows(fused, singles)
    table = format_ablation_table(rows)
    summary = ablation_summary(rows)
    ceilings = factor_ceilings(config["test_file"]) if config.get("test_file") else None
    lines = [f"Sentiment on {config.get('test_file', 'the test split')}: fused vs missing vs single modalities", "",
             table]  # fmt: skip
    if ceilings:
        best = ", ".join(f"{m} {v:.2f}" for m, v in ceilings.items())
        lines.append(f"Best possible accuracy from one modality's generating factor alone: {best}.")
    lines.append(
        f"Fused macro-F1 {summary['fused_macro_f1']:.4f} vs the best single modality ({summary['best_single']}) "
        f"{summary['best_single_macro_f1']:.4f}: {summary['margin']:+.4f}."
    )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    Path(fused, "ablations.md").write_text(text)
    Path(fused, "ablations.json").write_text(json.dumps({"rows": dict(rows), **summary}, indent=2) + "\n")
    return {"rows": rows, **summary}
