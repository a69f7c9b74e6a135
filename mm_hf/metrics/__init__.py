"""Evaluate modules shipped with mm_hf, loadable offline, plus the Trainer adapter that feeds them."""

from .loading import available_metrics, load_metric
from .streaming import ClassificationMetrics

__all__ = ["ClassificationMetrics", "available_metrics", "load_metric"]
