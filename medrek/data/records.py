"""The one record type every benchmark is loaded into."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

__all__ = ["LocalityProbe", "EditRecord", "records_sha256"]


@dataclass(frozen=True)
class LocalityProbe:
    """An unrelated question whose answer must not change after the edit."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class EditRecord:
    """An edit request plus the probes needed to evaluate it.

    Attributes:
        record_id: stable identifier (the source id when the file has one, else the index).
        prompt: the question whose answer is edited.
        target_new: the answer the edited model must give.
        ground_truth: the old answer (may be empty where a source has none).
        rephrase_prompts: paraphrases of ``prompt`` (generality probes); at least one.
        subject: the subject used for stratification and per-subject reports.
        locality: named locality probes, e.g. ``{"locality": ...}`` for MedVersa or
            ``{"target": ..., "mapping": ..., "struc": ..., "tokenSem": ...}`` for MedCF.
        meta: any other source fields (topic, locality subject, ...), kept for audits.
    """

    record_id: str
    prompt: str
    target_new: str
    ground_truth: str
    rephrase_prompts: tuple[str, ...]
    subject: str
    locality: Mapping[str, LocalityProbe] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rephrase(self) -> str:
        """The first paraphrase (the one used by training and the standard metrics)."""
        return self.rephrase_prompts[0]


def records_sha256(records: Sequence[EditRecord]) -> str:
    """A hash of records' content (ids, texts, probes, meta), in order: what a checkpoint or a
    saved result was made from."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(asdict(record), sort_keys=True, default=str).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")  # zero-width, BOM, bidi marks


def fold_question(text: str) -> str:
    """Loose comparison form of a question: Unicode NFKC (full-width letters, ligatures and
    composed / decomposed accents read alike), zero-width characters, soft hyphens, bidi marks
    and BOMs removed, case-folded, whitespace collapsed and trimmed (what the pool audit compares,
    what ``exact_match`` retrieval counts as the same question, and what ``edit`` calls empty)."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    return re.sub(r"\s+", " ", text).strip().casefold()


def unencodable_at(text: str) -> int | None:
    """The position of the first character of ``text`` that UTF-8 cannot encode (a lone
    surrogate, as ``"\\ud800"`` in JSON gives), else None: such text cannot be tokenised or saved."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None

