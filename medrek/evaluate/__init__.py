"""Metrics and evaluation protocols."""

from .editing import evaluate_batch_edit
from .metrics import agreement, avg_score, teacher_forced

__all__ = ["agreement", "avg_score", "evaluate_batch_edit", "teacher_forced"]
