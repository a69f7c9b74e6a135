"""Loading the evaluate modules shipped in this package, offline."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

MODULES_DIR = Path(__file__).parent


def available_metrics() -> list[str]:
    """Names of the evaluate modules shipped in this package."""
    return sorted(p.parent.name for p in MODULES_DIR.glob("*/*.py") if p.stem == p.parent.name)


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load a shipped evaluate module by name (e.g. "classification_report") without touching the Hub.

    Each call gets its own uuid `experiment_id`, so the processes of a distributed run (and two
    instances in one process) never share evaluate's cache/lock files. `kwargs` go to `evaluate.load`.
    """
    import evaluate  # lazy: evaluate pulls in datasets

    if name not in available_metrics():
        raise ValueError(f"Unknown metric {name!r}; shipped metrics are {available_metrics()}")
    kwargs.setdefault("experiment_id", uuid.uuid4().hex)
    return evaluate.load(str(MODULES_DIR / name), **kwargs)
