"""Notebook 05's building blocks on the shipped results fixture: tables, refusals, and
byte-for-byte deterministic figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from medrek.evaluate import read_results
from medrek.evaluate.results import read_per_record
from medrek.figures import plots, tables

FIXTURE = Path(__file__).parent / "fixtures" / "results-smoke"
SPLIT = "test-first8"


@pytest.fixture(scope="module")
def results():
    summary = read_results([FIXTURE])
    return summary[summary["split"] == SPLIT]


@pytest.fixture(scope="module")
def per_record():
    rows = read_per_record([FIXTURE])
    return rows[rows["split"] == SPLIT]


def test_main_table_values_scale_and_best_marks(results):
    table = tables.main_table(results, "single", 1)
    raw = results[(results["protocol"] == "single") & (results["method"] == "medrek") & (results["dataset"] == "medversa")]
    expect = raw.set_index("metric")["value"]
    assert table.loc["medrek", ("medversa", "efficacy")] == pytest.approx(100 * expect["efficacy"])
    assert table.loc["medrek", ("medversa", "fluency")] == pytest.approx(expect["fluency"])  # bits, not x100
    assert list(table.index)[0] == "unedited"  # fixed method order
    best = tables.best_mask(table)
    col = ("medversa", "locality")
    shown = table[col].round(1).drop("unedited")  # the unedited LM's locality is 1 by definition: never marked
    assert best[col].drop("unedited").tolist() == (shown == shown.max()).tolist() and not best.loc["unedited", col]
    md = tables.to_markdown(table)
    assert f"**{shown.max():.1f}**" in md
    tex = tables.to_latex(table, "cap", "tab:x")
    assert r"\toprule" in tex and r"\textbf{" in tex and "token\\_attention" in tex
    with pytest.raises(ValueError, match="no results for protocol batch with batch size 1000"):
        tables.main_table(results, "batch", 1000)


def test_tables_are_written_as_csv_markdown_latex(results, tmp_path):
    table = tables.main_table(results, "batch", 4)
    paths = tables.write_table(table, tmp_path / "main", "caption", "tab:main")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    back = pd.read_csv(paths[0]).set_index("method")
    assert back.loc["medrek", "medversa locality"] == pytest.approx(table.loc["medrek", ("medversa", "locality")])


def test_mixed_runs_are_refused(results):
    other = results.assign(run_id="another-run", value=results["value"] * 0.5)
    with pytest.raises(ValueError, match="several results.*another-run"):
        tables.main_table(pd.concat([results, other]), "single", 1)
    with pytest.raises(ValueError, match="single/batch results only"):
        plots.plot_metric_vs_batch(results, ["efficacy"])


def test_subject_table_counts_and_means(per_record):
    sub = per_record[(per_record["protocol"] == "single") & (per_record["dataset"] == "medversa")]
    table = tables.subject_table(sub)
    assert table[("n", "")].sum() == sub["record_id"].nunique()
    subject = table.index[0]
    expect = 100 * sub[(sub["subject"] == subject) & (sub["method"] == "medrek")]["locality"].mean()
    assert table.loc[subject, ("locality", "medrek")] == pytest.approx(expect)


def _figures(results, per_record):
    points = pd.read_csv(FIXTURE / "metrics" / "representations.csv", dtype={"record_id": str})
    margins = pd.read_csv(FIXTURE / "metrics" / "key_margins.csv", dtype={"record_id": str})
    log = pd.read_csv(FIXTURE / "metrics" / "training_log.csv")
    single = per_record[(per_record["protocol"] == "single") & (per_record["dataset"] == "medversa")]
    return {
        "batch": lambda: plots.plot_metric_vs_batch(results[results["protocol"].isin(["single", "batch"])],
                                                    ["efficacy", "locality"], per_record=per_record, seed=1),
        "overlap": lambda: plots.plot_representation_overlap(points, margins),
        "margins": lambda: plots.plot_margin_histograms(single),
        "subjects": lambda: plots.plot_subject_heatmap(single),
        "training": lambda: plots.plot_training_curves(log, sorted(log["term"].unique())[:3]),
        "sequential": lambda: plots.plot_metric_vs_edits(results[results["protocol"] == "sequential"], ["efficacy"]),
    }


def test_every_paper_figure_is_byte_deterministic(results, per_record, tmp_path):
    outputs = {}
    for run in range(2):
        for name, make in _figures(results, per_record).items():
            with plots.style():
                fig = make()
                paths = plots.save_figure(fig, tmp_path / f"{name}-{run}")
                plt.close(fig)
            outputs.setdefault(name, []).append([p.read_bytes() for p in paths])
    for name, (first, second) in outputs.items():
        assert first == second, f"{name} differs between two renderings"
        assert len(first[0]) > 1000 and first[1].startswith(b"%PDF")


def test_figures_say_what_they_show(results, per_record):
    """Every visible panel has both axis labels (or is a heatmap column with the shared y-axis),
    titles name the LM / dataset / split / n, and loss terms have human names."""
    for name, make in _figures(results, per_record).items():
        with plots.style():
            fig = make()
        text = " ".join([fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes])
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        for ax in panels:
            assert ax.get_xlabel() or name == "subjects", f"{name}: a panel has no x label"
        assert panels[0].get_ylabel(), f"{name}: no y label"
        if name in ("batch", "margins", "subjects", "sequential"):
            assert SPLIT in text and "n = " in text, f"{name}: title lacks split and n: {text!r}"
        if name == "training":
            assert "[q1]" in text or "[edit_gen]" in text or "[edit_rel]" in text, text
        if name == "subjects":
            assert all("(n=" in t.get_text() for t in panels[0].get_yticklabels())
        if name == "overlap":
            assert fig.legends and "subject" in fig.legends[0].get_title().get_text()
        plt.close(fig)


def test_batch_figure_has_bootstrap_intervals_and_a_data_range_axis(results, per_record):
    batch = results[results["protocol"].isin(["single", "batch"])]
    with plots.style():
        fig = plots.plot_metric_vs_batch(batch, ["efficacy"], per_record=per_record, seed=0)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    values = batch.loc[batch["metric"] == "efficacy", "value"]
    assert (low, high) != (-0.02, 1.02) and low <= values.min() and high >= values.max()
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert bars, "no error bars"
    lo, hi = plots.bootstrap_ci([0.0, 1.0] * 50, seed=3)
    assert 0.38 < lo < 0.5 < hi < 0.62 and plots.bootstrap_ci([0.0, 1.0] * 50, seed=3) == (lo, hi)
    plt.close(fig)


def test_every_figure_the_pages_show_is_made_by_notebook_05():
    """``make figures`` (notebook 05 over results/small, copied into figures/) redraws each figure
    that README.md and docs/ show."""
    import json
    import re

    root = Path(__file__).resolve().parents[1]
    source = "".join("".join(c["source"]) for c in json.loads(
        (root / "notebooks" / "05_paper_figures.ipynb").read_text("utf-8"))["cells"] if c["cell_type"] == "code")
    made = set(re.findall(r',\s*"([a-z_]+)"\)', source))  # save(figure, "name"), on one line or two
    made |= {"single_medversa"} if 'f"single_{dataset}"' in source else set()
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    shown = {m for p in pages for m in re.findall(r"!\[[^\]]*\]\((?:\.\./)?figures/([a-z_]+)\.png\)", p.read_text("utf-8"))}
    assert shown, "no figure found in README.md or docs/"
    assert shown <= made, f"figures shown but not made by notebook 05 (make figures): {sorted(shown - made)}"
