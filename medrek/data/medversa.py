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
from .records import fold_question

__all__ = [
    "SPLITS",
    "Violation",
    "PoolAudit",
    "PoolValidationError",
    "audit_pool",
    "near_duplicate_locality",
    "CrossFieldRule",
    "CROSS_FIELD_RULES",
    "cross_field_audit",
    "cross_field_counts",
    "cross_field_markdown",
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
        folded[fold_question(raw["prompt"])].append(i)
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
        if fold_question(raw["target_new"]) == fold_question(raw["ground_truth"]):
            add(Violation("target-equals-ground-truth", i, rid, f"target_new {raw['target_new']!r} equals ground_truth"))
        if raw["locality_prompt"] in exact:
            hit = exact[raw["locality_prompt"]][0]
            add(Violation("strict-locality", i, rid, f"locality_prompt equals the edit prompt of record {hit}"))
        elif fold_question(raw["locality_prompt"]) in folded:
            hit = folded[fold_question(raw["locality_prompt"])][0]
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


# ---------------------------------------------------------------------------------------------
# Cross-field leaks: every question field against every other, across records
# ---------------------------------------------------------------------------------------------
QUESTION_FIELDS = ("prompt", "rephrase_prompt", "locality_prompt")
COMPARISONS = ("exact", "folded", "semantic")


@dataclass(frozen=True)
class CrossFieldRule:
    """One comparison of a record's question ``field`` with ``other`` questions.

    ``scope`` is ``own`` (the same record's ``other`` field) or ``others`` (any other record's).
    With ``field == other`` and scope ``others`` a finding is a group of records sharing the
    text; otherwise it is the record whose ``field`` matches.
    """

    name: str
    field: str
    other: str
    scope: str
    consequence: str

    @property
    def shared(self) -> bool:
        return self.field == self.other


CROSS_FIELD_RULES = (
    CrossFieldRule("shared-prompt", "prompt", "prompt", "others",
                   "two records edit the same question"),
    CrossFieldRule("shared-rephrase", "rephrase_prompt", "rephrase_prompt", "others",
                   "two records share a generality probe"),
    CrossFieldRule("shared-locality", "locality_prompt", "locality_prompt", "others",
                   "one locality probe serves several records"),
    CrossFieldRule("rephrase-is-own-prompt", "rephrase_prompt", "prompt", "own",
                   "generality is just efficacy"),
    CrossFieldRule("rephrase-is-other-prompt", "rephrase_prompt", "prompt", "others",
                   "generality measures another record's edit as much as this one"),
    CrossFieldRule("locality-is-own-prompt", "locality_prompt", "prompt", "own",
                   "the locality probe asks the edited question"),
    CrossFieldRule("locality-is-other-prompt", "locality_prompt", "prompt", "others",
                   "with that edit stored, 'must not change' is ill-posed"),
    CrossFieldRule("locality-is-own-rephrase", "locality_prompt", "rephrase_prompt", "own",
                   "the locality probe is the record's own paraphrase"),
    CrossFieldRule("locality-is-other-rephrase", "locality_prompt", "rephrase_prompt", "others",
                   "with that edit stored, the probe is a paraphrase of it: 'must not change' is ill-posed"),
)


def _split_of(splits: dict[str, Sequence[dict[str, Any]]] | None) -> dict[str, str]:
    return {str(r["id"]): name for name, recs in (splits or {}).items() for r in recs}


def _groups_over(sims: torch.Tensor, threshold: float) -> list[list[int]]:
    """Connected components (size > 1) of the graph ``sims >= threshold`` (diagonal ignored)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    hits = (sims >= threshold).nonzero()
    hits = hits[hits[:, 0] != hits[:, 1]].numpy()
    n = sims.shape[0]
    graph = coo_matrix((np.ones(len(hits)), (hits[:, 0], hits[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels.tolist()):
        members[label].append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def _matches(pool: Sequence[dict[str, Any]], rule: CrossFieldRule, comparison: str,
             embeddings: dict[str, torch.Tensor] | None, threshold: float) -> list[tuple[int, list[int], float]]:
    """(anchor index, related indices, cosine or 1.0) of every finding of ``rule``."""
    n = len(pool)
    if comparison == "semantic":
        if rule.scope == "own":
            return []  # a record's own paraphrase is meant to be close: only string identity counts
        a, b = embeddings[rule.field], embeddings[rule.other]
        sims = a @ b.T  # [N, N]
        if rule.shared:
            return [(g[0], g[1:], float(sims[g[0], g[1]])) for g in _groups_over(sims, threshold)]
        sims.fill_diagonal_(-1.0)
        best = sims.max(dim=1).values
        out = []
        for i in (best >= threshold).nonzero()[:, 0].tolist():
            out.append((i, (sims[i] >= threshold).nonzero()[:, 0].tolist(), float(best[i])))
        return out
    key = (lambda t: t) if comparison == "exact" else fold_question
    if rule.scope == "own":
        return [(i, [], 1.0) for i, r in enumerate(pool) if key(r[rule.field]) == key(r[rule.other])]
    index: dict[str, list[int]] = defaultdict(list)
    for j, r in enumerate(pool):
        index[key(r[rule.other])].append(j)
    if rule.shared:
        return [(g[0], g[1:], 1.0) for g in index.values() if len(g) > 1]
    out = []
    for i in range(n):
        related = [j for j in index.get(key(pool[i][rule.field]), []) if j != i]
        if related:
            out.append((i, related, 1.0))
    return out


def cross_field_audit(pool: Sequence[dict[str, Any]], splits: dict[str, Sequence[dict[str, Any]]] | None = None,
                      embeddings: dict[str, torch.Tensor] | None = None, threshold: float = 0.95,
                      rules: Sequence[CrossFieldRule] = CROSS_FIELD_RULES) -> pd.DataFrame:
    """Every cross-field finding of ``rules`` in ``pool``: one row per finding and comparison.

    Comparisons: ``exact`` string equality, ``folded`` (case and spacing ignored; includes the
    exact ones) and, when ``embeddings`` (field -> [N, H] L2-normalised sentence embeddings in
    pool order) are given, ``semantic`` (cosine >= ``threshold``; across records only). With
    ``splits`` (split name -> records, matched by id), each finding says which splits its
    records fall in: ``split`` is one name, or ``across`` with ``splits`` listing them (a
    train/test pair is a leak of the test set into training). Reports only; removes nothing.
    """
    where = _split_of(splits)
    rows = []
    for rule in rules:
        for comparison in COMPARISONS:
            if comparison == "semantic" and embeddings is None:
                continue
            for i, related, cosine in _matches(pool, rule, comparison, embeddings, threshold):
                ids = [str(pool[k]["id"]) for k in [i, *related]]
                in_splits = sorted({where[x] for x in ids if x in where}, key=lambda s: SPLITS.index(s) if s in SPLITS else 99)
                rows.append({
                    "rule": rule.name, "comparison": comparison, "index": i, "id": ids[0],
                    "field": rule.field, "text": pool[i][rule.field],
                    "related_ids": " ".join(ids[1:]), "related_field": rule.other,
                    "related_text": pool[related[0]][rule.other] if related else pool[i][rule.other],
                    "records": len(ids), "cosine": round(cosine, 4),
                    "split": (in_splits[0] if len(in_splits) == 1 else "across") if in_splits else "",
                    "splits": "+".join(in_splits),
                })
    columns = ["rule", "comparison", "index", "id", "field", "text", "related_ids", "related_field", "related_text",
               "records", "cosine", "split", "splits"]
    return pd.DataFrame(rows, columns=columns)


def cross_field_counts(findings: pd.DataFrame, rules: Sequence[CrossFieldRule] = CROSS_FIELD_RULES) -> pd.DataFrame:
    """Findings per rule and comparison (zeros included): in total, per split, across splits,
    and how many of those cross train and test (``train+test``: a test question also in training)."""
    comparisons = [c for c in COMPARISONS if c in set(findings["comparison"])] or ["exact", "folded"]
    rows = []
    for rule in rules:
        for comparison in comparisons:
            if comparison == "semantic" and rule.scope == "own":
                continue
            part = findings[(findings["rule"] == rule.name) & (findings["comparison"] == comparison)]
            row = {"rule": rule.name, "comparison": comparison, "findings": len(part), "records": int(part["records"].sum())}
            for split in SPLITS:
                row[split] = int((part["split"] == split).sum())
            row["across"] = int((part["split"] == "across").sum())
            row["train+test"] = int(part["splits"].str.contains("train").mul(part["splits"].str.contains("test")).sum())
            rows.append(row)
    return pd.DataFrame(rows)


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


def cross_field_markdown(findings: pd.DataFrame, threshold: float | None = None, examples: int = 2) -> str:
    """The datasheet's cross-field section: counts per rule and split, then examples."""
    counts = cross_field_counts(findings)
    rules = {r.name: r for r in CROSS_FIELD_RULES}
    counts.insert(2, "consequence", [rules[n].consequence for n in counts["rule"]])
    lines = [
        "## Cross-field leaks (reported, nothing removed)",
        "",
        "Every question field (prompt, rephrase, locality prompt) against every other, within a record "
        "(`*-own-*` rules) and across records (`*-other-*` and `shared-*`). A finding is a record, or for `shared-*` a group of records "
        "sharing one text. `folded` ignores case and spacing and includes `exact`; `semantic` is "
        + (f"sentence-embedding cosine >= {threshold}, across records only. " if threshold is not None else
           "not computed here. ")
        + "Per split: findings whose records all lie in that split; `across`: records in several splits, "
        "of which `train+test` join a test record with a training record (a leak of the test set).",
        "",
        counts.to_markdown(index=False),
        "",
    ]
    shown = findings[findings["comparison"].isin(["exact", "folded"])].drop_duplicates(["rule", "index"])
    for name, group in shown.groupby("rule", sort=False):
        lines.append(f"- **{name}** ({rules[name].consequence}):")
        for _, row in group.head(examples).iterrows():
            lines.append(f"  - id {row['id']} ({row['splits']}) {row['field']} {row['text']!r} = "
                         f"{row['related_field']} of id {row['related_ids'] or row['id']}")
    return "\n".join(lines + [""])


def datasheet_markdown(counts: pd.DataFrame, audit: PoolAudit, lengths: pd.DataFrame,
                       n_near: int, threshold: float, comparison: pd.DataFrame | None,
                       cross_findings: pd.DataFrame | None = None) -> str:
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
    if cross_findings is not None:
        semantic = (cross_findings["comparison"] == "semantic").any()
        lines += [cross_field_markdown(cross_findings, threshold if semantic else None)]
    if comparison is not None:
        lines += ["## Comparison with the released split", "",
                  comparison.to_markdown(index=False), ""]
    return "\n".join(lines)

