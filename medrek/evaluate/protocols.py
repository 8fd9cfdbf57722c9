"""Editing protocols and the loop that evaluates a method under one of them.

* ``single``: edit one request, evaluate it, restore; next request.
* ``batch-N``: shuffle (seeded), edit N requests at once, evaluate those N, restore, next N.
* ``sequential-N``: edits accumulate N at a time without restoring; every request edited so
  far is evaluated after each checkpoint T1 < T2 < ... (default: once, after all of them).

:func:`run_protocol` writes one row per evaluated request (and per checkpoint) to a CSV after
every finished block, atomically, so a killed evaluation resumes where it stopped.
:func:`summarise` turns those rows into the tidy results table.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd
import torch

from ..data.records import EditRecord, records_sha256
from ..io import read_json, read_rows, write_csv, write_json
from ..models.prompt import EditTextCutWarning

if TYPE_CHECKING:
    from ..editor import EditedModel

from .metrics import agreement, avg_score, ngram_entropy

__all__ = ["Protocol", "Step", "plan", "unedited_locality_predictions", "run_protocol", "summarise",
           "RESULT_COLUMNS", "ResumeError", "TruncationWarning"]

PROTOCOLS = ("single", "batch", "sequential")
RESULT_COLUMNS = ["method", "lm", "encoder", "chat_template", "dataset", "split", "protocol", "batch_size",
                  "eval_at", "metric", "value", "n", "seed", "run_id"]


SUMMED = {"truncated_rows", "edit_tokens_dropped"}  # summary metrics that are totals over the requests, not means


class ResumeError(RuntimeError):
    """Saved per-request results were made with other settings than this run's."""


@dataclass(frozen=True)
class Protocol:
    """``kind`` single | batch | sequential; ``batch_size`` edits per block (per edit call when
    sequential); ``checkpoints``: numbers of accumulated edits at which a sequential run is
    evaluated (empty: at the end)."""

    kind: str
    batch_size: int = 1
    checkpoints: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.kind!r}; expected one of {PROTOCOLS}")
        if self.batch_size < 1 or (self.kind == "single" and self.batch_size != 1):
            raise ValueError(f"protocol {self.kind}: batch size {self.batch_size} is not allowed")
        if list(self.checkpoints) != sorted(set(self.checkpoints)) or any(t < 1 for t in self.checkpoints):
            raise ValueError(f"checkpoints must be increasing positive counts, got {list(self.checkpoints)}")
        if self.checkpoints and self.kind != "sequential":
            raise ValueError("checkpoints only apply to the sequential protocol")

    @classmethod
    def parse(cls, spec: "str | Mapping[str, Any] | Protocol") -> "Protocol":
        """``"single"``, ``"batch-100"``, ``"sequential"`` / ``"sequential-10"`` or a mapping
        ``{kind, batch_size, checkpoints}``."""
        if isinstance(spec, Protocol):
            return spec
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"kind", "batch_size", "checkpoints"}
            if unknown:
                raise ValueError(f"protocol {dict(spec)}: unknown field(s) {sorted(unknown)}")
            return cls(spec["kind"], int(spec.get("batch_size", 1)), tuple(int(t) for t in spec.get("checkpoints", ())))
        kind, _, size = str(spec).partition("-")
        if size and not size.isdigit():
            raise ValueError(f"protocol {spec!r}: expected e.g. 'single', 'batch-100' or 'sequential-10'")
        return cls(kind, int(size) if size else 1)

    @property
    def label(self) -> str:
        return self.kind if self.kind == "single" else f"{self.kind}-{self.batch_size}"


@dataclass
class Step:
    edit: list[int]  # record indices applied in this step
    evaluate: list[int] = field(default_factory=list)  # record indices evaluated after it
    reset: bool = False  # restore the method before applying
    eval_at: int = 0  # edits in place when evaluated


def plan(protocol: Protocol, n: int, seed: int) -> list[Step]:
    """The steps of ``protocol`` over ``n`` records in a seeded order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    size = protocol.batch_size
    blocks = [order[i: i + size] for i in range(0, n, size)]
    if protocol.kind != "sequential":
        return [Step(b, b, reset=True, eval_at=len(b)) for b in blocks]
    checkpoints = [t for t in protocol.checkpoints if t <= n] or [n]
    steps, done = [], 0
    for i, block in enumerate(blocks):
        done += len(block)
        hit = [t for t in checkpoints if done - len(block) < t <= done]
        if hit and hit[-1] != done:
            raise ValueError(f"sequential checkpoint {hit[-1]} is not a multiple of the batch size {size}")
        steps.append(Step(block, order[:done] if hit else [], reset=i == 0, eval_at=done))
    return steps


@torch.no_grad()
def unedited_locality_predictions(model: "EditedModel", records: Sequence[EditRecord],
                                  batch_size: int = 32, max_length: int | None = None) -> dict[str, list[torch.Tensor]]:
    """Per probe name, the unedited LM's argmax tokens on every record's locality answer.

    ``max_length`` (None: never) cuts longer rows from the left, as the evaluation does; any
    cut row is warned about with its count."""
    from ..editor import score_pairs  # the editor imports this package's metrics

    names = list(records[0].locality) if records else []
    out, cut = {}, 0
    for name in names:
        res = score_pairs(model, [r.locality[name].prompt for r in records], [r.locality[name].answer for r in records],
                          None, batch_size, max_length)
        out[name] = res.predictions
        cut += int(res.truncated.sum())
    if cut:
        warnings.warn(f"locality reference: {cut} of {len(names) * len(records)} rows are longer than "
                      f"max_length={max_length} and were cut from the left; set max_length to None to score them whole",
                      TruncationWarning, stacklevel=2)
    return out


class TruncationWarning(UserWarning):
    """Scored rows were cut to ``max_length``: their prompts lost their first tokens."""


def _eval_rows(recs: Sequence[EditRecord], locality: bool = True) -> tuple[list[str], list[str]]:
    """(prompts, targets): all prompts, then all rephrases, then (``locality``) each locality
    probe's prompts."""
    prompts = [r.prompt for r in recs] + [r.rephrase for r in recs]
    targets = [r.target_new for r in recs] * 2
    for name in recs[0].locality if locality else ():
        prompts += [r.locality[name].prompt for r in recs]
        targets += [r.locality[name].answer for r in recs]
    return prompts, targets


def reports_fired(method) -> bool:
    """Whether ``method``'s scores say which rows an edit acted on (``ScoreResult.fired``): the
    retrieval editors, and baselines that route (GRACE, WISE) with ``fires = True``."""
    fires = getattr(method, "fires", None)
    return bool(method.retrieval if fires is None else fires)


def _record_rows(method, records, idx: list[int], res, reference) -> list[dict]:
    """One row per evaluated record from the scores of :func:`_eval_rows`.

    A stateless method (the unedited LM) is the reference model itself, so its locality rows
    are not scored a second time: its predictions are the reference's (locality 1 by definition).
    ``truncated_rows`` counts the record's scored rows that were cut to ``max_length``;
    ``edit_tokens_dropped`` the tokens of its edit text the method's prompt could not carry.
    """
    recs = [records[i] for i in idx]
    dropped = method.edit_tokens_dropped(recs)
    names = list(recs[0].locality)
    n = len(recs)
    scored = len(res.accuracy) // n  # rows scored per record
    cut = res.truncated if res.truncated is not None else torch.zeros(len(res.accuracy), dtype=torch.bool)
    rows = []
    for j, (i, r) in enumerate(zip(idx, recs)):
        row: dict[str, Any] = {"record_id": r.record_id, "subject": r.subject,
                               "efficacy": float(res.accuracy[j]), "generality": float(res.accuracy[n + j]),
                               "truncated_rows": int(sum(bool(cut[k * n + j]) for k in range(scored))),
                               "edit_tokens_dropped": int(dropped[j])}
        loc = []
        for p, name in enumerate(names):
            k = (2 + p) * n + j
            after = reference[name][i] if method.stateless else res.predictions[k]
            value = float(agreement([reference[name][i]], [after])[0])
            row[f"locality/{name}"] = value
            loc.append(value)
            if reports_fired(method):
                row[f"fired/{name}"] = float(res.fired[k])
            if method.retrieval:
                row[f"margin/{name}"] = float(res.margins[k])
        row["locality"] = sum(loc) / len(loc) if loc else math.nan
        if method.retrieval:
            row["retrieved_prompt"] = float(res.retrieved_ids[j] == r.record_id)
            row["retrieved_rephrase"] = float(res.retrieved_ids[n + j] == r.record_id)
            row["margin/prompt"] = float(res.margins[j])
            row["margin/rephrase"] = float(res.margins[n + j])
        rows.append(row)
    return rows


def _score_step(method, records: Sequence[EditRecord], idx: list[int], reference, batch_size: int,
                max_length: int | None = None) -> list[dict]:
    """Score ``idx`` with the method's current edits in place."""
    prompts, targets = _eval_rows([records[i] for i in idx], locality=not method.stateless)
    res = method.score(prompts, targets, batch_size=batch_size, max_length=max_length)
    return _record_rows(method, records, idx, res, reference)


def _score_blocks(method, records, steps: list["Step"], reference, batch_size: int,
                  max_length: int | None = None) -> list[list[dict]]:
    """Score several independent blocks in shared LM batches (``method.score_blocks``)."""
    jobs = []
    for s in steps:
        prompts, targets = _eval_rows([records[i] for i in s.evaluate])
        jobs.append(([records[i] for i in s.edit], prompts, targets))
    results = method.score_blocks(jobs, batch_size=batch_size, max_length=max_length)
    return [_record_rows(method, records, s.evaluate, res, reference) for s, res in zip(steps, results)]


def _signature(method, records, protocol, seed, extra) -> dict:
    """What made a set of saved rows: the method and what it is made of (``method.identity()``:
    a trained editor's fingerprint, a baseline's settings), the records' content, the protocol."""
    ids = hashlib.sha256("\n".join(r.record_id for r in records).encode()).hexdigest()[:16]
    return {"method": method.name, "identity": method.identity(), "protocol": asdict(protocol), "seed": seed,
            "records": len(records), "record_ids": ids, "records_sha256": records_sha256(records), **extra}


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> str:
    """The fields where two signatures differ, nested ones dotted: ``identity.editor: 3f2a.. vs 9b1c..``."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "<missing>"), now.get(key, "<missing>")
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.append(_differences(a, b, f"{prefix}{key}."))
        else:
            short = [str(v)[:16] + ("..." if len(str(v)) > 16 else "") for v in (a, b)]
            out.append(f"{prefix}{key}: saved {short[0]} vs now {short[1]}")
    return "; ".join(out)


def run_protocol(method, records: Sequence[EditRecord], protocol: Protocol, reference: Mapping[str, list[torch.Tensor]],
                 path: str | Path, *, seed: int = 0, batch_size: int = 32, fluency_n: int = 0,
                 fluency_tokens: int = 100, resume: bool = True, progress: bool = True,
                 settings: Mapping[str, Any] | None = None, labels: Mapping[str, Any] | None = None,
                 prepare_edits: int = 32, max_length: int | None = None) -> pd.DataFrame:
    """Evaluate ``method`` under ``protocol``; per-record rows go to ``path`` (CSV) block by block.

    ``fluency_n``: the first that many requests of the seeded order also get a sampled
    generation (top-k 5, ``fluency_tokens`` new tokens) with their edits in place, scored by
    n-gram entropy. ``settings`` (e.g. the method's hyper-parameters) are stored next to the
    rows; resuming from rows made with other settings raises :class:`ResumeError`. ``labels``
    (dataset, split, lm, ...) are stored with them for readers of the rows. Under single and
    batch protocols, methods may precompute up to ``prepare_edits`` upcoming edits' blocks
    together (:meth:`EditMethod.prepare`). ``max_length`` (None, the default: never) cuts
    longer rows from the left; every row then says how many of its rows were cut
    (``truncated_rows``) and a :class:`TruncationWarning` gives the total.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    sig_path = path.with_suffix(".json")
    extra = {"fluency_n": fluency_n, "fluency_tokens": fluency_tokens, "settings": dict(settings or {}),
             "labels": dict(labels or {})}
    if max_length is not None:  # absent when nothing can be cut, so rows saved before the setting still resume
        extra["max_length"] = max_length
    signature = _signature(method, records, protocol, seed, extra)
    signature = json.loads(json.dumps(signature))  # as it reads back from JSON
    rows: list[dict] = []
    if resume and path.exists() and sig_path.exists():
        saved = read_json(sig_path)
        if saved != signature:
            raise ResumeError(f"{path}: saved results were made by something else ({_differences(saved, signature)}); "
                              "delete the file or evaluate with resume=False")
        rows = read_rows(path).to_dict("records")
    write_json(sig_path, signature)
    done = {(int(r["eval_at"]), str(r["record_id"])) for r in rows}
    steps = plan(protocol, len(records), seed)
    order = [i for s in steps for i in s.edit]
    fluent = set(order[:fluency_n])
    todo = [[i for i in s.evaluate if (s.eval_at, records[i].record_id) not in done] for s in steps]
    last_needed = max((k for k, t in enumerate(todo) if t), default=-1)
    pending: list[Step] = []
    bar = tqdm(total=sum(map(len, todo)), desc=f"{method.name} {protocol.label}", disable=not progress)
    prepared_until = 0
    # isolated: independent blocks scored against their own edits, nothing left in place
    isolated = getattr(method, "block_scoring", False) and protocol.kind != "sequential" and not method.stateless
    together = method.stateless or isolated
    try:
        with warnings.catch_warnings():  # edits cut to the prompt's slots: one summary below, not one per block
            warnings.simplefilter("ignore", EditTextCutWarning)
            for k, step in enumerate(steps[: last_needed + 1]):
                if not together:
                    if not todo[k] and protocol.kind != "sequential":
                        continue  # evaluated before this run: no need to edit
                    if protocol.kind != "sequential" and k >= prepared_until:
                        prepared_until = _prepare_window(method, records, steps, todo, k, last_needed, prepare_edits)
                    if step.reset:
                        method.restore()
                    method.edit([records[i] for i in step.edit])
                if todo[k]:
                    pending.append(Step(step.edit, todo[k], step.reset, step.eval_at))
                full = sum(len(s.evaluate) for s in pending) >= 256
                if pending and (not together or k == last_needed or full):
                    rows += _evaluate_pending(method, records, pending, reference, batch_size, fluent, fluency_tokens,
                                              seed, k, isolated, max_length)
                    bar.update(sum(len(s.evaluate) for s in pending))
                    pending = []
                    write_csv(path, pd.DataFrame(rows))
    finally:
        bar.close()
        method.restore()
    out = pd.DataFrame(rows)
    _warn_cuts(method, protocol, out, max_length)
    return out


def _warn_cuts(method, protocol: Protocol, out: pd.DataFrame, max_length: int | None) -> None:
    """One warning per run for scored rows cut to ``max_length`` and for edit texts a prompt
    could not carry whole (both are counted in the rows)."""
    cut = int(out["truncated_rows"].fillna(0).sum()) if "truncated_rows" in out else 0
    if cut:
        warnings.warn(f"{method.name} {protocol.label}: {cut} scored rows of {len(out)} requests are longer than "
                      f"max_length={max_length} and were cut from the left (their prompts lost tokens); "
                      "the count is in the rows and results as truncated_rows. Set max_length to None to score them whole",
                      TruncationWarning, stacklevel=3)
    dropped = out["edit_tokens_dropped"].fillna(0) if "edit_tokens_dropped" in out else pd.Series(dtype=float)
    if int((dropped > 0).sum()):
        warnings.warn(f"{method.name} {protocol.label}: the edit texts of {int((dropped > 0).sum())} of {len(out)} "
                      f"requests are longer than the prompt's slots and lost {int(dropped.sum())} tokens in all "
                      "(their first ones); the count is in the rows and results as edit_tokens_dropped. Load the "
                      "editor with a larger n_tokens to carry them whole", EditTextCutWarning, stacklevel=3)


def _prepare_window(method, records, steps: list[Step], todo: list[list[int]], k: int, last: int, size: int) -> int:
    """Let the method precompute the next independent blocks (up to ``size`` edits); returns
    the first step after the window."""
    blocks, j, total = [], k, 0
    while j <= last and (total < size or not blocks):
        if todo[j]:
            blocks.append([records[i] for i in steps[j].edit])
            total += len(steps[j].edit)
        j += 1
    method.prepare(blocks)
    return j


def _evaluate_pending(method, records, pending: list[Step], reference, batch_size: int, fluent: set[int],
                      fluency_tokens: int, seed: int, k: int, isolated: bool, max_length: int | None) -> list[dict]:
    """Score the pending evaluations. A stateless method's steps are scored together; when
    ``isolated`` (block-scoring retrieval editors under single/batch) each step is scored
    against its own block's edits in shared LM batches; otherwise the method's current edits
    are in place."""
    if method.stateless:
        idx = [i for s in pending for i in s.evaluate]
        scored = _score_step(method, records, idx, reference, batch_size, max_length)
        per_step, start = [], 0
        for s in pending:
            per_step.append(scored[start: start + len(s.evaluate)])
            start += len(s.evaluate)
    elif isolated:
        per_step = _score_blocks(method, records, pending, reference, batch_size, max_length)
    else:
        per_step = [_score_step(method, records, s.evaluate, reference, batch_size, max_length) for s in pending]
    rows = []
    for s, new in zip(pending, per_step):
        for i, row in zip(s.evaluate, new):
            row.update(eval_at=s.eval_at, step=k)
            if i in fluent:
                row["fluency"] = _fluency(method, records, s, i, fluency_tokens, seed, isolated)
        rows += new
    return rows


def _fluency(method, records, step: Step, i: int, tokens: int, seed: int, isolated: bool) -> float:
    """Sampled generation for request ``i`` with its step's edits in place (seeded)."""
    if isolated:  # block scoring left nothing in place: put this block's edits in
        method.restore()
        method.edit([records[j] for j in step.edit])
    try:
        torch.manual_seed(seed * 100003 + i)
        text = method.generate([records[i].prompt], max_new_tokens=tokens, do_sample=True, top_k=5,
                               min_new_tokens=tokens)[0]
    finally:
        if isolated:
            method.restore()
    return ngram_entropy(text)


def summarise(per_record: pd.DataFrame, context: Mapping[str, Any]) -> pd.DataFrame:
    """Tidy rows (``RESULT_COLUMNS``) of the mean of every metric per ``eval_at``.

    ``context`` gives method, lm, encoder, chat_template, dataset, split, protocol, batch_size,
    seed, run_id.
    ``avg`` is the paper's Avg of the mean efficacy, generality and locality;
    ``truncated_rows`` and ``edit_tokens_dropped`` are totals (rows cut to ``max_length``, edit
    text tokens a prompt could not carry), not means.
    """
    missing = [c for c in RESULT_COLUMNS if c not in ("eval_at", "metric", "value", "n") and c not in context]
    if missing:
        raise ValueError(f"summarise needs {missing} in its context")
    metric_cols = [c for c in per_record.columns if c not in ("record_id", "subject", "eval_at", "step")]
    out = []
    for eval_at, group in per_record.groupby("eval_at", sort=True):
        means = {}
        for col in metric_cols:
            values = group[col].dropna()
            if len(values):
                means[col] = (float(values.sum() if col in SUMMED else values.mean()), len(values))
        if {"efficacy", "generality", "locality"} <= set(means):
            means["avg"] = (avg_score(means["efficacy"][0], means["generality"][0], means["locality"][0]), len(group))
        for metric, (value, n) in sorted(means.items()):
            out.append({**{c: context[c] for c in RESULT_COLUMNS if c in context}, "eval_at": int(eval_at),
                        "metric": metric, "value": value, "n": n})
    return pd.DataFrame(out, columns=RESULT_COLUMNS)

