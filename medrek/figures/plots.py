"""Plotting functions: tidy tables in, matplotlib figures out, saved deterministically."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..evaluate.metrics import bootstrap_ci
from ..io import atomic_path

__all__ = ["style", "save_figure", "plot_subject_distribution", "plot_length_distributions",
           "plot_training_curves", "plot_validation_curves", "METHOD_COLORS", "method_color",
           "plot_method_metrics", "plot_metric_vs_batch", "plot_metric_vs_edits", "plot_metric_vs_stored", "growth_metrics", "single_valued",
           "plot_representation_overlap", "plot_margin_histograms", "plot_subject_heatmap", "bootstrap_ci",
           "describe", "LOSS_NAMES", "METRIC_LABELS"]

# One colour per method in every figure (Okabe-Ito; grey for the unedited LM).
METHOD_COLORS = {
    "unedited": "#999999", "medrek-lm-embedding": "#882255", "recipe-lm-embedding": "#CC6677", "medrek": "#0072B2", "recipe": "#E69F00", "ike": "#009E73",
    "ft-l": "#D55E00", "memit": "#CC79A7", "medrek-no-shared-qk": "#56B4E9", "medrek-no-attention": "#F0E442",
    "token_attention": "#000000",
}
# Subjects get another palette than methods (Set2), so a subject is never read as a method.
OTHER_SUBJECTS = "#e8e8e8"
SUBJECT_PALETTE = ["#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3"]

# What each logged loss term is, for axis titles (the internal name stays in brackets).
LOSS_NAMES = {
    "loss": "total loss",
    "q1": "query-key contrastive [q1]",
    "q2": "prototype for the other query [q2]",
    "q3": "locality query to prototype [q3]",
    "edit_rel": "edit NLL after the prompt [edit_rel]",
    "edit_gen": "edit NLL after the paraphrase [edit_gen]",
    "locality": "locality KL [locality]",
}
# What each metric measures, for axis labels.
METRIC_LABELS = {
    "efficacy": "efficacy (target-token accuracy)",
    "generality": "generality (accuracy on paraphrase)",
    "locality": "locality (agreement with unedited)",
    "avg": "Avg of the three",
    "fired/locality": "unrelated question fires an edit",
    "retrieved_prompt": "own edit fires (prompt)",
    "retrieved_rephrase": "own edit fires (paraphrase)",
    "locality/distinct": "locality, prompts asking no stored question",
    "locality/neighbour": "locality, the kit's neighbour questions",
    "fired/distinct": "distinct unrelated question fires an edit",
    "fired/neighbour": "neighbour question fires an edit",
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


def describe(frame: pd.DataFrame) -> str:
    """What a results frame is about, for a figure title: LM, dataset and split, and n."""
    parts = []
    for column in ("lm", "dataset", "split"):
        if column in frame and frame[column].notna().any():
            parts.append(", ".join(str(v) for v in dict.fromkeys(frame[column].dropna())))
    if "n" in frame and frame["n"].notna().any():
        ns = sorted({int(v) for v in frame["n"].dropna()})
        parts.append(f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}")
    elif "record_id" in frame:
        parts.append(f"n = {frame['record_id'].nunique()} requests")
    return " · ".join(parts)


def plot_training_curves(log: pd.DataFrame, terms: Sequence[str], window: int = 10, context: str = "") -> plt.Figure:
    """One panel per loss term, one line per method; ``log`` is tidy (method, step, term, value)."""
    ncols = min(len(terms), 4)
    nrows = -(-len(terms) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 2.6 * nrows), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        part = log[log["term"] == term]
        for method in _methods(part):
            grp = part[part["method"] == method].sort_values("step")
            ax.plot(grp["step"], grp["value"].rolling(window, min_periods=1).mean(), label=method,
                    color=method_color(method))
        ax.set_title(LOSS_NAMES.get(term, term), fontsize=8)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats)")
    for ax in list(axes.flat)[len(terms):]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=7)
    title = f"training loss terms (rolling mean over {window} steps)"
    fig.suptitle(f"{title}\n{context}" if context else title, y=1.02)
    fig.tight_layout()
    return fig


def plot_validation_curves(valid: pd.DataFrame, metrics: Sequence[str]) -> plt.Figure:
    """Validation metrics against steps; ``valid`` is tidy (method, step, metric, value)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 2.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = valid[valid["metric"] == metric]
        for method in _methods(part):
            grp = part[part["method"] == method].sort_values("step")
            ax.plot(grp["step"], grp["value"], marker="o", label=method, color=method_color(method))
        ax.set_title(metric)
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("fraction (validation edits)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
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
    fig, ax = plt.subplots(figsize=(2.8 + 1.4 * len(metrics), 3.0))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        values = part[part["method"] == method].set_index("metric")["value"].reindex(metrics)
        ax.bar([i + j * width for i in range(len(metrics))], values, width, label=method, color=method_color(method))
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of target tokens / probes")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars
    ax.set_title(f"{title}\n{describe(part)}" if title else describe(part), fontsize=9)
    fig.tight_layout()
    return fig


def _intervals(per_record: pd.DataFrame | None, keys: Sequence[str], metrics: Sequence[str], seed: int) -> dict:
    """(key values..., metric) -> bootstrap interval of the per-request mean."""
    if per_record is None:
        return {}
    out = {}
    for group, rows in per_record.groupby(list(keys), dropna=False):
        group = group if isinstance(group, tuple) else (group,)
        for metric in metrics:
            if metric in rows:
                out[(*group, metric)] = bootstrap_ci(rows[metric].tolist(), seed=seed)
    return out


def _compact(n: int) -> str:
    """A tick label that stays short on a log axis: 200, 1k, 3k, 6k, 1.5k."""
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


def _metric_lines(results: pd.DataFrame, metrics: Sequence[str], x: str, xlabel: str, keys: Sequence[str],
                  what: str, per_record: pd.DataFrame | None = None, seed: int = 0) -> plt.Figure:
    part = single_valued(results[results["metric"].isin(metrics)], keys, what)
    datasets = list(dict.fromkeys(part["dataset"]))
    cis = _intervals(per_record, ["dataset", "method", x], metrics, seed)
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(2.9 * len(metrics), 2.7 * len(datasets) + 0.4),
                             squeeze=False, sharex=True)
    for r, dataset in enumerate(datasets):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            sel = part[(part["dataset"] == dataset) & (part["metric"] == metric)]
            methods = _methods(sel)
            for k, method in enumerate(methods):
                grp = sel[sel["method"] == method].sort_values(x)
                dodge = 1.06 ** (k - (len(methods) - 1) / 2)  # side by side on the log axis
                xs = grp[x].to_numpy(dtype=float) * dodge
                lo_hi = [cis.get((dataset, method, v, metric), (math.nan, math.nan)) for v in grp[x]]
                err = np.array([[m - lo, hi - m] for m, (lo, hi) in zip(grp["value"], lo_hi)]).T
                ax.errorbar(xs, grp["value"], yerr=None if np.isnan(err).all() else err, marker="o", capsize=3,
                            markersize=4, linewidth=1, label=method, color=method_color(method))
            ax.set_xscale("log")
            ticks = sorted(set(sel[x]))
            ax.set_xticks(ticks, [_compact(int(t)) for t in ticks])
            ax.minorticks_off()
            ax.margins(x=0.15, y=0.12)  # the data's own range: differences stay visible
            label = METRIC_LABELS.get(metric, metric)
            ax.set_title(f"{dataset}: {label}" if len(datasets) > 1 else label, fontsize=8)
            if c == 0:
                ax.set_ylabel("mean over requests (fraction)")
            ax.set_xlabel(xlabel)
    note = "points: mean; bars: 95% bootstrap interval over requests" if cis else "points: mean over requests"
    fig.suptitle(f"{describe(part)}\n{note}", fontsize=8, y=1.0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    below = 0.45 / fig.get_figheight()  # the legend's strip under the axes: it never covers a line
    fig.tight_layout(rect=(0, below, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0))
    return fig


def plot_metric_vs_batch(results: pd.DataFrame, metrics: Sequence[str], per_record: pd.DataFrame | None = None,
                         seed: int = 0) -> plt.Figure:
    """Metrics against the batch size (single = 1), one line per method, a row per dataset;
    with ``per_record`` rows, 95% bootstrap intervals (``seed``) over requests."""
    bad = set(results["protocol"]) - {"single", "batch"}
    if bad:
        raise ValueError(f"plot_metric_vs_batch takes single/batch results only, got protocol(s) {sorted(bad)}")
    if per_record is not None:
        per_record = per_record[per_record["protocol"].isin(["single", "batch"])]
    return _metric_lines(results, metrics, "batch_size", "edits per batch (log scale)",
                         ["dataset", "method", "metric", "batch_size"], "plot_metric_vs_batch", per_record, seed)


def plot_metric_vs_edits(results: pd.DataFrame, metrics: Sequence[str]) -> plt.Figure:
    """Sequential editing: metrics against the number of accumulated edits."""
    bad = set(results["protocol"]) - {"sequential"}
    if bad:
        raise ValueError(f"plot_metric_vs_edits takes sequential results only, got protocol(s) {sorted(bad)}")
    return _metric_lines(results, metrics, "eval_at", "accumulated edits (log scale)",
                         ["dataset", "method", "metric", "eval_at"], "plot_metric_vs_edits")


GROWTH_METRICS = ("efficacy", "generality", "locality/distinct", "locality/neighbour", "fired/distinct", "fired/neighbour")
GROWTH_METRICS_PLAIN = ("efficacy", "generality", "locality", "fired/locality")  # growth results without the kit's probes


def growth_metrics(results: pd.DataFrame) -> list[str]:
    """The metrics a memory-growth figure shows: locality and misfires on distinct prompts and
    on the kit's neighbour questions where the results have them, else on all locality prompts."""
    have = set(results["metric"])
    return [m for m in GROWTH_METRICS if m in have] if "locality/neighbour" in have else list(GROWTH_METRICS_PLAIN)


def plot_metric_vs_stored(results: pd.DataFrame, metrics: Sequence[str], per_record: pd.DataFrame | None = None,
                          seed: int = 0) -> plt.Figure:
    """Memory growth: metrics of the same evaluated edits against the number of edits stored
    (log scale), one line per method; with ``per_record`` rows (``run_growth``'s, whose
    ``eval_at`` is the number stored), 95% bootstrap intervals (``seed``) over requests."""
    bad = set(results["protocol"]) - {"growth"}
    if bad:
        raise ValueError(f"plot_metric_vs_stored takes growth results only, got protocol(s) {sorted(bad)}")
    return _metric_lines(results, metrics, "eval_at", "edits stored (log scale)",
                         ["dataset", "method", "metric", "eval_at"], "plot_metric_vs_stored", per_record, seed)


def _subject_colors(subjects: Sequence[str], top: int = 8) -> dict[str, str]:
    """The ``top`` most frequent subjects get the cycle's colours, the rest one light grey."""
    common = pd.Series(list(subjects)).value_counts(sort=True).index[:top]
    colors = {s: SUBJECT_PALETTE[i % len(SUBJECT_PALETTE)] for i, s in enumerate(sorted(common))}
    return {s: colors.get(s, OTHER_SUBJECTS) for s in set(subjects)}


def plot_representation_overlap(points: pd.DataFrame, margins: pd.DataFrame, source: str = "") -> plt.Figure:
    """Per method, a 2-D projection of edit keys (o) and queries (x) coloured by subject, and the
    distribution of nearest-wrong-key margins (own-key score minus best other key's score;
    below 0 the query retrieves a wrong edit). The title names the number of requests, their
    dataset (a ``dataset`` column) and ``source`` (e.g. the split and run)."""
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
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("PCA 1 (keys and queries jointly)")
        ax.set_ylabel("PCA 2")
        ax.tick_params(labelsize=8)
    named = sorted(s for s, c in colors.items() if c != OTHER_SUBJECTS)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color="grey", label="o: stored edit key"),
               plt.Line2D([], [], marker="x", linestyle="", color="grey", label="x: query (the request's paraphrase)")]
    handles += [plt.Line2D([], [], marker="o", linestyle="", color=colors[s], label=s) for s in named]
    handles.append(plt.Line2D([], [], marker="o", linestyle="", color=OTHER_SUBJECTS, label="other subjects"))
    datasets = ", ".join(sorted(map(str, points["dataset"].unique()))) if "dataset" in points else "dataset not recorded"
    fig.suptitle(f"keys and queries of {points['record_id'].nunique()} requests ({datasets}"
                 f"{', ' + source if source else ''})", fontsize=10)
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02), title="marker: what it is; colour: subject", title_fontsize=7)
    ax = axes[0][-1]
    for method in _methods(margins):
        values = margins.loc[margins["method"] == method, "margin"].sort_values()
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=method, color=method_color(method))
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("own key minus nearest wrong key (score q·k/√d)")
    ax.set_ylabel("fraction of queries (ECDF)")
    ax.legend(fontsize=7)
    ax.set_title("nearest-wrong-key margins", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.93))
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
        ax.set_xlabel("top-1 minus prototype score (q·k/√d)")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(fontsize=7, title="query", title_fontsize=7)
    fig.suptitle(f"retrieval margins (an edit fires right of 0) · {describe(part)}", fontsize=8, y=1.02)
    fig.tight_layout()
    return fig


def plot_subject_heatmap(per_record: pd.DataFrame, metrics: Sequence[str] = ("efficacy", "locality")) -> plt.Figure:
    """Subjects x methods heatmaps (one per metric) of the mean per subject."""
    import seaborn as sns

    single_valued(per_record, ["method", "record_id", "eval_at"], "plot_subject_heatmap")
    methods = _methods(per_record)
    counts = per_record.groupby("subject")["record_id"].nunique().sort_values(ascending=False)
    subjects = counts.index
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 + 0.9 * len(methods) * len(metrics), 0.3 * len(subjects) + 1.8),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        grid = per_record.pivot_table(index="subject", columns="method", values=metric, aggfunc="mean")
        grid = grid.reindex(index=subjects, columns=methods)
        sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", annot_kws={"size": 6},
                    cbar=ax is axes[0][-1])
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("" if ax is not axes[0][0] else "subject (requests)")
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
        else:
            ax.set_yticks([i + 0.5 for i in range(len(subjects))], [f"{s} (n={counts[s]})" for s in subjects])
    fig.suptitle(f"mean per subject · {describe(per_record)}", fontsize=8)
    fig.tight_layout()
    return fig
