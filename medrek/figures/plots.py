"""Plotting functions: tidy tables in, matplotlib figures out, saved deterministically."""

from __future__ import annotations

import os
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence



import matplotlib.pyplot as plt
import pandas as pd

from ..io import atomic_path

__all__ = ["style", "save_figure", "plot_subject_distribution", "plot_length_distributions",
           "plot_training_curves", "plot_validation_curves"]

# Fixed metadata: no timestamps, no version strings, so the same data gives the same bytes.
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Date": None, "Creator": None},
}


@contextmanager
def style(name: str | None = None) -> Iterator[None]:
    """Use the kit's style (or a user's style file / matplotlib style name) within the block."""
    path = name or str(resources.files("medrek.figures").joinpath("style.mplstyle"))
    with plt.style.context(path):
        yield


def save_figure(fig: plt.Figure, stem: str | os.PathLike[str], formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format, atomically and byte-deterministically."""
    written = []
    for fmt in formats:
        target = Path(f"{stem}.{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, metadata=_METADATA.get(fmt))
        written.append(target)
    return written


def plot_subject_distribution(counts: pd.DataFrame, splits: Sequence[str] = ("train", "valid", "test")) -> plt.Figure:
    """Horizontal grouped bars: records per subject and split (``counts``: subjects x splits)."""
    fig, ax = plt.subplots(figsize=(7.0, 0.28 * len(counts) + 1.2))
    counts[list(splits)].iloc[::-1].plot.barh(ax=ax, width=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("records (log scale)")
    ax.set_ylabel("")
    ax.set_title("MedVersa: records per subject and split")
    return fig


def plot_length_distributions(lengths: pd.DataFrame) -> plt.Figure:
    """Histograms of word counts; ``lengths`` is tidy with columns field, split, words."""
    fields = list(dict.fromkeys(lengths["field"]))
    fig, axes = plt.subplots(1, len(fields), figsize=(3.0 * len(fields), 3.0), sharey=False)
    for ax, f in zip(axes if len(fields) > 1 else [axes], fields):
        part = lengths[lengths["field"] == f]
        top = int(part["words"].quantile(0.99)) + 1
        for split, grp in part.groupby("split", sort=False):
            ax.hist(grp["words"].clip(upper=top), bins=range(0, top + 2), histtype="step", density=True, label=split)
        ax.set_title(f)
        ax.set_xlabel("words")
    (axes[0] if len(fields) > 1 else axes).legend()
    fig.suptitle("MedVersa: length distributions")
    return fig


def plot_training_curves(log: pd.DataFrame, terms: Sequence[str], window: int = 10) -> plt.Figure:
    """One panel per loss term, one line per method; ``log`` is tidy (method, step, term, value)."""
    fig, axes = plt.subplots(1, len(terms), figsize=(2.6 * len(terms), 2.8), squeeze=False)
    for ax, term in zip(axes[0], terms):
        part = log[log["term"] == term]
        for method, grp in part.groupby("method", sort=True):
            grp = grp.sort_values("step")
            ax.plot(grp["step"], grp["value"].rolling(window, min_periods=1).mean(), label=method)
        ax.set_title(term)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"training loss terms (rolling mean over {window} steps)", y=1.04)
    return fig


def plot_validation_curves(valid: pd.DataFrame, metrics: Sequence[str]) -> plt.Figure:
    """Validation metrics against steps; ``valid`` is tidy (method, step, metric, value)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 2.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = valid[valid["metric"] == metric]
        for method, grp in part.groupby("method", sort=True):
            ax.plot(grp["step"], grp["value"], marker="o", label=method)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7)
    return fig
