"""One interface for every editing method the kit evaluates.

An :class:`EditMethod` takes edits (``edit``), answers teacher-forced and generation queries
with them in place (``score``, ``generate``) and forgets them (``restore``). Retrieval
editors (MedREK, RECIPE, ablations) wrap an :class:`~medrek.editor.Editor`; parameter
editors (FT-L, MEMIT) change LM weights and put back the saved originals bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, is_dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..data.records import EditRecord
from ..editor import EditedModel, Editor, RowPrompts, ScoreResult, pad_prompts, score_pairs
from ..memory import EditMemory

__all__ = ["EditMethod", "RetrievalMethod", "UneditedMethod", "ParameterEditingMethod", "ReplayedEdits", "edits_json", "generate_plain",
           "score_with_hits"]


def score_with_hits(model: EditedModel, hits: list[torch.Tensor], prompts: Sequence[str], targets: Sequence[str],
                    batch_size: int = 32, max_length: int | None = None, before_batch=None) -> ScoreResult:
    """:func:`score_pairs` on the plain LM for a method whose hook appends, per forward, which
    rows [B] an edit acted on to ``hits``; the result's ``fired`` says it per row.
    ``before_batch(rows)`` (the batch's row indices) runs before its forward."""
    order: list[list[int]] = []

    def retrieve(idx: list[int]) -> RowPrompts:
        order.append(list(idx))
        if before_batch is not None:
            before_batch(idx)
        return RowPrompts()

    hits.clear()
    result = score_pairs(model, prompts, targets, retrieve, batch_size, max_length)
    fired = torch.zeros(len(prompts), dtype=torch.bool)
    if len(hits) != len(order):
        raise RuntimeError(f"{len(order)} batches scored but {len(hits)} forwards seen by the edit hook")
    for idx, hit in zip(order, hits):
        fired[idx] = hit.cpu()
    result.fired = fired
    return result


@torch.no_grad()
def generate_plain(model: EditedModel, texts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
                   **kwargs: Any) -> list[str]:
    """Continue ``texts`` with the (possibly weight-edited) LM, no prompt tokens."""
    tok, out = model.tokenizer, []
    kwargs.setdefault("do_sample", False)
    for start in range(0, len(texts), batch_size):
        batch = model.encode_queries(list(texts[start: start + batch_size]))
        new = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens, **kwargs)
        out += tok.batch_decode(new, skip_special_tokens=True)
    return out


class EditMethod(ABC):
    """Edit, evaluate, restore. ``stateless`` methods ignore edits (the unedited LM)."""

    name: str = "method"
    stateless: bool = False
    edits_in_order: bool = False  # True: editing A then B equals editing [A, B] (memory growth then adds to what is held)
    retrieval: bool = False  # whether scores carry retrieval diagnostics (retrieved ids, margins)
    fires: bool | None = None  # whether scores say which rows an edit acted on (None: as ``retrieval``)

    def __init__(self, model: EditedModel) -> None:
        self.model = model

    @abstractmethod
    def edit(self, records: Sequence[EditRecord]) -> None:
        """Apply edits on top of the ones already applied."""

    @abstractmethod
    def restore(self) -> None:
        """Forget every edit: the LM answers exactly as before the first ``edit``."""

    def identity(self) -> dict[str, Any]:
        """What this method is made of beyond its name, for the signature of saved results:
        a trained editor's fingerprint, a baseline's settings. Rows made by another identity
        are never mixed with this one's."""
        config = getattr(self, "config", None)
        return {"config": asdict(config)} if is_dataclass(config) else {}

    def edit_tokens_dropped(self, records: Sequence[EditRecord]) -> list[int]:
        """Per request, how many tokens of its edit text the method cannot carry (0: all of it)."""
        return [0] * len(records)

    def prepare(self, blocks: Sequence[Sequence[EditRecord]]) -> None:
        """Optional: precompute the upcoming independent blocks (each edited alone from the
        current state) together; ``edit`` of a prepared block is then cheap."""

    def score(self, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32,
              max_length: int | None = None) -> ScoreResult:
        """Teacher-forced scores with the current edits in place (``max_length``: see ``score_pairs``)."""
        return score_pairs(self.model, prompts, targets, None, batch_size, max_length)

    def generate(self, texts: Sequence[str], max_new_tokens: int = 32, **kwargs: Any) -> list[str]:
        return generate_plain(self.model, texts, max_new_tokens, **kwargs)


class UneditedMethod(EditMethod):
    """The base LM: edits are ignored (the reference row of every table)."""

    name = "unedited"
    stateless = True

    def edit(self, records: Sequence[EditRecord]) -> None:
        pass

    def restore(self) -> None:
        pass


class RetrievalMethod(EditMethod):
    """A trained :class:`Editor` (medrek, recipe, the ablations, token_attention)."""

    retrieval = True
    block_scoring = True  # independent blocks can share LM batches (see ``score_blocks``)

    def __init__(self, editor: Editor, name: str | None = None) -> None:
        super().__init__(editor.model)
        self.editor = editor
        self.name = name or editor.config.method

    def identity(self) -> dict[str, Any]:
        return {"editor": self.editor.fingerprint()}

    def edit(self, records: Sequence[EditRecord]) -> None:
        self.editor.edit(list(records), batch_size=128, check_retrieval=False)

    def restore(self) -> None:
        self.editor.clear()

    def edit_tokens_dropped(self, records: Sequence[EditRecord]) -> list[int]:
        return self.editor.edit_tokens_dropped([r.prompt for r in records], [r.target_new for r in records])

    def score(self, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32,
              max_length: int | None = None) -> ScoreResult:
        return self.editor.score(prompts, targets, batch_size=batch_size, max_length=max_length)

    def generate(self, texts: Sequence[str], max_new_tokens: int = 32, **kwargs: Any) -> list[str]:
        return self.editor.generate(texts, max_new_tokens=max_new_tokens, **kwargs)

    @torch.no_grad()
    def score_blocks(self, jobs: Sequence[tuple[Sequence[EditRecord], Sequence[str], Sequence[str]]],
                     batch_size: int = 32, max_length: int | None = None) -> list[ScoreResult]:
        """Score each job's (prompts, targets) as if only that job's edits were stored, with the
        LM forwards of all jobs batched together: retrieval runs per job against a memory of
        that job's edits, then every row carries its own prompt tokens through one
        :func:`score_pairs`. The same numbers as edit / score / restore per job."""
        saved = self.editor.memory
        found, prompts, targets = [], [], []
        try:
            for block, p, t in jobs:
                self.editor.memory = EditMemory(saved.config, saved.prototype_key, saved.verify, saved.build_prompts)  # no edits
                self.editor.edit(list(block), batch_size=128, check_retrieval=False)
                rp = self.editor.row_prompts(list(p))
                found.append(RowPrompts(rp.prompts.cpu(), rp.fired.cpu(), rp.ids, rp.margins))
                prompts += list(p)
                targets += list(t)
        finally:
            self.editor.memory = saved
        tokens = pad_prompts([f.prompts for f in found])
        fired = torch.cat([f.fired for f in found])
        ids = [i for f in found for i in f.ids]
        margins = torch.cat([f.margins for f in found])
        device = self.model.device

        def retrieve(idx: list[int]) -> RowPrompts:
            return RowPrompts(tokens[idx].to(device), fired[idx].to(device), [ids[i] for i in idx], margins[idx])

        result = score_pairs(self.model, prompts, targets, retrieve, batch_size, max_length)
        out, start = [], 0
        for _, p, _ in jobs:
            end = start + len(p)
            out.append(ScoreResult(result.accuracy[start:end], result.nll[start:end], result.fired[start:end],
                                   result.retrieved_ids[start:end], result.predictions[start:end],
                                   result.margins[start:end], result.truncated[start:end]))
            start = end
        return out


def edits_json(records: Sequence[EditRecord]) -> list[dict[str, str]]:
    """The JSON form of edits (id, prompt, target_new) a method's saved state lists in order;
    :meth:`ReplayedEdits.history_from_json` reads it back."""
    return [{"id": r.record_id, "prompt": r.prompt, "target_new": r.target_new} for r in records]


class ReplayedEdits:
    """For methods whose edits are applied one at a time and trained deterministically (GRACE,
    WISE): the edits so far, in order, so that ``remove(id)`` can apply the others again (the
    result equals editing without the removed ones), and their JSON form for a save. A subclass
    provides ``_edit_one(record)`` and ``_attach(on)`` (its hook on the LM, or off)."""

    history: list[EditRecord]
    edits_in_order = True  # editing A then B equals editing [A, B]: memory growth adds to what is held

    def edit(self, records: Sequence[EditRecord]) -> None:
        """Apply ``records`` one at a time, in order (the subclass's ``_edit_one``), with its hook on."""
        if not records:
            return
        self._attach(True)
        for record in records:
            self._edit_one(record)
            self.history.append(record)

    def remove(self, ids: str | Sequence[str]) -> None:
        """Forget edits by id: the other edits are applied again, in their order."""
        gone = {ids} if isinstance(ids, str) else set(ids)
        unknown = sorted(gone - {r.record_id for r in self.history})
        if unknown:
            raise KeyError(f"{self.name} holds no edit with id(s) {unknown[:5]}; nothing was removed")
        keep = [r for r in self.history if r.record_id not in gone]
        self.restore()
        self.edit(keep)

    def history_json(self) -> list[dict[str, str]]:
        return edits_json(self.history)

    @staticmethod
    def history_from_json(rows: Sequence[dict[str, str]]) -> list[EditRecord]:
        return [EditRecord(h["id"], h["prompt"], h["target_new"], "", (h["prompt"],), "") for h in rows]


class ParameterEditingMethod(EditMethod):
    """Base for methods that rewrite LM weights: originals are saved on first touch and
    copied back by ``restore`` (bit-exact)."""

    def __init__(self, model: EditedModel) -> None:
        super().__init__(model)
        self._originals: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}

    def _touch(self, name: str, param: nn.Parameter) -> nn.Parameter:
        """Remember ``param``'s current value before it is first changed."""
        if name not in self._originals:
            self._originals[name] = (param, param.detach().clone())
        return param

    @torch.no_grad()
    def restore(self) -> None:
        for param, original in self._originals.values():
            param.copy_(original)
        self._originals.clear()
