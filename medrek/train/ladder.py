"""The capacity ladder: how much of an edit a prompt can carry, from the ceiling down.

Three rungs, each measured with the same numbers (:func:`measure_editor`):

* ``ceiling``: free per-edit prompt tokens, optimised directly for each edit
  (:func:`fit_free_prompts`); no encoder can beat this with T tokens;
* ``seen``: an editor trained on N edits and evaluated on the same N (can the prompt encoder
  fit its training set at all?);
* ``unseen``: an editor trained on the training split and evaluated on validation edits.

A variant that fails ``seen`` cannot pass ``unseen``; ``seen`` is cheap, so it comes first.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from ..data.records import EditRecord
from ..editor import EditedModel, Editor
from ..evaluate.editing import evaluate_batch_edit
from ..evaluate.metrics import prediction_positions, teacher_forced_selected

__all__ = ["measure_editor", "fit_free_prompts"]


@torch.no_grad()
def measure_editor(editor: Editor, records: Sequence[EditRecord]) -> dict[str, float]:
    """Batch-edit ``records`` into a fresh memory and measure them: the validation metrics of
    :func:`evaluate_batch_edit` plus ``edit_nll`` (mean target-token NLL after the prompt, plain,
    no hinge) and ``prompt_norm`` (mean L2 norm of the non-padding prompt tokens)."""
    out = evaluate_batch_edit(editor, records)
    saved = editor.memory
    editor.memory = editor.new_memory()
    try:
        editor.edit(list(records), check_retrieval=False)
        scores = editor.score([r.prompt for r in records], [r.target_new for r in records])
        tokens = editor.memory.stored_prompts(range(len(editor.memory)))  # [N, T, H]
        norms = tokens.norm(dim=-1)
        out["edit_nll"] = float(scores.nll.mean())
        out["prompt_norm"] = float(norms[norms > 0].mean())
    finally:
        editor.memory = saved
    return out


def _nll_and_accuracy(model: EditedModel, batch, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positions = prediction_positions(batch.target_mask)
    fired = torch.ones(len(prompts), dtype=torch.bool, device=prompts.device)
    logits = model(batch.input_ids, batch.attention_mask, prompts, fired, positions=positions)  # [N, V]
    labels = batch.input_ids[:, 1:][batch.target_mask[:, 1:]]
    nll = torch.nn.functional.cross_entropy(logits.float(), labels)
    acc = teacher_forced_selected(logits.detach(), labels, positions.nonzero()[:, 0], len(prompts)).accuracy
    return nll, acc


def fit_free_prompts(model: EditedModel, records: Sequence[EditRecord], n_tokens: int = 3, steps: int = 60,
                     lr: float = 1e-2, seed: int = 0) -> dict[str, float]:
    """The ceiling: one free [T, H] prompt per edit, Adam on the target NLL after the prompt
    alone (the rephrase is held out: it measures generality). Prompts start as random
    vocabulary embeddings. Returns efficacy, generality, edit NLL, prompt norm, seconds."""
    records = list(records)
    generator = torch.Generator().manual_seed(seed)
    table = model.lm.get_input_embeddings().weight.detach()
    start = table[torch.randint(0, table.shape[0], (len(records) * n_tokens,), generator=generator)]
    prompts = torch.nn.Parameter(start.view(len(records), n_tokens, -1).clone())
    optimizer = torch.optim.Adam([prompts], lr=lr)
    rel = model.encode_pairs([r.prompt for r in records], [r.target_new for r in records]).to(model.device)
    gen = model.encode_pairs([r.rephrase for r in records], [r.target_new for r in records]).to(model.device)
    started = time.perf_counter()
    for _ in range(steps):
        nll, _ = _nll_and_accuracy(model, rel, prompts)
        optimizer.zero_grad(set_to_none=True)
        nll.backward()
        optimizer.step()
    with torch.no_grad():
        nll, efficacy = _nll_and_accuracy(model, rel, prompts)
        _, generality = _nll_and_accuracy(model, gen, prompts)
    return {"efficacy": float(efficacy.mean()), "generality": float(generality.mean()), "edit_nll": float(nll),
            "prompt_norm": float(prompts.detach().norm(dim=-1).mean()), "steps": steps,
            "seconds": round(time.perf_counter() - started, 1)}
