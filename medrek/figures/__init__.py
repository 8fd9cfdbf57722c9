"""Figures and tables rebuilt from tidy results only."""

from .plots import (
    plot_length_distributions,
    plot_subject_distribution,
    plot_training_curves,
    plot_validation_curves,
    save_figure,
    style,
)

__all__ = [
    "plot_length_distributions",
    "plot_subject_distribution",
    "plot_training_curves",
    "plot_validation_curves",
    "save_figure",
    "style",
]
