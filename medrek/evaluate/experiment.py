"""Evaluate several methods under several protocols into one run directory.

What notebooks 03 and 04 call: per (method, protocol) the per-request rows go to
``metrics/records/<dataset>_<split>_<method>_<protocol>.csv`` (resumable) and their summary
is upserted into ``metrics/results.csv`` / ``results.json`` as soon as that block finishes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..config import repo_path
from ..data.records import EditRecord
from ..io import read_json
from .protocols import Protocol, run_protocol, summarise
from .results import upsert_results

__all__ = ["EvaluationSetup", "evaluate_methods", "resolve_checkpoints", "describe_checkpoints", "records_path",
           "split_label", "COMMITTED_EDITORS"]


@dataclass
class EvaluationSetup:
    """What every result row records besides the method and protocol."""

    dataset: str
    split: str
    lm: str
    run_id: str
    seed: int = 0
    chat_template: str = "none"  # how every method's LM was asked (auto | none), recorded in each row
    batch_size: int = 32  # rows per LM forward
    fluency_n: int = 0
    fluency_tokens: int = 100
    resume: bool = True
    progress: bool = True
    max_length: int | None = None  # cut scored rows longer than this from the left (None: never; cuts are counted)
    settings: Mapping[str, Any] = field(default_factory=dict)  # per method name: its hyper-parameters


def split_label(split: str, limit: int | None, subset: str = "first") -> str:
    """How a (possibly limited) split is named in results: ``test``, ``test-first100`` or
    ``test-shuffled100`` (the seed is in every row's ``seed``)."""
    return split if limit is None else f"{split}-{subset}{int(limit)}"


def records_path(metrics: Path, setup: EvaluationSetup, method: str, protocol: Protocol) -> Path:
    return Path(metrics) / "records" / f"{setup.dataset}_{setup.split}_{method}_{protocol.label}.csv"


COMMITTED_EDITORS = "checkpoints/small"  # the trained editors committed with the kit (relative to the repo root)


def resolve_checkpoints(methods: Sequence[str], run_root: str | os.PathLike[str],
                        given: Mapping[str, str | os.PathLike[str]] | None = None,
                        retrieval: Sequence[str] = (), fallback: str | os.PathLike[str] | None = COMMITTED_EDITORS,
                        lm: str | None = None) -> dict[str, Path]:
    """Trained editor folders for the retrieval ``methods``: ``given`` first (relative paths
    from the repository root), else the run's own ``checkpoints/<method>/best`` from notebook
    02, else the committed ``<fallback>/<method>`` if it was trained for ``lm`` (None: any LM;
    ``fallback=None``: no fallback). A missing one is named with what to do."""
    out: dict[str, Path] = {}
    for method in methods:
        if method not in retrieval:
            continue
        if given and method in given:
            folder = repo_path(given[method])
        else:
            folder = Path(run_root) / "checkpoints" / method / "best"
            committed = repo_path(fallback) / method if fallback is not None else None
            if not (folder / "editor.json").exists() and committed is not None and _trained_for(committed, lm):
                folder = committed
        if not (folder / "editor.json").exists():
            raise FileNotFoundError(f"no trained {method!r} editor at {folder}: run notebook 02 with {method!r} in its "
                                    f"methods, or set editor_checkpoints: {{{method}: <folder>}} in the params")
        out[method] = folder
    return out


def _trained_for(folder: Path, lm: str | None) -> bool:
    if not (folder / "editor.json").exists():
        return False
    return lm is None or (read_json(folder / "editor.json").get("config") or {}).get("lm") == lm


def describe_checkpoints(checkpoints: Mapping[str, Path], run_root: str | os.PathLike[str]) -> list[str]:
    """One line per editor saying where it comes from (this run's training or the committed ones)."""
    lines = []
    for method, folder in checkpoints.items():
        own = Path(folder).resolve().is_relative_to(Path(run_root).resolve())
        where = "trained in this run" if own else ("the committed editor" if repo_path(COMMITTED_EDITORS) in Path(folder).parents
                                                   else "given in editor_checkpoints")
        lines.append(f"{method}: {folder} ({where})")
    return lines


def evaluate_methods(methods: Sequence[str], build: Callable[[str], Any], records: Sequence[EditRecord],
                     protocols: Sequence[Protocol | str], reference, metrics_dir: str | os.PathLike[str],
                     setup: EvaluationSetup) -> pd.DataFrame:
    """Run every (method, protocol); returns this call's tidy rows (also upserted on disk).

    ``build(name)`` makes one method at a time (parameter editors share the LM and restore it
    before the next one is built).
    """
    metrics_dir = Path(metrics_dir)
    protocols = [Protocol.parse(p) for p in protocols]
    summaries = []
    for name in methods:
        method = build(name)
        encoder = getattr(getattr(method, "editor", None), "config", None)
        for protocol in protocols:
            if protocol.batch_size > len(records):
                continue  # a batch larger than the split is the same as batch = all; not repeated
            context = {"method": name, "lm": setup.lm, "encoder": encoder.encoder if encoder else "-",
                       "chat_template": setup.chat_template,
                       "dataset": setup.dataset, "split": setup.split, "protocol": protocol.kind,
                       "batch_size": protocol.batch_size, "seed": setup.seed, "run_id": setup.run_id}
            rows = run_protocol(method, records, protocol, reference, records_path(metrics_dir, setup, name, protocol),
                                seed=setup.seed, batch_size=setup.batch_size, fluency_n=setup.fluency_n,
                                fluency_tokens=setup.fluency_tokens, resume=setup.resume, progress=setup.progress,
                                settings=setup.settings.get(name, {}), labels=context, max_length=setup.max_length)
            tidy = summarise(rows, context)
            upsert_results(metrics_dir / "results.csv", tidy)
            summaries.append(tidy)
        del method
    return pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
