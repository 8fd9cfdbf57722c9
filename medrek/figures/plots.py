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

__all__ = ["style", "save_figure", "plot_subject_distribution", "plot_length_distributions"]

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
