"""Synthetic MedFE-style records the kit writes itself (tests and benchmarks, never results).

MedFE's targets are free-text explanations (median 327 characters, up to 1,165), and both of
its locality probes (``topic`` and ``tokenSem``) have explanation answers too. The released
file is not needed to exercise that shape: :func:`medfe_style_records` makes records in the
MedFE schema with targets and locality answers of a chosen length in words, from a fixed
medical vocabulary and a seed, so the same call always gives the same records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

from ..io import write_text

__all__ = ["medfe_style_records", "long_edit_records", "write_medfe_fixture"]

_DRUGS = ("aspirin", "heparin", "warfarin", "metformin", "insulin", "atropine", "digoxin", "furosemide",
          "lisinopril", "amiodarone", "morphine", "naloxone", "vancomycin", "rifampicin", "lithium", "propofol")
_TOPICS = ("mechanism", "indication", "contraindication", "adverse effect", "metabolism", "interaction")
_WORDS = ("the", "drug", "inhibits", "receptor", "enzyme", "renal", "hepatic", "clearance", "reduces", "increases",
          "plasma", "concentration", "binding", "protein", "synthesis", "platelet", "aggregation", "patients",
          "with", "chronic", "acute", "failure", "should", "avoid", "because", "toxicity", "risk", "of",
          "bleeding", "and", "cardiac", "arrhythmia", "is", "caused", "by", "accumulation", "in", "tissue",
          "which", "leads", "to", "decreased", "output", "a", "dose", "adjustment", "required", "elderly")


def _sentence(rnd: random.Random, n_words: int) -> str:
    words = [rnd.choice(_WORDS) for _ in range(max(1, n_words))]
    return (" ".join(words)).capitalize() + "."


def medfe_style_records(n: int, target_words: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` raw records in the MedFE schema (what ``load_medfe`` reads).

    Every record has a unique prompt, a rephrase, a ``target_new`` of ``target_words`` words,
    and ``topic`` / ``tokenSem`` locality probes whose answers are as long as the target.
    """
    if n < 1 or target_words < 1:
        raise ValueError(f"need n >= 1 and target_words >= 1, got n={n}, target_words={target_words}")
    rnd = random.Random(seed)
    records = []
    for i in range(n):
        drug, other = rnd.sample(_DRUGS, 2)
        topic = _TOPICS[i % len(_TOPICS)]
        records.append({
            "subject": drug,
            "subject_type": "drug",
            "topic_type": topic,
            "prompt": f"Explain the {topic} of {drug} (case {i}).",
            "target_new": _sentence(rnd, target_words),
            "rephrase_prompt": f"What is known about the {topic} of {drug} in case {i}?",
            "locality_topic_prompt": f"Explain the {topic} of {other} (case {i}).",
            "locality_topic_ground_truth": _sentence(rnd, target_words),
            "locality_tokenSem_prompt": f"Describe how {drug[:4]}-based compounds are named (case {i}).",
            "locality_tokenSem_ground_truth": _sentence(rnd, target_words),
        })
    return records


def long_edit_records(n: int, target_words: int = 60, seed: int = 1) -> list:
    """``n`` synthetic long edits as :class:`~medrek.data.EditRecord` s with MedVersa's single
    ``locality`` probe (the MedFE ``topic`` probe), so they mix with MedVersa training records:
    the long-edit data of notebook 02's ``long_edits`` (MedFE itself is never read)."""
    from .loaders import records_from_json

    records = records_from_json(medfe_style_records(n, target_words, seed), "medfe",
                                f"<synthetic long edits, seed {seed}>")
    return [dataclasses.replace(r, record_id=f"synthetic-{seed}-{r.record_id}", locality={"locality": r.locality["topic"]})
            for r in records]


def write_medfe_fixture(path: str | os.PathLike[str], n: int = 8, target_words: int = 60, seed: int = 0) -> Path:
    """Write :func:`medfe_style_records` as a JSON list (atomically) and return the path."""
    return write_text(Path(path), json.dumps(medfe_style_records(n, target_words, seed), indent=2))
