"""Paper tables from tidy results: main results, ablations, per-subject breakdown.

Every table is a DataFrame; :func:`write_table` saves it as CSV, Markdown and LaTeX
(booktabs) with the best value of each column in bold. Values are scaled by 100 like the
paper's tables (fluency and margins are left as they are) and the caption says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..io import write_csv, write_text
from .plots import METHOD_ORDER, single_valued

__all__ = ["MAIN_METRICS", "main_table", "ablation_table", "subject_table", "best_mask", "to_markdown", "to_latex",
           "write_table", "ABLATIONS", "BY_DEFINITION", "claims_markdown"]

MAIN_METRICS = ["efficacy", "generality", "locality", "avg", "fluency"]
ABLATIONS = ["medrek", "medrek-no-shared-qk", "medrek-no-attention", "token_attention", "recipe"]
UNSCALED = {"fluency"}


def _order(methods: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(methods))
    return [m for m in METHOD_ORDER if m in present] + sorted(m for m in present if m not in METHOD_ORDER)


def main_table(results: pd.DataFrame, protocol: str, batch_size: int, metrics: Sequence[str] = MAIN_METRICS,
               methods: Sequence[str] | None = None, scale: float = 100.0) -> pd.DataFrame:
    """Methods x (dataset, metric) for one protocol and batch size (the last ``eval_at``)."""
    part = results[(results["protocol"] == protocol) & (results["batch_size"] == batch_size)
                   & results["metric"].isin(metrics)]
    if methods is not None:
        part = part[part["method"].isin(methods)]
    if part.empty:
        have = sorted({f"{p}-{b}" for p, b in zip(results["protocol"], results["batch_size"])})
        raise ValueError(f"no results for protocol {protocol} with batch size {batch_size}; the runs have {have}")
    part = part[part["eval_at"] == part.groupby(["dataset", "method"])["eval_at"].transform("max")]
    part = single_valued(part, ["dataset", "method", "metric"], f"main table ({protocol}, batch {batch_size})")
    values = part["value"] * part["metric"].map(lambda m: 1.0 if m in UNSCALED else scale)
    table = part.assign(value=values).pivot(index="method", columns=["dataset", "metric"], values="value")
    cols = [(d, m) for d in dict.fromkeys(part["dataset"]) for m in metrics if (d, m) in table.columns]
    return table.reindex(index=_order(table.index), columns=pd.MultiIndex.from_tuples(cols, names=["dataset", "metric"]))


def ablation_table(results: pd.DataFrame, protocol: str, batch_size: int,
                   metrics: Sequence[str] = ("efficacy", "generality", "locality", "avg")) -> pd.DataFrame:
    """The MedREK variants side by side (whichever of :data:`ABLATIONS` the runs have)."""
    present = [m for m in ABLATIONS if m in set(results["method"])]
    if not present:
        raise ValueError(f"no ablation results: expected some of {ABLATIONS}")
    return main_table(results, protocol, batch_size, metrics, methods=present)


def subject_table(per_record: pd.DataFrame, metrics: Sequence[str] = ("efficacy", "locality"),
                  scale: float = 100.0) -> pd.DataFrame:
    """Subjects x (metric, method): mean per subject, with the number of requests."""
    single_valued(per_record, ["method", "record_id", "eval_at"], "per-subject table")
    table = per_record.groupby(["subject", "method"])[list(metrics)].mean().mul(scale).unstack("method")
    table = table.reindex(columns=[(m, meth) for m in metrics for meth in _order(per_record["method"])])
    counts = per_record.groupby("subject")["record_id"].nunique().rename(("n", ""))
    return table.join(counts).sort_values(("n", ""), ascending=False)


# Values that hold by definition, never marked best: (method, metric).
BY_DEFINITION = {("unedited", "locality")}


def _metric(column) -> str:
    return str(column[-1]) if isinstance(column, tuple) else str(column)


def best_mask(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """True where a value, rounded to ``digits`` as shown, is its column's best (highest; ties all
    marked). Values that hold by definition (:data:`BY_DEFINITION`, e.g. the unedited LM's
    locality, 1 by construction) are neither marked nor compared."""
    shown = table.round(digits)
    for j, column in enumerate(table.columns):
        for i, method in enumerate(table.index):
            if (str(method), _metric(column)) in BY_DEFINITION:
                shown.iat[i, j] = float("nan")
    return shown.eq(shown.max(axis=0), axis=1) & shown.notna()


def _cells(table: pd.DataFrame, bold: str, digits: int) -> list[list[str]]:
    best = best_mask(table, digits)
    rows = []
    for i in range(len(table)):
        row = []
        for j in range(table.shape[1]):
            v = table.iat[i, j]
            text = "-" if pd.isna(v) else f"{v:.{digits}f}"
            row.append(bold.format(text) if best.iat[i, j] else text)
        rows.append(row)
    return rows


def _header(table: pd.DataFrame) -> list[str]:
    cols = table.columns
    return [" ".join(str(p) for p in c if str(p)) if isinstance(c, tuple) else str(c) for c in cols]


def to_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    """GitHub Markdown with the best value per column in bold."""
    header = ["method" if table.index.name in (None, "method") else str(table.index.name)] + _header(table)
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * table.shape[1] + "|"]
    for name, row in zip(table.index, _cells(table, "**{}**", digits)):
        lines.append("| " + " | ".join([str(name), *row]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, caption: str, label: str, digits: int = 1) -> str:
    """A booktabs table with the best value per column in bold."""
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    header = [esc(h) for h in _header(table)]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(caption)}}}", rf"\label{{{label}}}",
             r"\begin{tabular}{l" + "r" * table.shape[1] + "}", r"\toprule",
             " & ".join([esc(table.index.name or "method"), *header]) + r" \\", r"\midrule"]
    for name, row in zip(table.index, _cells(table, r"\textbf{{{}}}", digits)):
        lines.append(" & ".join([esc(name), *row]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, stem: str | os.PathLike[str], caption: str, label: str,
                digits: int = 1) -> list[Path]:
    """``stem.csv`` (full precision), ``stem.md`` and ``stem.tex`` (rounded, best in bold)."""
    stem = Path(stem)
    flat = table.copy()
    flat.columns = _header(table)
    return [write_csv(stem.with_suffix(".csv"), flat.reset_index()),
            write_text(stem.with_suffix(".md"), f"{caption}\n\n{to_markdown(table, digits)}"),
            write_text(stem.with_suffix(".tex"), to_latex(table, caption, label, digits))]


def _interval(row: pd.Series, scale: float) -> str:
    if not row["n"]:
        return "missing"
    return f"{row['difference'] * scale:+.1f} [{row['low'] * scale:+.1f}, {row['high'] * scale:+.1f}]"


def claims_markdown(claims: pd.DataFrame, scale: float = 100.0) -> str:
    """The claims table (:func:`medrek.evaluate.claims.claim_table`) as Markdown: one line per
    comparison, the paper-faithful and the working pair side by side (a vs b, the difference a - b
    with its 95% interval, x100, and the verdict), n per pair."""
    pairs = list(dict.fromkeys(claims["pair"]))
    header = ["claim", "metric", "compared"]
    for pair in pairs:
        header += [f"{pair}: a vs b", f"{pair}: a - b [95% CI]", f"{pair}: n", f"{pair}: verdict"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---" + "|---:|---:|---:|---" * len(pairs) + "|"]
    for _, group in claims.groupby("comparison", sort=True):
        first = group.iloc[0]
        where_a, where_b = first["where_a"], first["where_b"]
        compared = where_a if where_a == where_b else f"{where_a} vs {where_b}"
        metric = first["metric"] if first.get("metric_b", first["metric"]) == first["metric"] else \
            f"{first['metric']} vs {first['metric_b']}"
        cells = [first["claim"], metric + (" (lower is better)" if first["better"] == "lower" else ""), compared]
        for pair in pairs:
            row = group[group["pair"] == pair].iloc[0]
            name_a, name_b = row["method_a"], row["method_b"]
            names = name_a if name_a == name_b else f"{name_a} vs {name_b}"
            if row["n"]:
                names += f": {row['mean_a'] * scale:.1f} vs {row['mean_b'] * scale:.1f}"
            cells += [names, _interval(row, scale), str(int(row["n"])), f"**{row['verdict']}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
