"""The paper's claims, tested on per-request results: a difference, its interval and a verdict.

A claim is a list of :class:`Comparison` s. Each compares two things measured on the same
requests (two methods under one protocol, or one method under two protocols), paired by
``record_id``: the per-request difference ``a - b`` is averaged, and a seeded bootstrap over
requests (``scipy.stats.bootstrap``, percentile, through
:func:`medrek.evaluate.metrics.bootstrap_ci`) gives its 95% interval. With ``better`` the
side the claim expects (``higher``: ``a`` above ``b``; ``lower``: ``a`` below ``b``) and a
non-inferiority ``margin`` m (0 for "above"; e.g. 0.02 for "holds"):

* **holds** when the whole interval lies on the claimed side of ``-m``;
* **does not hold** when the whole interval lies on the other side;
* **undecided** when it crosses ``-m`` (for m = 0: when it crosses 0).

Each comparison is run for the paper-faithful pair and for the working pair
(:data:`PAIRS`), side by side. :func:`claim_table` needs only the per-request tables that
notebooks 03/04 write (:func:`medrek.evaluate.results.read_per_record` and
:func:`medrek.evaluate.results.read_growth_records`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from .metrics import avg_score, bootstrap_ci

__all__ = ["Side", "Comparison", "PAIRS", "CLAIMS", "CLAIM_TEXT", "paired_difference", "verdict", "claim_table",
           "VERDICTS"]

VERDICTS = ("holds", "does not hold", "undecided")


@dataclass(frozen=True)
class Side:
    """What is measured on one side: a role (``medrek``, ``recipe`` or a method name), a protocol
    (``single``, ``batch`` or ``growth``) and its size (batch size, or edits stored for growth)."""

    role: str
    protocol: str
    size: int

    def label(self) -> str:
        return {"single": "single", "batch": f"batch {self.size}", "growth": f"{self.size:,} stored"}[self.protocol]


@dataclass(frozen=True)
class Comparison:
    claim: str
    metric: str
    a: Side
    b: Side
    better: str = "higher"  # higher | lower: where the claim puts a against b
    margin: float = 0.0  # non-inferiority margin (fraction): the claim holds if a is not worse than b by more
    metric_b: str | None = None  # b's metric when it differs (None: the same as a's)

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ValueError(f"better must be higher or lower, not {self.better!r}")


# The two pairs every claim is tested on: roles -> methods.
PAIRS: dict[str, dict[str, str]] = {
    "paper-faithful": {"medrek": "medrek", "recipe": "recipe"},
    "working": {"medrek": "medrek-lm-embedding", "recipe": "recipe-lm-embedding"},
}

CLAIM_TEXT = {
    "C1": "MedREK edits better than RECIPE (efficacy, generality)",
    "C2": "the shared query-key space retrieves the own edit more often and misfires less",
    "C3": "batch editing holds from 1 to 100 to 1,000 stored edits (MedREK; within 2 points)",
    "C4": "retrieval editing keeps locality where FT-L and MEMIT lose it (batch 100)",
    "C5": "with 1,000 edits stored, the retrieval editor holds at least as well as the lifelong editors GRACE and "
          "WISE (edited one at a time, in order; within 2 points)",
}


def _claims() -> list[Comparison]:
    single, batch = ("single", 1), ("batch", 100)
    out = []
    for protocol in (single, batch):
        for metric in ("efficacy", "generality"):
            out.append(Comparison("C1", metric, Side("medrek", *protocol), Side("recipe", *protocol)))
    for metric, better in (("retrieved_prompt", "higher"), ("retrieved_rephrase", "higher"), ("fired/locality", "lower")):
        out.append(Comparison("C2", metric, Side("medrek", *batch), Side("recipe", *batch), better))
    for size_protocol in (batch, ("growth", 1000)):
        for metric in ("efficacy", "locality"):
            out.append(Comparison("C3", metric, Side("medrek", *size_protocol), Side("medrek", *single), margin=0.02))
    # locality on the prompts that ask no stored question (hand labels) against single-edit locality,
    # paired over those requests only: what growth costs once duplicates of stored edits are set aside
    out.append(Comparison("C3", "locality/distinct", Side("medrek", "growth", 1000), Side("medrek", *single),
                          margin=0.02, metric_b="locality"))
    for baseline in ("ft-l", "memit"):
        out.append(Comparison("C4", "locality", Side("medrek", *batch), Side(baseline, *batch)))
    # the kit's addition: the lifelong-editing yardsticks, on the growth rows (the same 200 requests,
    # the same 1,000 edits stored), neighbour questions included
    for baseline in ("grace", "wise"):
        for metric in ("efficacy", "generality", "locality", "locality/neighbour"):
            out.append(Comparison("C5", metric, Side("medrek", "growth", 1000), Side(baseline, "growth", 1000),
                                  margin=0.02))
    return out


CLAIMS: list[Comparison] = _claims()


def paired_difference(a: pd.Series, b: pd.Series, seed: int, n_resamples: int = 10_000,
                      level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean of ``a - b`` over the record ids both have, and its percentile bootstrap interval.
    Returns ``(difference, low, high, n)``; NaN where nothing is paired."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    d = (joined["a"] - joined["b"]).to_numpy(dtype=float)
    if len(d) == 0:
        return math.nan, math.nan, math.nan, 0
    low, high = bootstrap_ci(d, n_boot=n_resamples, seed=seed, level=level)
    return float(d.mean()), low, high, len(d)


def verdict(low: float, high: float, better: str, margin: float = 0.0) -> str:
    """holds / does not hold / undecided for an interval of ``a - b`` (see the module doc)."""
    if math.isnan(low) or math.isnan(high):
        return "undecided"
    if better == "lower":
        low, high = -high, -low
    if low > -margin:
        return "holds"
    if high < -margin:
        return "does not hold"
    return "undecided"


def _series(per_record: pd.DataFrame, growth: pd.DataFrame | None, method: str, side: Side,
            metric: str) -> pd.Series | None:
    """Per-request values of ``metric`` for ``method`` under ``side``'s protocol (the last
    ``eval_at``), indexed by record id; None when the results lack them."""
    if side.protocol == "growth":
        if growth is None or growth.empty:
            return None
        rows = growth[(growth["method"] == method) & (growth["stored"] == side.size)]
    else:
        rows = per_record[(per_record["method"] == method) & (per_record["protocol"] == side.protocol)
                          & (per_record["batch_size"] == side.size)]
        if len(rows):
            rows = rows[rows["eval_at"] == rows["eval_at"].max()]
    if rows.empty:
        return None
    if metric == "avg":
        values = avg_score(rows["efficacy"], rows["generality"], rows["locality"])
    elif metric in rows:
        values = rows[metric]
    else:
        return None
    values = pd.Series(values.to_numpy(dtype=float), index=rows["record_id"].astype(str).to_numpy())
    if values.index.has_duplicates:
        raise ValueError(f"{method} {side.label()}: several results per request (more than one run or seed); "
                         "pass one run's results")
    return values


def claim_table(per_record: pd.DataFrame, growth: pd.DataFrame | None = None,
                claims: Sequence[Comparison] = CLAIMS, pairs: Mapping[str, Mapping[str, str]] = PAIRS,
                seed: int = 0) -> pd.DataFrame:
    """One row per (comparison, pair): the two means, their difference with its interval, n and
    the verdict. Comparisons whose results are missing get n = 0 and the verdict ``missing``."""
    rows = []
    for i, comp in enumerate(claims):
        for pair, roles in pairs.items():
            ma, mb = roles.get(comp.a.role, comp.a.role), roles.get(comp.b.role, comp.b.role)
            a = _series(per_record, growth, ma, comp.a, comp.metric)
            b = _series(per_record, growth, mb, comp.b, comp.metric_b or comp.metric)
            row = {"claim": comp.claim, "comparison": i, "pair": pair, "metric": comp.metric,
                   "metric_b": comp.metric_b or comp.metric,
                   "method_a": ma, "where_a": comp.a.label(), "method_b": mb, "where_b": comp.b.label(),
                   "better": comp.better, "margin": comp.margin}
            if a is None or b is None:
                rows.append({**row, "mean_a": math.nan, "mean_b": math.nan, "difference": math.nan, "low": math.nan,
                             "high": math.nan, "n": 0, "verdict": "missing"})
                continue
            diff, low, high, n = paired_difference(a, b, seed=seed + i)
            common = a.index.intersection(b.index)
            rows.append({**row, "mean_a": float(a[common].mean()), "mean_b": float(b[common].mean()),
                         "difference": diff, "low": low, "high": high, "n": n,
                         "verdict": verdict(low, high, comp.better, comp.margin) if n else "missing"})
    return pd.DataFrame(rows)
