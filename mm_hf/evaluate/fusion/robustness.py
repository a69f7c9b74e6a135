"""The corruption passes of a fusion model: which corruptions apply to its modalities (`--corruptions`), the test set
scored under each corruption and severity (a video column's decoded frames take the image corruptions), and the
robustness summary of its headline metric."""

from __future__ import annotations

from ...corruptions.column import CorruptColumn
from ...corruptions.registry import CORRUPTIONS
from ...errors import UserError
from ...metrics.robustness import robustness_summary
from ..scoring import INDEX_COLUMN
from .scoring import task_scores


def select_fusion_corruptions(spec: str, modalities: list[str], flag: str = "--corruptions") -> list[str]:
    """Corruption names for a fusion model's `modalities` from "all" or a comma-separated list; each name belongs to
    one modality (image: gaussian_noise ...; text: typos, word_dropout; audio: noise ...) and corrupts that column;
    a video model's image corruptions corrupt every frame of its clips."""
    visual = [m for m in ("image", "video") if m in modalities]
    available = {name: m for m in ("image", "text", "audio") if m in modalities or (m == "image" and visual)
                 for name in CORRUPTIONS[m]}  # fmt: skip
    if spec.strip() == "all":
        return list(available)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise UserError(f"{flag} {spec}: {unknown or 'no name'} not a corruption of this model's modalities "
                        f"{modalities}; choose from {sorted(available)}")  # fmt: skip
    return names


def corruption_modality(name: str, columns=("image", "text", "audio")) -> str:
    """The modality (column) corruption `name` applies to among `columns`: an image corruption corrupts a video
    column's frames when there is no image column."""
    modality = next(m for m, table in CORRUPTIONS.items() if name in table)
    return "video" if modality == "image" and "image" not in columns and "video" in columns else modality


def fusion_corruption_sweep(model, dataset, transform, task: dict, names, severities, *, seed: int, sampling_rate,
                            name: str, **run) -> dict:  # fmt: skip
    """`{corruption: {severity: compute_task_metrics}}`: the head on `dataset` (canonical columns image/video/text/
    audio) with each corruption applied to its modality's column (a missing value stays missing), seeded per row
    index. A video column's clips are decoded to the processor's frames and each frame corrupted (the same draws for
    every frame of a clip, mm_hf.corruptions), which the transform then uses instead of decoding the file."""
    if INDEX_COLUMN not in dataset.column_names:
        dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    out = {}
    for corruption in names:
        modality = corruption_modality(corruption, dataset.column_names)
        out[corruption] = {}
        for severity in severities:
            corrupted = CorruptColumn(
                transform, modality=modality, corruption=corruption, severity=severity, seed=seed,
                index_column=INDEX_COLUMN, sampling_rate=sampling_rate if modality == "audio" else None,
                num_frames=transform.processor.settings.num_frames if modality == "video" else None,
            )  # fmt: skip
            out[corruption][str(severity)] = task_scores(model, dataset, corrupted, task,
                                                         description=f"{name} | {corruption}@{severity}", **run)  # fmt: skip
    return out


def sweep_summary(clean: dict, sweep: dict, headline: str, lower_is_better: bool = False) -> dict | None:
    """`robustness_summary` of the `headline` metric (None when lower is better, as a regression head's RMSE)."""
    if lower_is_better:
        return None
    curves = {c: [per[s].get(headline) for s in per] for c, per in sweep.items()}
    if clean.get(headline) is None or any(v is None for curve in curves.values() for v in curve):
        return None  # e.g. ROC-AUC undefined on a one-class set
    return robustness_summary(clean[headline], curves)
