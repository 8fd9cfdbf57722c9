"""What an edit request is before it is stored: its checks, its id, and the warnings an edit gives.

A request is a :class:`~medrek.data.records.EditRecord` or a mapping with non-empty ``prompt``
and ``target_new`` strings (and an optional ``id``); :meth:`medrek.editor.Editor.edit` stores a
batch of them only once every one has passed.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .data.records import EditRecord, fold_question, unencodable_at
from .models.edited_lm import batches, pad_prompts
from .models.prompt import EditTextCutWarning

if TYPE_CHECKING:
    from .editor import Editor
    from .memory import EditMemory

__all__ = ["EditNotRetrievedWarning", "as_request", "auto_edit_id", "check_new_ids", "encode_requests", "warn_cut_texts",
           "warn_unretrieved"]

# raised in a function that Editor.edit calls, under torch.no_grad's wrapper: its caller is 4 frames up
_CALLER_OF_EDIT = 4


class EditNotRetrievedWarning(UserWarning):
    """An edit was stored, but its own prompt does not fire it (a gate blocked its top-1)."""


def auto_edit_id(prompt: str, target: str) -> str:
    """The id of a request given without one: ``auto-`` and a hash of its text, so it cannot
    collide with another request's (or a user's ``edit-0``)."""
    return "auto-" + hashlib.sha256(f"{prompt}\x1f{target}".encode("utf-8")).hexdigest()[:16]


def as_request(item: EditRecord | Mapping[str, Any], position: int) -> dict[str, Any]:
    """A request as stored: ``prompt`` and ``target_new`` non-empty strings, ``id`` a string if given."""
    if isinstance(item, EditRecord):
        item = {"id": item.record_id, "prompt": item.prompt, "target_new": item.target_new}
    if not isinstance(item, Mapping):
        raise ValueError(f"edit request {position}: expected a mapping with 'prompt' and 'target_new', got {item!r}")
    for name in ("prompt", "target_new"):
        value = item.get(name)
        if not isinstance(value, str) or not fold_question(value):  # zero-width characters or a BOM alone are empty
            raise ValueError(f"edit request {position}: {name!r} must be a non-empty string, got {value!r}")
    if "id" in item and (not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool) or not str(item["id"]).strip()):
        raise ValueError(f"edit request {position}: 'id' must be a non-empty string, got {item['id']!r}")
    for name, value in item.items():  # a lone surrogate could be neither tokenised nor saved
        at = unencodable_at(value) if isinstance(value, str) else None
        if at is not None:
            raise ValueError(f"edit request {position}: {name!r} is not valid text (a lone surrogate at character {at}, "
                             "which cannot be encoded as UTF-8); nothing was stored")
    return {**item, "id": str(item["id"])} if "id" in item else dict(item)


def check_new_ids(ids: Sequence[str], memory: "EditMemory") -> None:
    """Refuse ids repeated within one call or already stored; nothing is stored then."""
    repeated = sorted(i for i, c in Counter(ids).items() if c > 1)
    stored = memory.stored(ids)
    if repeated or stored:
        raise ValueError(f"edit id(s) {'repeated in this call' if repeated else 'already stored'}: "
                         f"{(repeated or stored)[:5]}; nothing was stored")


def encode_requests(editor: "Editor", reqs: Sequence[Mapping[str, Any]], batch_size: int, progress: bool
                    ) -> tuple[torch.Tensor, list[list[int]] | torch.Tensor, list[int]]:
    """An editor's encoding of checked requests, before anything is stored: keys [N, d], what the memory stores as prompts (LM token-id rows, or vectors [N, T, H]
    padded to n_tokens slots) and, per request, how many edit-text tokens did not fit."""
    from tqdm.auto import tqdm

    keys, prompts, token_rows, dropped = [], [], [], []
    for part in tqdm(list(batches(len(reqs), batch_size)), desc="editing", disable=not progress):
        p_texts, t_texts = [r["prompt"] for r in reqs[part]], [r["target_new"] for r in reqs[part]]
        if editor.memory.config.prompt_store == "token_ids":
            rows, cut = editor.edit_token_rows(p_texts, t_texts)
            keys.append(editor.edit_keys(p_texts, t_texts))
            token_rows += rows
            dropped += cut
        else:
            k, p = editor.encode_edits(p_texts, t_texts)
            keys.append(k)
            width = editor.memory.config.n_tokens  # a vector memory holds n_tokens slots per edit
            prompts.append(pad_prompts([p.new_zeros(0, width, p.shape[2]), p]) if p.shape[1] < width else p)
            dropped += editor.edit_tokens_dropped(p_texts, t_texts)
    if not keys:
        return torch.zeros(0), [], []
    stored = token_rows if editor.memory.config.prompt_store == "token_ids" else torch.cat(prompts)
    return torch.cat(keys), stored, dropped


def warn_cut_texts(ids: Sequence[str], dropped: Sequence[int], slots: int | None, n_tokens: int) -> None:
    """Warn that edit texts lost their first tokens (``dropped`` per edit) to the prompt's ``slots``."""
    cut_ids = [i for i, d in zip(ids, dropped) if d]
    warnings.warn(f"{len(cut_ids)} of {len(ids)} edit texts are longer than the {slots} LM-token slots "
                  f"of this editor's prompt (n_tokens {n_tokens} minus its frame) and lost their first "
                  f"{max(dropped)} tokens at most (e.g. {cut_ids[:3]}); Editor.edit_tokens_dropped counts them "
                  "per edit. Load the editor with a larger n_tokens to carry them whole", EditTextCutWarning,
                  stacklevel=_CALLER_OF_EDIT)


def warn_unretrieved(editor: "Editor", ids: Sequence[str], prompts: Sequence[str]) -> None:
    """Warn about the edits whose own prompt does not fire them, with the gate that blocked
    the first few (:meth:`~medrek.editor.Editor.explain`)."""
    fired = editor.lookup(prompts).ids  # one read of the memory: safe while other threads edit
    missed = [(i, p) for i, p, got in zip(ids, prompts, fired) if got != i]
    if not missed:
        return
    shown = []
    for edit_id, prompt in missed[:3]:
        why = editor.explain(prompt)
        shown.append(f"{edit_id!r} ({'; '.join(why.blocked_by) or why.reason})")
    warnings.warn(f"{len(missed)} of {len(ids)} edits do not fire on their own prompt: {', '.join(shown)}. "
                  "Turn on exact match (Editor.load(..., exact_match=True)) to make an edited prompt always "
                  "retrieve its edit", EditNotRetrievedWarning, stacklevel=_CALLER_OF_EDIT)
