"""Evaluate an editor on a set of edit records (all edited at once, then restored)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..data.records import EditRecord
from .metrics import agreement, avg_score

__all__ = ["evaluate_batch_edit", "unedited_locality_predictions"]


@torch.no_grad()
def unedited_locality_predictions(editor, records: Sequence[EditRecord],
                                  batch_size: int = 32) -> dict[str, list[torch.Tensor]]:
    """Per probe name, the unedited LM's argmax tokens on each record's locality answer."""
    return {
        name: editor.score([r.locality[name].prompt for r in records], [r.locality[name].answer for r in records],
                           batch_size=batch_size, use_memory=False).predictions
        for name in records[0].locality
    }


@torch.no_grad()
def evaluate_batch_edit(editor, records: Sequence[EditRecord], batch_size: int = 32, restore: bool = True,
                        reference: dict[str, list[torch.Tensor]] | None = None) -> dict[str, float]:
    """Edit all ``records`` at once, then measure efficacy, generality, locality and retrieval.

    Returns fractions: ``efficacy``, ``generality``, ``locality`` (mean over the named probes,
    plus ``locality/<name>`` each), ``avg``, ``retrieval_prompt`` / ``retrieval_rephrase`` (top-1
    retrieval returns the record's own edit) and ``false_retrieval_locality`` (an edit fires
    on a locality prompt). The memory is cleared afterwards when ``restore``. ``reference``
    (from :func:`unedited_locality_predictions`) saves recomputing the unedited predictions.
    """
    records = list(records)
    ids = [f"eval-{i}" for i in range(len(records))]
    saved_memory = editor.memory
    editor.memory = editor.new_memory()
    try:
        editor.edit([{"id": i, "prompt": r.prompt, "target_new": r.target_new} for i, r in zip(ids, records)],
                    batch_size=128)
        targets = [r.target_new for r in records]
        eff = editor.score([r.prompt for r in records], targets, batch_size=batch_size)
        gen = editor.score([r.rephrase for r in records], targets, batch_size=batch_size)
        out = {
            "efficacy": float(eff.accuracy.mean()),
            "generality": float(gen.accuracy.mean()),
            "retrieval_prompt": sum(a == b for a, b in zip(eff.retrieved_ids, ids)) / len(ids),
            "retrieval_rephrase": sum(a == b for a, b in zip(gen.retrieved_ids, ids)) / len(ids),
        }
        loc_values, fired = [], []
        reference = reference or unedited_locality_predictions(editor, records, batch_size)
        for name in records[0].locality:
            prompts = [r.locality[name].prompt for r in records]
            answers = [r.locality[name].answer for r in records]
            post = editor.score(prompts, answers, batch_size=batch_size)
            value = float(agreement(reference[name], post.predictions).mean())
            out[f"locality/{name}"] = value
            loc_values.append(value)
            fired.append(post.fired.float())
        out["locality"] = sum(loc_values) / len(loc_values)
        out["false_retrieval_locality"] = float(torch.cat(fired).mean())
        out["avg"] = avg_score(out["efficacy"], out["generality"], out["locality"])
        return out
    finally:
        if restore:
            editor.memory = saved_memory
