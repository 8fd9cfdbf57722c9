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
           "plot_method_metrics", "plot_metric_vs_batch", "plot_metric_vs_edits", "single_valued",
           "plot_representation_overlap", "plot_margin_histograms", "plot_subject_heatmap"]

# One colour per method in every figure (Okabe-Ito; grey for the unedited LM).
METHOD_COLORS = {
    "unedited": "#999999", "medrek": "#0072B2", "recipe": "#E69F00", "ike": "#009E73", "ft-l": "#D55E00", "memit": "#CC79A7",
    "medrek-no-shared-qk": "#56B4E9", "medrek-no-attention": "#F0E442", "token_attention": "#000000",
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


def _subject_colors(subjects: Sequence[str], top: int = 8) -> dict[str, str]:
    """The ``top`` most frequent subjects get the cycle's colours, the rest one light grey."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    common = pd.Series(list(subjects)).value_counts(sort=True).index[:top]
    colors = {s: cycle[i % len(cycle)] for i, s in enumerate(sorted(common))}
    return {s: colors.get(s, "#dddddd") for s in set(subjects)}


def plot_representation_overlap(points: pd.DataFrame, margins: pd.DataFrame) -> plt.Figure:
    """Per method, a 2-D projection of edit keys (o) and queries (x) coloured by subject, and the
    distribution of nearest-wrong-key margins (own-key score minus best other key's score;
    below 0 the query retrieves a wrong edit)."""
    methods = _methods(points)
    single_valued(points, ["method", "record_id", "kind"], "plot_representation_overlap")
    colors = _subject_colors(points["subject"])
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(3.2 * (len(methods) + 1), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        part = points[points["method"] == method]
        for kind, marker in (("key", "o"), ("query", "x")):
            sel = part[part["kind"] == kind]
            ax.scatter(sel["x"], sel["y"], s=9, marker=marker, c=[colors[s] for s in sel["subject"]],
                       linewidths=0.7, alpha=0.8)
        ax.set_title(f"{method}: keys o, queries x")
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[0][-1]
    for method in _methods(margins):
        values = margins.loc[margins["method"] == method, "margin"].sort_values()
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=method, color=method_color(method))
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("own key minus nearest wrong key")
    ax.set_ylabel("fraction of queries (ECDF)")
    ax.legend(fontsize=7)
    ax.set_title("nearest-wrong-key margins")
    return fig


def plot_margin_histograms(per_record: pd.DataFrame, bins: int = 30) -> plt.Figure:
    """Per retrieval method, histograms of top-1 score minus prototype score for edit prompts,
    rephrases and locality prompts (an edit fires above 0)."""
    cols = [c for c in per_record.columns if c.startswith("margin/")]
    part = per_record.dropna(subset=cols, how="all")
    methods = _methods(part)
    if not methods:
        raise ValueError("no retrieval margins in these results (only retrieval methods record them)")
    single_valued(part, ["method", "record_id", "eval_at"], "plot_margin_histograms")
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 2.8), squeeze=False, sharey=True)
    kind_colors = ["#0072B2", "#009E73", "#D55E00", "#CC79A7", "#E69F00", "#56B4E9"]
    for ax, method in zip(axes[0], methods):
        sel = part[part["method"] == method]
        values = sel[cols].to_numpy().ravel()
        values = values[pd.notna(values)]
        edges = pd.Series(values).quantile([0.005, 0.995]).tolist() if len(values) else [-1, 1]
        grid = [edges[0] + (edges[1] - edges[0]) * i / bins for i in range(bins + 1)]
        for k, col in enumerate(cols):
            if sel[col].notna().sum() == 0:
                continue
            ax.hist(sel[col].dropna().clip(edges[0], edges[1]), bins=grid, histtype="step", label=col.split("/", 1)[1],
                    color=kind_colors[k % len(kind_colors)], density=True)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(method)
        ax.set_xlabel("top-1 score minus prototype score")
    axes[0][0].legend(fontsize=7)
    return fig


def plot_subject_heatmap(per_record: pd.DataFrame, metrics: Sequence[str] = ("efficacy", "locality")) -> plt.Figure:
    """Subjects x methods heatmaps (one per metric) of the mean per subject."""
    import seaborn as sns

    single_valued(per_record, ["method", "record_id", "eval_at"], "plot_subject_heatmap")
    methods = _methods(per_record)
    subjects = per_record.groupby("subject")["record_id"].nunique().sort_values(ascending=False).index
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.2 + 0.9 * len(methods) * len(metrics), 0.3 * len(subjects) + 1.5),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        grid = per_record.pivot_table(index="subject", columns="method", values=metric, aggfunc="mean")
        grid = grid.reindex(index=subjects, columns=methods)
        sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", annot_kws={"size": 6},
                    cbar=ax is axes[0][-1])
        ax.set_title(metric)
        ax.set_xlabel("")
        ax.set_ylabel("" if ax is not axes[0][0] else "subject")
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
    return fig
