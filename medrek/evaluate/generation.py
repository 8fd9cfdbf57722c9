"""Does an edit show when the LM *answers*? Greedy generations with each edit alone in place.

:func:`generation_check` edits each request alone (the single protocol), generates greedily
from its prompt and records whether ``target_new`` appears in the answer (case-insensitive).
For a retrieval editor the single-edit memories are built one request at a time, then every
row's generation runs in shared LM batches with its own prompt tokens (the same answers as
edit / generate / restore per request). The unedited LM (``editor=None``) answers the same
prompts with nothing in place.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from ..data.records import EditRecord
from ..models.edited_lm import pad_prompts

__all__ = ["generation_check", "contains_target"]


def contains_target(answer: str, target: str) -> bool:
    """Whether ``target`` occurs in ``answer``, ignoring case and surrounding whitespace."""
    return target.strip().lower() in answer.lower()


@torch.no_grad()
def generation_check(model, records: Sequence[EditRecord], editor=None, max_new_tokens: int = 32,
                     batch_size: int = 16, method: str | None = None) -> pd.DataFrame:
    """One row per request: ``record_id``, ``method``, ``fired``, ``answer``, ``contains_target``.

    ``model`` is the :class:`~medrek.editor.EditedModel` (the editor's own when ``editor`` is given).
    """
    records = list(records)
    prompts, fired = None, None
    if editor is not None:
        model = editor.model
        saved = editor.memory
        rows = []
        try:
            for r in records:
                editor.memory = editor.new_memory()
                editor.edit([r], check_retrieval=False)
                rows.append(editor.row_prompts([r.prompt]))
        finally:
            editor.memory = saved
        prompts = pad_prompts([rp.prompts.cpu() for rp in rows])  # [N, T, H], each edit left-padded to the longest
        fired = torch.cat([rp.fired.cpu() for rp in rows])  # [N]
    tok = model.tokenizer
    answers: list[str] = []
    for start in range(0, len(records), batch_size):
        part = records[start: start + batch_size]
        batch = model.encode_queries([r.prompt for r in part])
        p = prompts[start: start + len(part)].to(model.device) if prompts is not None else None
        f = fired[start: start + len(part)].to(model.device) if fired is not None else None
        new = model.generate(batch["input_ids"], batch["attention_mask"], p, f,
                             max_new_tokens=max_new_tokens, do_sample=False)
        answers += tok.batch_decode(new, skip_special_tokens=True)
    name = method or (editor.config.method if editor is not None else "unedited")
    return pd.DataFrame({
        "record_id": [r.record_id for r in records],
        "method": name,
        "fired": fired.tolist() if fired is not None else [False] * len(records),
        "target_new": [r.target_new for r in records],
        "answer": answers,
        "contains_target": [contains_target(a, r.target_new) for a, r in zip(answers, records)],
    })
