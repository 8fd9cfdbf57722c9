"""Evaluate an editor on a set of edit records, all edited at once (the trainer's validation)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..data.records import EditRecord
from .metrics import avg_score
from .protocols import _score_step, unedited_locality_predictions

__all__ = ["evaluate_batch_edit", "unedited_locality_predictions"]


@torch.no_grad()
def evaluate_batch_edit(editor, records: Sequence[EditRecord], batch_size: int = 32, restore: bool = True,
                        reference: dict[str, list[torch.Tensor]] | None = None) -> dict[str, float]:
    """Edit all ``records`` at once into a fresh memory, then measure them.

    Returns fractions: ``efficacy``, ``generality``, ``locality`` (mean over the named probes,
    plus ``locality/<name>`` each), ``avg``, ``retrieval_prompt`` / ``retrieval_rephrase`` (top-1
    retrieval fires the record's own edit) and ``false_retrieval_locality`` (an edit fires
    on a locality prompt). The editor's own memory is put back afterwards when ``restore``.
    ``reference`` (from :func:`unedited_locality_predictions`) saves recomputing it.
    """
    from ..baselines.base import RetrievalMethod

    records = list(records)
    saved_memory = editor.memory
    editor.memory = editor.new_memory()
    try:
        reference = reference or unedited_locality_predictions(editor.model, records, batch_size)
        method = RetrievalMethod(editor)
        method.edit(records)
        rows = _score_step(method, records, list(range(len(records))), reference, batch_size)
        names = list(records[0].locality)

        def mean(key: str) -> float:
            return sum(r[key] for r in rows) / len(rows)

        out = {"efficacy": mean("efficacy"), "generality": mean("generality"),
               "retrieval_prompt": mean("retrieved_prompt"), "retrieval_rephrase": mean("retrieved_rephrase"),
               "locality": mean("locality")}
        out.update({f"locality/{n}": mean(f"locality/{n}") for n in names})
        out["false_retrieval_locality"] = sum(mean(f"fired/{n}") for n in names) / len(names)
        out["avg"] = avg_score(out["efficacy"], out["generality"], out["locality"])
        return out
    finally:
        if restore:
            editor.memory = saved_memory
