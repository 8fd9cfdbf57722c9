"""Building MedVersa: pool audit, errata, stratified split and a datasheet.

The released split is exactly (``SOURCES.md``)::

    train, rest = train_test_split(pool, train_size=3000, stratify=subject, random_state=42)
    valid, test = train_test_split(rest, test_size=1000, stratify=subject of rest, random_state=42)

plus one hand correction, kept in ``medversa_errata.json`` beside this module. The same code
splits any pool in the MedVersa schema.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..io import write_text
from .loaders import MEDVERSA, DataError, _record

__all__ = [
    "SPLITS",
    "Violation",
    "PoolAudit",
    "PoolValidationError",
    "audit_pool",
    "near_duplicate_locality",
    "load_errata",
    "apply_errata",
    "split_pool",
    "write_split",
    "compare_splits",
    "subject_counts",
    "length_stats",
    "subject_vocabulary_overlap",
]

SPLITS = ("train", "valid", "test")
HARD_RULES = ("schema", "empty-target", "duplicate-id", "duplicate-prompt", "strict-locality")
SOFT_RULES = ("target-equals-ground-truth", "case-duplicate-prompt", "case-strict-locality")


@dataclass(frozen=True)
class Violation:
    """One broken rule on one record."""

    rule: str
    index: int
    record_id: str
    detail: str

    def message(self, source: str) -> str:
        return f"{source}: record {self.index} (id {self.record_id}): rule '{self.rule}': {self.detail}"


class PoolValidationError(DataError):
    """The pool breaks a hard rule; the message lists the records and the rules."""


@dataclass
class PoolAudit:
    """Every violation found in a pool, hard (build fails) and soft (reported)."""

    source: str
    n_records: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def hard(self) -> list[Violation]:
        return [v for v in self.violations if v.rule in HARD_RULES]

    @property
    def soft(self) -> list[Violation]:
        return [v for v in self.violations if v.rule not in HARD_RULES]

    def counts(self) -> dict[str, int]:
        found = Counter(v.rule for v in self.violations)
        return {"records": self.n_records, **{rule: found.get(rule, 0) for rule in HARD_RULES + SOFT_RULES}}

    def raise_if_invalid(self, max_listed: int = 20) -> None:
        if not self.hard:
            return
        lines = [v.message(self.source) for v in self.hard[:max_listed]]
        more = len(self.hard) - max_listed
        tail = f"\n... and {more} more" if more > 0 else ""
        raise PoolValidationError(
            f"{self.source}: {len(self.hard)} hard violation(s) of the MedVersa rules:\n"
            + "\n".join(lines) + tail
        )


def _fold(text: str) -> str:
    """Loose comparison form of a prompt: case-folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def audit_pool(pool: Sequence[dict[str, Any]], source: str = "<pool>") -> PoolAudit:
    """Check schema, empty targets, duplicates, target == ground truth and strict locality.

    Hard rules (the build fails): schema, empty target, duplicate id, duplicate prompt and
    strict locality, i.e. no record's ``locality_prompt`` equals any edit ``prompt`` of the pool
    (exact string equality, the rule the release states). Soft rules (reported): the same two
    comparisons case-folded with whitespace collapsed, and target equal to ground truth.
    """
    audit = PoolAudit(source, len(pool))
    add = audit.violations.append
    valid: list[tuple[int, dict[str, Any]]] = []
    for i, raw in enumerate(pool):
        rid = str(raw.get("id", i)) if isinstance(raw, dict) else str(i)
        if isinstance(raw, dict) and isinstance(raw.get("target_new"), str) and not raw["target_new"].strip():
            add(Violation("empty-target", i, rid, "field 'target_new' is empty"))
            continue
        try:
            _record(raw, i, MEDVERSA, source)
        except DataError as exc:
            add(Violation("schema", i, rid, str(exc).split(": ", 2)[-1]))
            continue
        valid.append((i, raw))

    by_id: dict[str, list[int]] = defaultdict(list)
    exact: dict[str, list[int]] = defaultdict(list)
    folded: dict[str, list[int]] = defaultdict(list)
    for i, raw in valid:
        by_id[str(raw["id"])].append(i)
        exact[raw["prompt"]].append(i)
        folded[_fold(raw["prompt"])].append(i)
    for rid, idx in by_id.items():
        for i in idx[1:]:
            add(Violation("duplicate-id", i, rid, f"id also used by record {idx[0]}"))
    for index, rule in ((exact, "duplicate-prompt"), (folded, "case-duplicate-prompt")):
        for idx in index.values():
            for i in idx[1:]:
                if rule == "case-duplicate-prompt" and pool[i]["prompt"] in exact and len(exact[pool[i]["prompt"]]) > 1:
                    continue  # already a hard duplicate
                add(Violation(rule, i, str(pool[i]["id"]), f"prompt equals the prompt of record {idx[0]}"
                              + (" up to case and spacing" if rule.startswith("case") else "")))
    for i, raw in valid:
        rid = str(raw["id"])
        if _fold(raw["target_new"]) == _fold(raw["ground_truth"]):
            add(Violation("target-equals-ground-truth", i, rid, f"target_new {raw['target_new']!r} equals ground_truth"))
        if raw["locality_prompt"] in exact:
            hit = exact[raw["locality_prompt"]][0]
            add(Violation("strict-locality", i, rid, f"locality_prompt equals the edit prompt of record {hit}"))
        elif _fold(raw["locality_prompt"]) in folded:
            hit = folded[_fold(raw["locality_prompt"])][0]
            add(Violation("case-strict-locality", i, rid,
                          f"locality_prompt equals the edit prompt of record {hit} up to case and spacing"))
    audit.violations.sort(key=lambda v: (v.index, v.rule))
    return audit


def near_duplicate_locality(
    pool: Sequence[dict[str, Any]], edit_emb: torch.Tensor, locality_emb: torch.Tensor, threshold: float
) -> pd.DataFrame:
    """Locality prompts whose nearest edit prompt (by cosine) is at or above ``threshold``.

    ``edit_emb`` [N, H] and ``locality_emb`` [N, H] are L2-normalised sentence embeddings of the
    pool's prompts and locality prompts, in pool order.
    """
    sims = locality_emb @ edit_emb.T  # [N, N]
    best, nearest = sims.max(dim=1)
    rows = [
        {
            "index": i,
            "id": pool[i]["id"],
            "locality_prompt": pool[i]["locality_prompt"],
            "nearest_index": int(j),
            "nearest_prompt": pool[int(j)]["prompt"],
            "cosine": round(float(s), 4),
        }
        for i, (s, j) in enumerate(zip(best.tolist(), nearest.tolist()))
        if s >= threshold
    ]
    columns = ["index", "id", "locality_prompt", "nearest_index", "nearest_prompt", "cosine"]
    return pd.DataFrame(rows, columns=columns).sort_values(["cosine", "index"], ascending=[False, True], ignore_index=True)


def load_errata(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The kit's MedVersa errata (or a user's file in the same format)."""
    if path is None:
        text = resources.files("medrek.data").joinpath("medversa_errata.json").read_text("utf-8")
        source = "medrek/data/medversa_errata.json"
    else:
        text, source = Path(path).read_text("utf-8"), str(path)
    entries = json.loads(text)
    for k, entry in enumerate(entries):
        for key in ("id", "field", "pool_value", "released_value", "reason"):
            if key not in entry:
                raise DataError(f"{source}: entry {k}: missing field '{key}'")
    return entries


def apply_errata(pool: Sequence[dict[str, Any]], errata: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A corrected copy of ``pool``; each entry must match exactly one record and its old value."""
    fixed = [dict(r) for r in pool]
    index = {r["id"]: i for i, r in enumerate(fixed)}
    for entry in errata:
        if entry["id"] not in index:
            raise DataError(f"errata: no record with id {entry['id']} in the pool (is this the released pool?)")
        record = fixed[index[entry["id"]]]
        if record.get(entry["field"]) != entry["pool_value"]:
            raise DataError(
                f"errata: record id {entry['id']} field '{entry['field']}' is {record.get(entry['field'])!r}, "
                f"expected {entry['pool_value']!r} before correction"
            )
        record[entry["field"]] = entry["released_value"]
    return fixed


def split_pool(
    pool: Sequence[dict[str, Any]],
    sizes: Sequence[int] = (3000, 2000, 1000),
    stratify: str = "subject_name",
    seed: int = 42,
) -> dict[str, list[dict[str, Any]]]:
    """Two-step stratified split into train / valid / test (the released recipe)."""
    from sklearn.model_selection import train_test_split

    n_train, n_valid, n_test = (int(s) for s in sizes)
    if min(n_train, n_valid, n_test) <= 0 or n_train + n_valid + n_test > len(pool):
        raise ValueError(f"split sizes {list(sizes)} must be positive and sum to at most {len(pool)} records")
    pool = list(pool)
    missing = [i for i, r in enumerate(pool) if stratify not in r]
    if missing:
        raise DataError(f"stratify field '{stratify}' missing from record {missing[0]}")
    train, rest = train_test_split(
        pool, train_size=n_train, test_size=n_valid + n_test,
        stratify=[r[stratify] for r in pool], random_state=seed,
    )
    valid, test = train_test_split(
        rest, test_size=n_test, train_size=n_valid, stratify=[r[stratify] for r in rest], random_state=seed
    )
    return {"train": train, "valid": valid, "test": test}


def write_split(records: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write records in the release's exact JSON layout (pandas records, indent 2), atomically."""
    text = pd.DataFrame(list(records)).to_json(orient="records", indent=2, force_ascii=False)
    return write_text(path, text)


def compare_splits(built: dict[str, list[dict]], released: dict[str, list[dict]]) -> pd.DataFrame:
    """Record-by-record, in-order comparison: one row per split with identical / total counts."""
    rows = []
    for split in SPLITS:
        a, b = built[split], released[split]
        same = sum(x == y for x, y in zip(a, b))
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        rows.append({"split": split, "built": len(a), "released": len(b), "identical": same,
                     "first_difference": -1 if first is None else first})
    return pd.DataFrame(rows)


def subject_counts(splits: dict[str, list[dict]], stratify: str = "subject_name") -> pd.DataFrame:
    """Subjects x splits table of record counts (plus a total column), largest subjects first."""
    table = pd.DataFrame({s: Counter(r[stratify] for r in splits[s]) for s in SPLITS}).fillna(0).astype(int)
    table["total"] = table.sum(axis=1)
    table.index.name = "subject"
    ordered = table.reset_index().sort_values(["total", "subject"], ascending=[False, True])
    return ordered.set_index("subject")


def _words(text: str) -> int:
    return len(text.split())


def length_stats(splits: dict[str, list[dict]]) -> pd.DataFrame:
    """Length in words of prompts, rephrases and answers per split (tidy: split, field, stat, value)."""
    fields = ("prompt", "rephrase_prompt", "target_new", "ground_truth", "locality_prompt", "locality_ground_truth")
    rows = []
    for split in SPLITS:
        for f in fields:
            lengths = np.array([_words(r[f]) for r in splits[split]])
            for stat, value in (("mean", lengths.mean()), ("median", np.median(lengths)),
                                ("p90", np.percentile(lengths, 90)), ("max", lengths.max())):
                rows.append({"split": split, "field": f, "stat": stat, "value": round(float(value), 3)})
    return pd.DataFrame(rows)


def subject_vocabulary_overlap(pool: Sequence[dict[str, Any]], stratify: str = "subject_name") -> pd.DataFrame:
    """Jaccard overlap of the (lower-cased, alphabetic, >3 letters) prompt vocabularies of subjects.

    A high overlap means subjects share dense medical vocabulary, the situation in which a
    retriever keyed on surface form confuses edits (the paper's motivation for shared keys).
    """
    vocab: dict[str, set[str]] = defaultdict(set)
    for r in pool:
        vocab[r[stratify]].update(w for w in re.findall(r"[a-z]+", r["prompt"].lower()) if len(w) > 3)
    names = sorted(vocab)
    data = [[round(len(vocab[a] & vocab[b]) / max(1, len(vocab[a] | vocab[b])), 4) for b in names] for a in names]
    return pd.DataFrame(data, index=pd.Index(names, name="subject"), columns=names)


def word_lengths(splits: dict[str, list[dict]], fields: Sequence[str] = ("prompt", "target_new", "locality_prompt")) -> pd.DataFrame:
    """One row per record and field: split, field, words (for length histograms)."""
    rows = [{"split": s, "field": f, "words": _words(r[f])} for s in SPLITS for f in fields for r in splits[s]]
    return pd.DataFrame(rows)


def datasheet_markdown(counts: pd.DataFrame, audit: PoolAudit, lengths: pd.DataFrame,
                       n_near: int, threshold: float, comparison: pd.DataFrame | None) -> str:
    """A short datasheet for the run directory (Markdown)."""
    audit_rows = "\n".join(f"| {rule} | {n} |" for rule, n in audit.counts().items() if rule != "records")
    means = lengths[lengths["stat"] == "mean"].pivot(index="field", columns="split", values="value")[list(SPLITS)]
    lines = [
        "# MedVersa datasheet",
        "",
        f"Records: {audit.n_records} in the pool; "
        + ", ".join(f"{s} {int(counts[s].sum())}" for s in SPLITS)
        + f"; {len(counts)} subjects.",
        "",
        "## Audit (hard rules fail the build; the others are reported)",
        "",
        "| rule | violations |",
        "|---|---|",
        audit_rows,
        f"| near-duplicate locality (cosine >= {threshold}) | {n_near} |",
        "",
        "## Records per subject",
        "",
        counts.to_markdown(),
        "",
        "## Mean length in words",
        "",
        means.to_markdown(),
        "",
    ]
    if comparison is not None:
        lines += ["## Comparison with the released split", "",
                  comparison.to_markdown(index=False), ""]
    return "\n".join(lines)

