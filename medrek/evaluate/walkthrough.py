"""One edit, step by step: what is retrieved, how it scores against the prototype, what the
prompt tokens look like to the LM, and what the LM says before and after."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from ..data.records import EditRecord
from .generation import contains_target

__all__ = ["explain_edit", "edit_demo"]


@torch.no_grad()
def explain_edit(editor, record: EditRecord, max_new_tokens: int = 24, nearest: int = 3) -> dict[str, Any]:
    """Edit ``record`` into an empty memory and report, for its prompt, first rephrase and
    every locality prompt: the retrieved edit, its score, the prototype score and the
    runner-up (``retrieval``); for each prompt token, its norm and the vocabulary tokens whose
    embeddings are nearest in cosine (``prompt_tokens``); and greedy generations before and
    after the edit (``generations``). The editor's memory is put back afterwards."""
    saved = editor.memory
    editor.memory = editor.new_memory()
    try:
        editor.edit([record])
        queries = {"prompt": record.prompt, "rephrase": record.rephrase,
                   **{f"locality/{n}": p.prompt for n, p in record.locality.items()}}
        retrieval = []
        for kind, text in queries.items():
            e = editor.explain(text)
            retrieval.append({"query": kind, "text": text, "fired": e.fired, "edit": e.edit_id, "score": e.score,
                              "prototype_score": e.prototype_score, "margin": e.score - e.prototype_score})
        prompts = editor.memory.stored_prompts([0])[0]  # [T, H]
        table = editor.model.lm.get_input_embeddings().weight  # [V, H]
        cos = torch.nn.functional.normalize(prompts, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
        top = cos.topk(nearest, dim=-1)
        tokens = [{"slot": t, "norm": float(prompts[t].norm()), "mean_token_norm": float(table.norm(dim=-1).mean()),
                   "nearest": ", ".join(f"{editor.model.tokenizer.decode([int(i)])!r} ({float(c):.2f})"
                                        for c, i in zip(top.values[t], top.indices[t]))}
                  for t in range(len(prompts))]
        texts = list(queries.values())
        before = editor.generate(texts, max_new_tokens=max_new_tokens, use_memory=False)
        after = editor.generate(texts, max_new_tokens=max_new_tokens)
        generations = [{"query": k, "before": b, "after": a, "target": record.target_new if k in ("prompt", "rephrase")
                        else record.locality[k.split("/", 1)[1]].answer}
                       for k, b, a in zip(queries, before, after)]
        return {"retrieval": pd.DataFrame(retrieval), "prompt_tokens": pd.DataFrame(tokens),
                "generations": pd.DataFrame(generations)}
    finally:
        editor.memory = saved


@torch.no_grad()
def edit_demo(editor, facts: Sequence[Mapping[str, str]], max_new_tokens: int = 32, ike=None) -> pd.DataFrame:
    """What a user sees: for each fact's question and paraphrase, the greedy answer before any
    edit, with all ``facts`` edited in (and with ``ike``, in-context editing on the same
    retriever, if given), and after removing the last fact. Leaves ``editor``'s memory as it
    found it. Each fact is ``{"id", "prompt", "target_new", "rephrase"}``."""
    if len(editor.memory):
        raise ValueError("edit_demo needs an editor with an empty memory")
    rows = [(f["id"], kind, f[key], f["target_new"]) for f in facts
            for kind, key in (("question", "prompt"), ("paraphrase", "rephrase"))]
    questions = [q for _, _, q, _ in rows]
    before = editor.generate(questions, max_new_tokens=max_new_tokens, use_memory=False)
    try:
        editor.edit([{"id": f["id"], "prompt": f["prompt"], "target_new": f["target_new"]} for f in facts])
        fired = [editor.explain(q).edit_id for q in questions]
        edited = editor.generate(questions, max_new_tokens=max_new_tokens)
        in_context = ike.generate(questions, max_new_tokens=max_new_tokens) if ike is not None else [None] * len(rows)
        editor.remove(facts[-1]["id"])
        removed = editor.generate(questions, max_new_tokens=max_new_tokens)
    finally:
        editor.clear()
    table = pd.DataFrame(rows, columns=["edit", "asked", "text", "target_new"])
    table = table.assign(retrieved=fired, before=before, edited=edited, ike=in_context,
                         **{"after removing " + facts[-1]["id"]: removed})
    table["target in edited answer"] = [contains_target(a, t) for t, a in zip(table["target_new"], edited)]
    return table if ike is not None else table.drop(columns="ike")
