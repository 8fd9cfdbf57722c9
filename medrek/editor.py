"""The editor users call: :class:`Editor` and its :class:`EditorConfig`.

``edit`` stores requests in an :class:`~medrek.memory.EditMemory` (encoder forwards only, no
gradient); ``score``, ``generate`` and ``explain`` retrieve for each input and run the frozen LM
with the retrieved prompt tokens (:class:`~medrek.models.edited_lm.EditedModel`, which also holds
tokenisation and teacher-forced scoring; its names are re-exported here). How an editor is
written to and read from disk lives in :mod:`medrek.editor_checkpoint`, its config in
:mod:`medrek.editor_config`; both are re-exported here too.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .data.records import EditRecord
from .editor_checkpoint import (FORMAT, adopt_memory, check_saved_together, check_weights, checkpoint_fingerprint,
                                finish_interrupted_save, load_editor, load_editor_weights, read_editor_config,
                                save_editor, weights_fingerprint)
from .editor_config import RETRIEVAL_DEFAULTS, EditorConfig, build_modules
from .edit_requests import (EditNotRetrievedWarning, as_request, auto_edit_id, check_new_ids, encode_requests,
                            warn_cut_texts, warn_unretrieved)
from .memory import EditMemory, Explanation, Lookup, MemoryConfig, Retrieval
from .methods import edit_text, get_preset
from .models.edited_lm import (CHAT_TEMPLATE_SETTINGS, EditedModel, PairBatch, RowPrompts, ScoreResult, batches,
                               check_chat_template, check_max_length, encode_pairs, pad_prompts,
                               resolve_chat_template, score_pairs)
from .models.encoder import KnowledgeEncoder
from .models.prompt import EditTextCutWarning, PromptEncoder
from .models.verifier import QuestionVerifier

__all__ = ["EditorConfig", "EditedModel", "Editor", "EditNotRetrievedWarning", "EditTextCutWarning", "PairBatch", "RowPrompts", "ScoreResult",
           "auto_edit_id", "checkpoint_fingerprint", "read_editor_config", "weights_fingerprint", "encode_pairs",
           "pad_prompts", "score_pairs", "CHAT_TEMPLATE_SETTINGS", "check_chat_template", "check_max_length",
           "resolve_chat_template", "FORMAT", "RETRIEVAL_DEFAULTS", "check_saved_together", "check_weights",
           "finish_interrupted_save"]

class Editor(nn.Module):
    """Retrieval-based editor: ``edit``, ``remove``, ``score``, ``generate``, ``explain``."""

    def __init__(self, config: EditorConfig, model: EditedModel, encoder: KnowledgeEncoder,
                 prompt_encoder: PromptEncoder, verifier: QuestionVerifier | None = None) -> None:
        super().__init__()
        self.config = config
        self.preset = get_preset(config.method)
        self.model = model
        self.encoder = encoder
        self.prompt_encoder = prompt_encoder
        if config.verify_k > 0 and verifier is None:
            raise ValueError("EditorConfig.verify_k > 0 needs a QuestionVerifier")
        self.verifier = verifier
        self.memory = self.new_memory()

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def build(cls, config: EditorConfig | None = None, *, seed: int = 0, device: str = "cpu",
              lm: tuple[nn.Module, Any] | None = None, **overrides: Any) -> "Editor":
        """Load the LM and encoder named in ``config`` and initialise the trainable parts."""
        config = EditorConfig(**{**asdict(config or EditorConfig()), **overrides})
        return cls(config, *build_modules(config, seed=seed, device=device, lm=lm))

    def new_memory(self) -> EditMemory:
        """An empty memory keyed to the current prototype."""
        c = self.config
        cfg = MemoryConfig(c.key_dim, c.n_tokens, self.model.hidden_size, c.index, c.min_similarity, c.min_margin,
                           score=c.score, exact_match=c.exact_match, prototype_gate=c.prototype_gate,
                           verify_k=c.verify_k, min_verified=c.min_verified,
                           prompt_store="token_ids" if self.stores_token_ids else "vectors")
        with torch.no_grad():
            return EditMemory(cfg, self.encoder.prototype_key(), self._verify(), self.build_prompts)

    @property
    def stores_token_ids(self) -> bool:
        """Whether the prompt is a function of the edit's LM tokens alone, so that the memory
        stores those ids (a few hundred bytes) and builds prompts when an edit fires."""
        return self.prompt_encoder.needs_lm_tokens

    @property
    def text_slots(self) -> int | None:
        """How many LM tokens of an edit text the prompt carries (None: it reads a vector)."""
        return self.prompt_encoder.config.text_slots if self.prompt_encoder.needs_lm_tokens else None

    def _verify(self):
        return self.verifier.probabilities if self.verifier is not None else None

    # ---- edits ------------------------------------------------------------------------------
    def encode_edits(self, prompts: Sequence[str], targets: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys [N, d] and prompt tokens [N, T, H] of edits (differentiable; the trainer uses it)."""
        texts = [edit_text(p, t) for p, t in zip(prompts, targets)]
        tokens = None
        if self.prompt_encoder.needs_lm_tokens:  # the tokens edit() stores: one rule for what is carried
            tokens = self.model.embed_ids(self.edit_token_rows(prompts, targets)[0])
            values = self.encoder.knowledge(texts)
        elif self.prompt_encoder.needs_tokens:
            tokens = self.encoder.encode_tokens(texts)
            values = self.encoder.knowledge_head(self.encoder.pool(tokens))
        else:
            values = self.encoder.knowledge(texts)
        return self.edit_keys(prompts, targets, values), self.prompt_encoder(values, tokens)

    def edit_token_rows(self, prompts: Sequence[str], targets: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """The LM token ids of each edit text the prompt carries (its last ``text_slots``) and
        how many of its first tokens did not fit (0 for presets that read a vector)."""
        if self.text_slots is None:
            return [[] for _ in prompts], [0] * len(prompts)
        rows = self.model.token_ids([edit_text(p, t) for p, t in zip(prompts, targets)])
        slots = self.text_slots
        return [r[-slots:] for r in rows], [max(0, len(r) - slots) for r in rows]

    def edit_tokens_dropped(self, prompts: Sequence[str], targets: Sequence[str]) -> list[int]:
        """Per edit, how many LM tokens of its text the prompt cannot carry (raise n_tokens to carry them)."""
        return self.edit_token_rows(prompts, targets)[1]

    @torch.no_grad()
    def build_prompts(self, rows: Sequence[Sequence[int] | torch.Tensor]) -> torch.Tensor:
        """Prompt tokens [B, T, H] of edits given by their LM token ids (``token_ids`` memories)."""
        return self.prompt_encoder(None, self.model.embed_ids(rows))

    def edit_keys(self, prompts: Sequence[str], targets: Sequence[str],
                  values: torch.Tensor | None = None) -> torch.Tensor:
        """Keys [N, d]: q(prompt) with shared query-key space, else k(prompt + target) (= the values)."""
        if self.preset.shared_query_key:
            return self.query_vectors(prompts)
        if values is None:
            values = self.encoder.knowledge([edit_text(p, t) for p, t in zip(prompts, targets)])
        return values

    @torch.no_grad()
    def edit(self, requests: EditRecord | Mapping[str, Any] | Sequence[EditRecord | Mapping[str, Any]],
             batch_size: int = 64, progress: bool = False, check_retrieval: bool = True) -> list[str]:
        """Store one request or a batch; returns the edit ids. Encoder forwards only.

        With ``check_retrieval`` (and exact match off), each edited prompt is looked up once
        more; an edit that its own prompt does not fire raises an :class:`EditNotRetrievedWarning`
        naming the gate that blocked it (evaluations, which measure this, turn the check off)."""
        if isinstance(requests, (EditRecord, Mapping)):
            requests = [requests]
        reqs = [as_request(r, k) for k, r in enumerate(requests)]
        ids = [r["id"] if "id" in r else auto_edit_id(r["prompt"], r["target_new"]) for r in reqs]
        check_new_ids(ids, self.memory)
        keys, prompts, dropped = encode_requests(self, reqs, batch_size, progress)  # all encoded before any is stored
        if any(dropped):
            warn_cut_texts(ids, dropped, self.text_slots, self.config.n_tokens)
        if reqs:
            self.memory.add(ids, keys, prompts, reqs)
            if check_retrieval and not self.memory.config.exact_match:
                warn_unretrieved(self, ids, [r["prompt"] for r in reqs])
        return ids

    def remove(self, ids: str | Sequence[str]) -> None:
        """Remove stored edits by id (one id or a list of ids)."""
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
            raise TypeError(f"remove takes an edit id (a string) or a list of them, got {ids!r}")
        self.memory.remove(list(ids))

    def clear(self) -> None:
        self.memory.clear()

    # ---- retrieval ----------------------------------------------------------------------------
    def question_part(self, text: str) -> str:
        """What the query head reads of a question: the text without ``query_prefix`` (an
        instruction every question of a dataset starts with, compared case-insensitively)."""
        prefix = self.config.query_prefix.strip()
        body = text.strip()
        if prefix and body.casefold().startswith(prefix.casefold()):
            body = body[len(prefix):].strip()
        return body or text

    def query_vectors(self, texts: Sequence[str]) -> torch.Tensor:
        """q(question) [B, d] of each text's :meth:`question_part` (queries, and keys with the
        shared query-key space)."""
        return self.encoder.query([self.question_part(t) for t in texts])

    @torch.no_grad()
    def retrieve(self, texts: Sequence[str]) -> Retrieval:
        texts = list(texts)
        return self.memory.retrieve(self.query_vectors(texts), texts)

    @torch.no_grad()
    def explain(self, text: str) -> Explanation:
        """What is retrieved for ``text``, its score, the prototype score, the runner-up and, in
        words (``explanation.reason``), which condition decided."""
        return self.memory.explain(self.query_vectors([text])[0], text)

    @torch.no_grad()
    def lookup(self, texts: Sequence[str]) -> Lookup | None:
        """Retrieval for ``texts`` with the prompt tokens, ids and requests it found, read from
        one state of the memory (safe while other threads edit); None when nothing is stored."""
        if len(self.memory) == 0:
            return None
        texts = list(texts)
        return self.memory.lookup(self.query_vectors(texts), texts)

    # ---- scoring and generation --------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompts: Sequence[str], targets: Sequence[str], queries: Sequence[str] | None = None,
              batch_size: int = 32, use_memory: bool = True, max_length: int | None = None) -> ScoreResult:
        """Teacher-forced accuracy and NLL of ``targets`` after ``prompts``.

        Retrieval uses ``queries`` (default: the prompts). ``use_memory=False`` scores the
        unedited LM through the same code path. ``max_length``: see :func:`score_pairs`.
        """
        queries = list(queries) if queries is not None else list(prompts)

        def retrieve(idx: list[int]) -> RowPrompts:
            return self.row_prompts([queries[i] for i in idx]) if use_memory else RowPrompts()

        return score_pairs(self.model, prompts, targets, retrieve, batch_size, max_length)

    @torch.no_grad()
    def row_prompts(self, texts: Sequence[str]) -> RowPrompts:
        """Retrieval for ``texts`` as the LM consumes it: prompt tokens [B, T, H] (zeros where
        nothing fired), the fired mask [B], the retrieved edit ids and the top-1 minus prototype
        score margins [B]. An empty memory gives an empty :class:`RowPrompts` (the plain LM)."""
        found = self.lookup(texts)
        if found is None:
            return RowPrompts()
        r, device = found.retrieval, self.model.device
        return RowPrompts(found.prompts.to(device), found.fired.to(device), found.ids, r.scores - r.prototype_scores)

    @torch.no_grad()
    def generate(self, texts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 16,
                 use_memory: bool = True, **generate_kwargs: Any) -> list[str]:
        """Continue each text (greedy by default; pass ``do_sample=True, top_k=5`` to sample)."""
        tok = self.model.tokenizer
        out: list[str] = []
        generate_kwargs.setdefault("do_sample", False)
        for part in batches(len(texts), batch_size):
            # one generate call per batch, rows that fired nothing included: decoding is paced by
            # its steps, so splitting a batch into fired and unfired calls costs more (measured
            # by bench/inference_overhead.py) than the masked prompt slots it would save
            batch = self.model.encode_queries(list(texts[part]))
            rp = self.row_prompts(texts[part]) if use_memory else RowPrompts()
            lengths = self.model.row_lengths(batch["attention_mask"], rp.prompts, rp.fired)
            self.model.check_context([n + max_new_tokens for n in lengths], "generated text",
                                     list(range(part.start, part.stop)))
            new = self.model.generate(batch["input_ids"], batch["attention_mask"], rp.prompts, rp.fired,
                                      max_new_tokens=max_new_tokens, **generate_kwargs)
            out += tok.batch_decode(new, skip_special_tokens=True)
        return out

    # ---- persistence ----------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"encoder.{k}": v for k, v in self.encoder.trainable_state_dict().items()}
        state.update({f"prompt_encoder.{k}": v for k, v in self.prompt_encoder.state_dict().items()})
        if self.verifier is not None:  # float16 or int8 rows (train.retriever rounds it so before use)
            state.update({f"verifier.{k}": v for k, v in self.verifier.stored_state_dict().items()})
        return state

    def fingerprint(self) -> str:
        """sha256 of this editor's config and trained weights: what made a memory or a result."""
        return weights_fingerprint(self.config, self.trainable_state_dict())

    def save(self, folder: str | os.PathLike[str], with_memory: bool = False) -> Path:
        """Write ``editor.safetensors``, ``editor.json`` and, if asked, the memory as one
        crash-safe step (:func:`medrek.editor_checkpoint.save_editor`)."""
        return save_editor(self, folder, with_memory)

    def load_weights(self, tensors: Mapping[str, torch.Tensor], source: str) -> None:
        """Load trained weights, refusing missing, unexpected or mis-shaped tensors by name."""
        load_editor_weights(self, tensors, source)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, device: str = "cpu",
             lm: tuple[nn.Module, Any] | None = None, with_memory: bool = False, **overrides: Any) -> "Editor":
        """Rebuild an editor from :meth:`save`; the LM may be passed in to avoid reloading it
        (:func:`medrek.editor_checkpoint.load_editor` says what is refused)."""
        return load_editor(cls, folder, device=device, lm=lm, with_memory=with_memory, **overrides)

    def adopt_memory(self, memory: EditMemory, source: str | os.PathLike[str]) -> EditMemory:
        """``memory`` if this editor made it, else an error naming what differs."""
        return adopt_memory(self, memory, source)
