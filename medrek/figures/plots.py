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
           "plot_training_curves", "plot_validation_curves", "METHOD_COLORS", "method_color",
           "plot_method_metrics", "plot_metric_vs_batch", "plot_metric_vs_edits", "single_valued"]

# One colour per method in every figure (Okabe-Ito; grey for the unedited LM).
METHOD_COLORS = {
    "medrek": "#0072B2", "recipe": "#E69F00", "ike": "#009E73", "ft-l": "#D55E00", "memit": "#CC79A7",
    "medrek-no-shared-qk": "#56B4E9", "medrek-no-attention": "#F0E442", "token_attention": "#000000",
    "unedited": "#999999",
}
METHOD_ORDER = list(METHOD_COLORS)

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


def method_color(method: str) -> str:
    """The fixed colour of ``method`` (an unknown method gets a grey that no known one uses)."""
    return METHOD_COLORS.get(method, "#555555")


def _methods(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["method"]))
    return [m for m in METHOD_ORDER if m in present] + sorted(m for m in present if m not in METHOD_ORDER)


def single_valued(frame: pd.DataFrame, keys: Sequence[str], what: str) -> pd.DataFrame:
    """``frame`` if each ``keys`` combination has one value; else an error naming the clash
    (e.g. two runs, seeds or protocols that would be averaged silently in one panel)."""
    counts = frame.groupby(list(keys), dropna=False).size()
    clash = counts[counts > 1]
    if len(clash):
        first = dict(zip(keys, clash.index[0] if isinstance(clash.index[0], tuple) else (clash.index[0],)))
        others = [c for c in ("run_id", "seed", "protocol", "split", "lm", "encoder") if c not in keys and c in frame]
        sample = frame.loc[(frame[list(keys)] == pd.Series(first)).all(axis=1), others].drop_duplicates()
        raise ValueError(f"{what}: {len(clash)} point(s) have several results, e.g. {first} from "
                         f"{sample.to_dict('records')}; select one run/seed/protocol first")
    return frame


def plot_method_metrics(results: pd.DataFrame, metrics: Sequence[str], title: str = "") -> plt.Figure:
    """Grouped bars: one group per metric, one bar per method (``results`` is tidy)."""
    part = single_valued(results[results["metric"].isin(metrics)], ["method", "metric"], "plot_method_metrics")
    methods = _methods(part)
    fig, ax = plt.subplots(figsize=(1.2 + 1.4 * len(metrics), 3.0))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        values = part[part["method"] == method].set_index("metric")["value"].reindex(metrics)
        ax.bar([i + j * width for i in range(len(metrics))], values, width, label=method, color=method_color(method))
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    return fig


def _metric_lines(results: pd.DataFrame, metrics: Sequence[str], x: str, xlabel: str, keys: Sequence[str],
                  what: str) -> plt.Figure:
    part = single_valued(results[results["metric"].isin(metrics)], keys, what)
    datasets = list(dict.fromkeys(part["dataset"]))
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(2.7 * len(metrics), 2.5 * len(datasets)),
                             squeeze=False, sharex=True)
    for r, dataset in enumerate(datasets):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            sel = part[(part["dataset"] == dataset) & (part["metric"] == metric)]
            for method in _methods(sel):
                grp = sel[sel["method"] == method].sort_values(x)
                ax.plot(grp[x], grp["value"], marker="o", label=method, color=method_color(method))
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{dataset}: {metric}" if len(datasets) > 1 else metric)
            if r == len(datasets) - 1:
                ax.set_xlabel(xlabel)
    axes[0][0].legend(fontsize=7)
    return fig


def plot_metric_vs_batch(results: pd.DataFrame, metrics: Sequence[str]) -> plt.Figure:
    """Metrics against the batch size (single = 1), one line per method, a row per dataset."""
    bad = set(results["protocol"]) - {"single", "batch"}
    if bad:
        raise ValueError(f"plot_metric_vs_batch takes single/batch results only, got protocol(s) {sorted(bad)}")
    return _metric_lines(results, metrics, "batch_size", "edits per batch",
                         ["dataset", "method", "metric", "batch_size"], "plot_metric_vs_batch")


def plot_metric_vs_edits(results: pd.DataFrame, metrics: Sequence[str]) -> plt.Figure:
    """Sequential editing: metrics against the number of accumulated edits."""
    bad = set(results["protocol"]) - {"sequential"}
    if bad:
        raise ValueError(f"plot_metric_vs_edits takes sequential results only, got protocol(s) {sorted(bad)}")
    return _metric_lines(results, metrics, "eval_at", "accumulated edits",
                         ["dataset", "method", "metric", "eval_at"], "plot_metric_vs_edits")
