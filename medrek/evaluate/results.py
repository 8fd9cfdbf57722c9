"""The tidy results table every notebook writes and notebook 05 reads.

One row per (method, LM, encoder, chat template (auto | none), dataset, split, protocol, batch
size, eval_at, metric, seed, run id) with its ``value`` and ``n``. Metrics are fractions in [0, 1] except ``fluency``
(bits) and ``margin/*`` (score units); tables that follow the paper multiply by 100 and say so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..io import read_json, read_rows, write_csv, write_json
from .protocols import RESULT_COLUMNS

__all__ = ["KEY_COLUMNS", "upsert_results", "read_results", "read_per_record", "read_growth_records",
           "IncompleteResults"]

KEY_COLUMNS = [c for c in RESULT_COLUMNS if c not in ("value", "n")]


def _check(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    if "chat_template" not in frame.columns:  # tables written before the setting existed asked plainly
        frame = frame.assign(chat_template="none")
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: results table lacks column(s) {missing}")
    frame = frame[RESULT_COLUMNS].copy()
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad = values.isna() | frame[["method", "metric", "n"]].isna().any(axis=1)
    if bad.any():  # a truncated or hand-edited file is named with its row, never read as NaN
        k = int(bad.idxmax())
        raise IncompleteResults(f"{source}: row {k + 2} is not whole (value {frame['value'][k]!r}, metric "
                                f"{frame['metric'][k]!r}): a truncated or edited results table")
    frame["value"] = values
    return frame


def upsert_results(path: str | os.PathLike[str], rows: pd.DataFrame) -> pd.DataFrame:
    """Add ``rows`` to the table at ``path`` (.csv, with a .json twin), replacing rows with the
    same key; both files are rewritten atomically. Returns the whole table."""
    path = Path(path)
    new = _check(rows, "new rows")
    if path.exists():
        old = _check(pd.read_csv(path, keep_default_na=False, na_values=[""]), str(path))
        table = pd.concat([old, new], ignore_index=True)
    else:
        table = new.copy()
    table["seed"] = table["seed"].astype(int)
    table["batch_size"] = table["batch_size"].astype(int)
    table["eval_at"] = table["eval_at"].astype(int)
    table["n"] = table["n"].astype(int)
    table = table.drop_duplicates(KEY_COLUMNS, keep="last").sort_values(KEY_COLUMNS, kind="stable")
    table = table.reset_index(drop=True)
    write_csv(path, table)
    write_json(path.with_suffix(".json"), table.to_dict("records"))
    return table


def read_results(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate results tables; a folder means ``<folder>/metrics/results.csv`` (a run)."""
    frames = []
    for p in paths:
        p = Path(p)
        csv = p / "metrics" / "results.csv" if p.is_dir() else p
        if not csv.exists():
            raise FileNotFoundError(f"{p}: no results table at {csv} (run notebooks 03/04 for this run first)")
        frames.append(_check(pd.read_csv(csv, keep_default_na=False, na_values=[""]), str(csv)))
    if not frames:
        raise ValueError("no results given")
    return pd.concat(frames, ignore_index=True)


class IncompleteResults(ValueError):
    """A per-request results file that is partial, corrupt or out of range."""


BOUNDED = ("efficacy", "generality", "locality", "retrieved_prompt", "retrieved_rephrase")  # and every */ metric
BOUNDED_PREFIXES = ("locality/", "fired/", "changed_when_fired/", "duplicate/")


def _check_rows(frame: pd.DataFrame, meta: dict, csv: Path, allow_partial: bool) -> pd.DataFrame:
    """Refuse a per-request table that claims could be drawn from wrongly, naming file and row: a
    half-written row (efficacy or generality missing), a metric that is not a number or lies
    outside [0, 1], a request scored twice at one size, or (single, batch and growth) fewer
    requests than the run evaluated. With ``allow_partial`` the missing requests are accepted
    and every row of the file says ``partial`` True."""
    size = "stored" if "stored" in frame.columns else "eval_at"
    for col in [c for c in frame.columns if c in BOUNDED or c.startswith(BOUNDED_PREFIXES)]:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            k = int(bad.idxmax())
            raise IncompleteResults(f"{csv}: row {k + 2} (record {frame['record_id'][k]}): {col}={frame[col][k]!r} "
                                    "is not a number")
        out = (values < 0) | (values > 1)
        if out.any():
            k = int(out.idxmax())
            raise IncompleteResults(f"{csv}: row {k + 2} (record {frame['record_id'][k]}): {col}={values[k]} "
                                    "lies outside [0, 1]")
        frame[col] = values
    half = frame[["efficacy", "generality"]].isna().any(axis=1) if {"efficacy", "generality"} <= set(frame.columns) \
        else pd.Series(False, index=frame.index)
    if half.any():
        k = int(half.idxmax())
        raise IncompleteResults(f"{csv}: row {k + 2} (record {frame['record_id'][k]}): efficacy or generality is "
                                "missing (a half-written row)")
    twice = frame.duplicated([size, "record_id"]) if size in frame.columns else frame.duplicated(["record_id"])
    if twice.any():
        k = int(twice.idxmax())
        raise IncompleteResults(f"{csv}: row {k + 2}: record {frame['record_id'][k]} is scored twice at "
                                f"{size} {frame[size][k] if size in frame.columns else ''}")
    protocol = (meta.get("protocol") or {}).get("kind") if isinstance(meta.get("protocol"), dict) else meta.get("protocol")
    expected = meta.get("records") if protocol != "growth" else (meta.get("evaluated") or [None])[-1]
    partial = False
    if protocol in ("single", "batch", "growth") and isinstance(expected, int):
        counts = frame.groupby(size)["record_id"].nunique() if size in frame.columns else pd.Series([frame["record_id"].nunique()])
        short = counts[counts < expected]
        if len(short) or not len(counts):
            if not allow_partial:
                where = f" at {size} {short.index[0]}" if len(short) else ""
                got = int(short.iloc[0]) if len(short) else 0
                raise IncompleteResults(f"{csv}: {got} of the {expected} requests the run evaluated{where} (an "
                                        "interrupted evaluation?): finish it, or read it with allow_partial=True to "
                                        "show it marked as partial")
            partial = True
    return frame.assign(partial=partial)


def _with_sidecar(csv: Path, allow_partial: bool = False) -> tuple[pd.DataFrame, dict]:
    """A per-request CSV and the settings JSON saved next to it (refused if that is missing), its
    rows checked (:func:`_check_rows`)."""
    sidecar = csv.with_suffix(".json")
    if not sidecar.exists():
        raise FileNotFoundError(f"{csv}: its settings file {sidecar.name} is missing")
    try:
        frame = read_rows(csv)
    except (ValueError, pd.errors.ParserError) as exc:
        raise IncompleteResults(f"{csv}: not a readable results table ({exc})") from None
    meta = read_json(sidecar)
    return _check_rows(frame, meta, csv, allow_partial), meta


def read_per_record(paths: Iterable[str | os.PathLike[str]], allow_partial: bool = False) -> pd.DataFrame:
    """Every per-request table (``metrics/records/*.csv``) of the given runs, labelled with the
    method, dataset, split, protocol, batch size, seed and run id stored next to it; each checked
    whole (:class:`IncompleteResults` otherwise; ``allow_partial``: accepted, rows marked ``partial``)."""
    frames = []
    for p in paths:
        folder = Path(p) / "metrics" / "records"
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"{p}: no per-request results in {folder} (run notebooks 03/04 for this run first)")
        for csv in files:
            frame, meta = _with_sidecar(csv, allow_partial)
            labels = meta.get("labels") or {}
            missing = [k for k in ("method", "dataset", "split", "protocol", "batch_size", "seed", "run_id") if k not in labels]
            if missing:
                raise ValueError(f"{csv.with_suffix('.json')}: labels lack {missing} (written by an older kit?)")
            frames.append(frame.assign(**{k: labels[k] for k in ("method", "dataset", "split", "protocol", "batch_size",
                                                                   "seed", "run_id", "lm")}))
    return pd.concat(frames, ignore_index=True)


def read_growth_records(paths: Iterable[str | os.PathLike[str]], allow_partial: bool = False) -> pd.DataFrame:
    """Every per-request memory-growth table (``metrics/growth_<dataset>_<method>.csv``, with a
    ``stored`` column) of the given runs, labelled with its method and dataset (read from its
    sidecar JSON). Empty when the runs have none."""
    frames = []
    for p in paths:
        for csv in sorted((Path(p) / "metrics").glob("growth_*_*.csv")):
            frame, meta = _with_sidecar(csv, allow_partial)
            labels = meta.get("labels") or {}
            if "method" not in meta or "dataset" not in labels:
                raise ValueError(f"{csv.with_suffix('.json')}: lacks the method or labels.dataset (written by an older kit?)")
            frames.append(frame.assign(method=meta["method"], dataset=labels["dataset"], run=str(p)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
