"""Calibrating the retrieval gate after training.

The prototype gate fires the top-1 edit whenever its score beats the prototype's. With many
edits stored, unrelated questions find *some* key above the prototype more often, and an
editor whose prompts really change the answer then breaks locality. :func:`calibrate_gate`
picks a margin ``tau`` (top-1 score minus prototype score) on held-out edits so that at most a
chosen fraction of their locality prompts fires, with ``block_size`` edits stored at a time
(the batch protocol's memory size), and reports what that costs in retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..data.records import EditRecord

__all__ = ["GateCalibration", "calibrate_gate", "gate_margins"]


@dataclass
class GateCalibration:
    """The chosen margin and the fire rates before and after it, on the calibration edits."""

    min_margin: float | None  # None: the plain prototype gate already meets the target
    max_false_fire: float
    n_edits: int
    block_size: int
    false_fire_before: float  # locality prompts that fire any edit
    false_fire_after: float
    prompt_before: float  # prompts that fire their own edit
    prompt_after: float
    rephrase_before: float  # rephrases that fire their own edit
    rephrase_after: float


@torch.no_grad()
def gate_margins(editor, records: Sequence[EditRecord], block_size: int = 100) -> dict[str, torch.Tensor]:
    """Per query kind (``prompt``, ``rephrase``, ``locality``), the top-1 minus prototype margin,
    with ``-inf`` where the top-1 is not the record's own edit (prompt / rephrase only), for
    ``records`` stored ``block_size`` at a time. The editor's memory is put back afterwards."""
    saved = editor.memory
    out: dict[str, list[torch.Tensor]] = {"prompt": [], "rephrase": [], "locality": []}
    try:
        for start in range(0, len(records), block_size):
            block = list(records[start: start + block_size])
            editor.memory = editor.new_memory()
            editor.edit(block, check_retrieval=False)
            ids = [r.record_id for r in block]
            for kind, texts in (("prompt", [r.prompt for r in block]), ("rephrase", [r.rephrase for r in block])):
                r = editor.memory.retrieve(editor.query_vectors(texts))
                own = torch.tensor([editor.memory.ids[int(t)] == i for t, i in zip(r.top_rows, ids)])
                out[kind].append(torch.where(own, r.scores - r.prototype_scores, torch.tensor(-torch.inf)))
            for name in block[0].locality:
                r = editor.memory.retrieve(editor.query_vectors([rec.locality[name].prompt for rec in block]))
                out["locality"].append(r.scores - r.prototype_scores)
    finally:
        editor.memory = saved
    return {k: torch.cat(v) for k, v in out.items()}


def _fires(margins: torch.Tensor, tau: float | None) -> float:
    fired = margins > 0 if tau is None else (margins > 0) & (margins >= tau)
    return float(fired.float().mean())


def calibrate_gate(editor, records: Sequence[EditRecord], max_false_fire: float = 0.05,
                   block_size: int = 100) -> GateCalibration:
    """Set ``editor.config.min_margin`` to the smallest margin at which at most
    ``max_false_fire`` of the records' locality prompts fire (None if the prototype gate alone
    does), and give the editor a fresh memory with that gate. ``records`` must be held out from
    the evaluation; the paper's gate is the prototype alone, so only the kit's presets use this."""
    if not 0 <= max_false_fire < 1:
        raise ValueError(f"max_false_fire must be in [0, 1), got {max_false_fire}")
    if not records:
        raise ValueError("calibrate_gate needs held-out edit records")
    editor.config.min_margin = None
    editor.memory = editor.new_memory()
    m = gate_margins(editor, records, block_size)
    loc = m["locality"]
    allowed = int(max_false_fire * len(loc))
    positive = loc[loc > 0].sort(descending=True).values
    tau = None if len(positive) <= allowed else float(positive[allowed]) + 1e-6
    editor.config.min_margin = tau
    editor.memory = editor.new_memory()
    return GateCalibration(tau, max_false_fire, len(records), block_size, _fires(loc, None), _fires(loc, tau),
                           _fires(m["prompt"], None), _fires(m["prompt"], tau),
                           _fires(m["rephrase"], None), _fires(m["rephrase"], tau))
