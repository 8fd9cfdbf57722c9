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

__all__ = ["KEY_COLUMNS", "upsert_results", "read_results", "read_per_record", "read_growth_records"]

KEY_COLUMNS = [c for c in RESULT_COLUMNS if c not in ("value", "n")]


def _check(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    if "chat_template" not in frame.columns:  # tables written before the setting existed asked plainly
        frame = frame.assign(chat_template="none")
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: results table lacks column(s) {missing}")
    return frame[RESULT_COLUMNS]


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


def _with_sidecar(csv: Path) -> tuple[pd.DataFrame, dict]:
    """A per-request CSV and the settings JSON saved next to it (refused if that is missing)."""
    sidecar = csv.with_suffix(".json")
    if not sidecar.exists():
        raise FileNotFoundError(f"{csv}: its settings file {sidecar.name} is missing")
    frame = read_rows(csv)
    return frame, read_json(sidecar)


def read_per_record(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Every per-request table (``metrics/records/*.csv``) of the given runs, labelled with the
    method, dataset, split, protocol, batch size, seed and run id stored next to it."""
    frames = []
    for p in paths:
        folder = Path(p) / "metrics" / "records"
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"{p}: no per-request results in {folder} (run notebooks 03/04 for this run first)")
        for csv in files:
            frame, meta = _with_sidecar(csv)
            labels = meta.get("labels") or {}
            missing = [k for k in ("method", "dataset", "split", "protocol", "batch_size", "seed", "run_id") if k not in labels]
            if missing:
                raise ValueError(f"{csv.with_suffix('.json')}: labels lack {missing} (written by an older kit?)")
            frames.append(frame.assign(**{k: labels[k] for k in ("method", "dataset", "split", "protocol", "batch_size",
                                                                   "seed", "run_id", "lm")}))
    return pd.concat(frames, ignore_index=True)


def read_growth_records(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Every per-request memory-growth table (``metrics/growth_<dataset>_<method>.csv``, with a
    ``stored`` column) of the given runs, labelled with its method and dataset (read from its
    sidecar JSON). Empty when the runs have none."""
    frames = []
    for p in paths:
        for csv in sorted((Path(p) / "metrics").glob("growth_*_*.csv")):
            frame, meta = _with_sidecar(csv)
            labels = meta.get("labels") or {}
            if "method" not in meta or "dataset" not in labels:
                raise ValueError(f"{csv.with_suffix('.json')}: lacks the method or labels.dataset (written by an older kit?)")
            frames.append(frame.assign(method=meta["method"], dataset=labels["dataset"], run=str(p)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
