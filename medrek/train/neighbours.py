"""Hard neighbours for the prompt encoder: questions a misfire would reach, that must keep their answer.

When the retriever wrongly fires an edit on a question about another fact of the same organ or
drug, the edit's prompt is injected into that question. Nothing in MedVersa's training data
teaches the prompt encoder to leave such a question alone: its locality prompts are almost all
on another topic. :func:`with_hard_neighbours` gives every training record one more locality
probe, ``neighbour``: the training prompt closest to its own that asks another question (the
rule of :mod:`medrek.train.cross_encoder`), with that record's old answer. The trainer's
locality term then asks that, with the edit's prompt prepended, the LM's distribution on that
answer stays the unedited one (KL), as for every locality probe.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from ..data.records import EditRecord, LocalityProbe
from .cross_encoder import closest_other_questions

__all__ = ["with_hard_neighbours"]


def with_hard_neighbours(records: Sequence[EditRecord], embed, near_duplicate: float = 0.9,
                         same_answer_similar: float = 0.7) -> list[EditRecord]:
    """``records`` each with a ``neighbour`` locality probe: the closest other record's prompt
    (``embed``: unit sentence vectors) that asks another question, and its old answer (its new
    one where a record has none)."""
    if len(records) < 2:
        raise ValueError(f"hard neighbours need at least 2 training records, got {len(records)}")
    if any("neighbour" in r.locality for r in records):
        raise ValueError("the training records already have a 'neighbour' locality probe")
    closest = closest_other_questions(records, embed, 1, near_duplicate, same_answer_similar)
    out = []
    for record, rows in zip(records, closest):
        if not rows:
            raise ValueError(f"record {record.record_id}: every other training prompt asks its question; "
                             "no hard neighbour to train on")
        other = records[rows[0]]
        probe = LocalityProbe(other.prompt, other.ground_truth or other.target_new)
        out.append(dataclasses.replace(record, locality={**record.locality, "neighbour": probe}))
    return out
