"""IKE-style in-context editing with a trained retriever (training-free for the LM).

The retriever of a trained MedREK editor picks the top-1 stored edit (prototype-gated, as
for MedREK); instead of prompt tokens, the edit is prepended as plain text::

    New Fact: {edit prompt} {edit target}
    Prompt: {query}

Rows where nothing is retrieved see the query alone. Comparing it with MedREK separates
retrieval quality (shared) from what the prompt encoder adds, at the cost of a prompt tens of
tokens long instead of T vectors.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.records import EditRecord
from ..editor import Editor, RowPrompts, ScoreResult, score_pairs
from .base import EditMethod, generate_plain

__all__ = ["InContextMethod", "IKE_TEMPLATE"]

IKE_TEMPLATE = "New Fact: {prompt} {target}\nPrompt: {query}"


class InContextMethod(EditMethod):
    """Retrieve with ``editor``'s retriever, then prepend the retrieved edit as text."""

    name = "ike"
    retrieval = True

    def __init__(self, editor: Editor, template: str = IKE_TEMPLATE) -> None:
        super().__init__(editor.model)
        self.editor = editor
        self.template = template

    def identity(self) -> dict[str, Any]:
        return {"retriever": self.editor.fingerprint(), "template": self.template}

    def edit(self, records: Sequence[EditRecord]) -> None:
        self.editor.edit(list(records), batch_size=128, check_retrieval=False)

    def restore(self) -> None:
        self.editor.clear()

    @torch.no_grad()
    def contextualise(self, queries: Sequence[str]) -> tuple[list[str], RowPrompts]:
        """Queries with their retrieved edit prepended, and what retrieval found."""
        found = self.editor.lookup(queries)
        if found is None:
            return list(queries), RowPrompts()
        texts = [query if req is None else self.template.format(prompt=req["prompt"], target=req["target_new"], query=query)
                 for query, req in zip(queries, found.requests)]
        r = found.retrieval
        return texts, RowPrompts(None, r.fired, found.ids, r.scores - r.prototype_scores)

    def score(self, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32,
              max_length: int | None = None) -> ScoreResult:
        texts, found = self.contextualise(prompts)
        result = score_pairs(self.model, texts, targets, None, batch_size, max_length)
        if found.fired is not None:
            result.fired, result.retrieved_ids, result.margins = found.fired, found.ids, found.margins
        return result

    def generate(self, texts: Sequence[str], max_new_tokens: int = 32, **kwargs: Any) -> list[str]:
        return generate_plain(self.model, self.contextualise(texts)[0], max_new_tokens, **kwargs)
