"""A user's own edits: does an editor fire on a paraphrase and leave a neighbour alone?

MedVersa's rephrases are long rewrites and 97% of its locality prompts are on another topic, so
its numbers say little about the short, plain questions a user writes. The kit's probe
(``medrek/data/user_edits_probe.json``) holds 30 counterfactual edits a user might make, each with
two paraphrases of its question (the edit should fire) and two neighbour questions (the same
organ, drug or disease, another fact: nothing should fire). :func:`probe_retrieval` stores all 30
edits in an editor and says, for each question, which edit fired; :func:`probe_answers` adds the
LM's greedy answers with and without the edits, so a neighbour whose answer changed is counted as
a user sees it. Evaluation only: nothing is trained, calibrated or selected on the probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..io import read_json_list
from .generation import contains_target

__all__ = ["UserEdit", "USER_PROBE_FILE", "load_user_probe", "probe_retrieval", "probe_answers", "probe_summary"]

USER_PROBE_FILE = Path(__file__).resolve().parents[1] / "data" / "user_edits_probe.json"
KINDS = ("prompt", "paraphrase", "neighbour")


@dataclass(frozen=True)
class UserEdit:
    """One edit of the probe with the questions that test it."""

    id: str
    prompt: str
    target_new: str
    paraphrases: tuple[str, ...]
    neighbours: tuple[str, ...]


def load_user_probe(path: str | Path = USER_PROBE_FILE) -> list[UserEdit]:
    """The probe's edits, checked field by field (a bad file names the edit and field)."""
    path = Path(path)
    rows = read_json_list(path, "edits", "the user-edit probe", non_empty=True)
    out, seen = [], set()
    for k, row in enumerate(rows):
        where = f"{path}: edit {k}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object")
        for name in ("id", "prompt", "target_new"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise ValueError(f"{where}: field '{name}' must be a non-empty string")
        for name in ("paraphrases", "neighbours"):
            value = row.get(name)
            if not isinstance(value, list) or not value or not all(isinstance(q, str) and q.strip() for q in value):
                raise ValueError(f"{where} ({row['id']}): field '{name}' must be a non-empty list of questions")
        if row["id"] in seen:
            raise ValueError(f"{where}: id {row['id']!r} appears twice")
        seen.add(row["id"])
        out.append(UserEdit(row["id"], row["prompt"], row["target_new"], tuple(row["paraphrases"]),
                            tuple(row["neighbours"])))
    return out


def _questions(edits: Sequence[UserEdit]) -> pd.DataFrame:
    rows = [(e.id, kind, q, e.target_new) for e in edits
            for kind, qs in (("prompt", (e.prompt,)), ("paraphrase", e.paraphrases), ("neighbour", e.neighbours))
            for q in qs]
    return pd.DataFrame(rows, columns=["edit", "kind", "question", "target_new"])


def _run(editor, edits: Sequence[UserEdit], max_new_tokens: int | None) -> pd.DataFrame:
    """Store ``edits`` in ``editor`` (empty before, emptied after), say what fires for each
    question and, unless ``max_new_tokens`` is None, generate its answers before and with them."""
    if len(editor.memory):
        raise ValueError("the user-edit probe needs an editor with an empty memory")
    table = _questions(edits)
    questions = list(table["question"])
    before = editor.generate(questions, max_new_tokens=max_new_tokens, use_memory=False) if max_new_tokens is not None else None
    try:
        editor.edit([{"id": e.id, "prompt": e.prompt, "target_new": e.target_new} for e in edits],
                    check_retrieval=False)
        why = [editor.explain(q) for q in questions]
        after = editor.generate(questions, max_new_tokens=max_new_tokens) if max_new_tokens is not None else None
    finally:
        editor.clear()
    table = table.assign(fired=[w.edit_id for w in why], own=[w.edit_id == e for w, e in zip(why, table["edit"])],
                         reason=[w.reason for w in why])
    if before is None:
        return table
    return table.assign(before=before, edited=after,
                        target_in_answer=[contains_target(a, t) for a, t in zip(after, table["target_new"])],
                        changed=[a != b for a, b in zip(after, before)])


def probe_retrieval(editor, edits: Sequence[UserEdit]) -> pd.DataFrame:
    """One row per question of ``edits`` with all of them stored in ``editor`` (whose memory must
    be empty; it is left empty): ``fired`` (the edit that fired, or None), ``own`` (it is the
    question's own edit; for a neighbour: that edit, the one it should not fire) and ``reason``."""
    return _run(editor, edits, None)


def probe_answers(editor, edits: Sequence[UserEdit], max_new_tokens: int = 24) -> pd.DataFrame:
    """:func:`probe_retrieval` plus the greedy answers before and with the edits (the edits are
    stored once for both): ``target_in_answer`` (the edit's new answer is in the edited answer)
    and ``changed`` (the edited answer differs from the unedited one)."""
    return _run(editor, edits, max_new_tokens)


def probe_summary(table: pd.DataFrame) -> dict[str, float]:
    """Shares of the probe's questions: the own edit fires (prompt, paraphrase), any edit fires
    (neighbour), and, where the answers were generated, the new answer shows (prompt,
    paraphrase) and the answer changed (neighbour)."""
    out: dict[str, float] = {}
    for kind in KINDS:
        part = table[table["kind"] == kind]
        if kind == "neighbour":
            out["neighbour_fires"] = float(part["fired"].notna().mean())
            if "changed" in part:
                out["neighbour_changed"] = float(part["changed"].mean())
        else:
            out[f"{kind}_fires_own"] = float(part["own"].mean())
            if "target_in_answer" in part:
                out[f"{kind}_shows_target"] = float(part["target_in_answer"].mean())
    out["questions"] = len(table)
    return out
