"""Figures and tables rebuilt from tidy results only."""

from .plots import plot_length_distributions, plot_subject_distribution, save_figure, style

__all__ = ["plot_length_distributions", "plot_subject_distribution", "save_figure", "style"]
