"""The editor users call: :class:`Editor` and its :class:`EditorConfig`.

``edit`` stores requests in an :class:`~medrek.memory.EditMemory` (encoder forwards only, no
gradient); ``score``, ``generate`` and ``explain`` retrieve for each input and run the frozen LM
with the retrieved prompt tokens (:class:`~medrek.models.edited_lm.EditedModel`, which also holds
tokenisation and teacher-forced scoring; its names are re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from .data.records import EditRecord, fold_question, unencodable_at
from .config import check_fields, check_keys
from .io import (CheckpointError, check_replaceable, commit_staged, file_sha256, finish_staged, folder_lock,
                 read_checkpoint_meta, read_tensors, resolve_link, staged_name, writable, write_json)
from .memory import SCORES, EditMemory, Explanation, Lookup, MemoryConfig, Retrieval
from .methods import edit_text, get_preset
from .models.edited_lm import (CHAT_TEMPLATE_SETTINGS, EditedModel, PairBatch, RowPrompts, ScoreResult, batches,
                               check_chat_template, check_max_length, encode_pairs, pad_prompts,
                               resolve_chat_template, score_pairs)
from .models.encoder import KnowledgeEncoder, KnowledgeEncoderConfig
from .models.prompt import EditTextCutWarning, PromptEncoder, PromptEncoderConfig
from .models.verifier import VERIFIER_KINDS, QuestionVerifier, VerifierConfig
from .models.registry import load_causal_lm, load_encoder

__all__ = ["EditorConfig", "EditedModel", "Editor", "EditNotRetrievedWarning", "EditTextCutWarning", "PairBatch", "RowPrompts", "ScoreResult",
           "auto_edit_id", "checkpoint_fingerprint", "read_editor_config", "weights_fingerprint", "encode_pairs",
           "pad_prompts", "score_pairs", "CHAT_TEMPLATE_SETTINGS", "check_chat_template", "check_max_length",
           "resolve_chat_template"]

FORMAT = "medrek.Editor/1"


@dataclass
class EditorConfig:
    """Everything needed to rebuild an editor's modules (saved next to its weights)."""

    method: str = "medrek"
    lm: str = "smollm2-135m"
    encoder: str = "minilm-l6"
    key_dim: int = 4096
    n_tokens: int = 3
    n_heads: int = 8
    n_prototype_tokens: int = 10
    max_length: int = 128
    train_backbone: bool = False
    index: str = "flat"
    min_similarity: float | None = None
    min_margin: float | None = None  # fire only if top-1 beats the prototype by this much (calibrate_gate sets it)
    chat_template: str = "auto"  # auto: questions go through the LM tokenizer's chat template, if any; none: plain text
    n_prefix_tokens: int = 4  # learned frame before the edit text (lm_embedding prompt encoders)
    n_suffix_tokens: int = 2  # learned frame after it
    score: str = "dot"  # retrieval score: dot (q.k / sqrt(d), the paper) | cosine
    exact_match: bool = False  # a question equal to a stored prompt (case, spacing folded) always fires it
    prototype_gate: bool = True  # the top-1 must beat the prototype's score (the paper's gate)
    verify_k: int = 0  # > 0: a QuestionVerifier reads the top verify_k edits (train.retriever trains it)
    min_verified: float = 0.5  # the verifier's probability an edit needs to fire
    verifier_layers: int = 2  # top encoder layers of the verifier that are trained and saved
    verifier_kind: str = "top-layers"  # top-layers | cross-encoder (medrek.models.verifier)
    query_prefix: str = ""  # an instruction every question starts with, left out of what retrieval reads

    def __post_init__(self) -> None:
        check_fields(self, EditorConfig, "EditorConfig")  # types and ranges, by field name
        get_preset(self.method)
        check_chat_template(self.chat_template)
        if self.score not in SCORES:
            raise ValueError(f"EditorConfig.score must be one of {SCORES}, got {self.score!r}")
        if self.min_verified > 1:
            raise ValueError(f"EditorConfig.min_verified is a probability, got {self.min_verified!r}")
        if self.verifier_kind not in VERIFIER_KINDS:
            raise ValueError(f"EditorConfig.verifier_kind must be one of {VERIFIER_KINDS}, got {self.verifier_kind!r}")


RETRIEVAL_DEFAULTS = {name: getattr(EditorConfig, name) for name in
                      ("score", "exact_match", "prototype_gate", "verify_k", "min_verified", "verifier_layers",
                       "verifier_kind", "query_prefix")}


def _as_request(item: EditRecord | Mapping[str, Any], position: int) -> dict[str, Any]:
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


def check_saved_together(meta: Mapping[str, Any], memory: EditMemory, meta_path: Path, memory_path: Path) -> None:
    """Refuse a memory folder that is not the one saved with the editor's weights (editor.json
    names its content checksum; editors saved before that name none and are not checked)."""
    if "memory_sha256" not in meta:
        return
    if meta["memory_sha256"] is None:
        raise CheckpointError(f"{meta_path}: the editor was last saved without its memory, so {memory_path} is left "
                              "from an earlier save (edits made since are not in it); load with with_memory=False, "
                              "or save with with_memory=True")
    if memory.content_sha256 != meta["memory_sha256"]:
        raise CheckpointError(f"{memory_path}: not the memory saved with these weights ({meta_path} names memory "
                              f"{str(meta['memory_sha256'])[:12]}, the folder holds {str(memory.content_sha256)[:12]})")


def weights_fingerprint(config: EditorConfig, tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of an editor's config and trained weights (:meth:`Editor.fingerprint`)."""
    config = asdict(config)
    for name, default in RETRIEVAL_DEFAULTS.items():  # settings added later: absent at their default,
        if config[name] == default:  # so editors, memories and results saved before them keep their fingerprint
            del config[name]
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8"))
    for name, value in sorted(tensors.items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode("utf-8"))
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def checkpoint_fingerprint(folder: str | os.PathLike[str]) -> str:
    """The fingerprint of a saved editor, read from its files without loading any model (the
    identity its results and memories record)."""
    _, config = read_editor_config(Path(folder))
    return weights_fingerprint(config, read_tensors(Path(folder) / "editor.safetensors"))


def read_editor_config(folder: Path) -> tuple[dict[str, Any], EditorConfig]:
    """``editor.json``'s contents and its config, refused by file and field if not ours."""
    meta_path = folder / "editor.json"
    meta = read_checkpoint_meta(meta_path, FORMAT, "editor checkpoint")
    config = {"chat_template": "none", **meta["config"]}  # editors saved before the setting asked plainly
    check_keys(config, [f.name for f in fields(EditorConfig)], f"{meta_path}: config")
    try:
        return meta, EditorConfig(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from None


EDITOR_NAMES = frozenset({"editor.json", "editor.safetensors", "memory"})


def _check_editor_folder(folder: Path, with_memory: bool) -> None:
    """Refuse a save whose target names are taken by something else (a folder named
    ``editor.json``, a file named ``memory``, a memory folder holding a user's files)."""
    for name in EDITOR_NAMES:
        target = folder / name
        if target.exists() and (target.is_dir() != (name == "memory")):
            raise FileExistsError(f"{target}: is a {'folder' if target.is_dir() else 'file'}, where the editor's "
                                  f"{name} would go; nothing was written")
    if with_memory:
        check_replaceable(folder / "memory", {"memory.json", "memory.safetensors"})  # a user's files there stay


def finish_interrupted_save(folder: Path) -> None:
    """Before a load: finish an editor save that a kill interrupted after its commit, or clear the
    parts of one killed before it. A read-only folder is never written: an interrupted save
    there is reported instead."""
    from .io import JOURNAL

    if not writable(folder):
        if (folder / JOURNAL).exists():
            raise CheckpointError(f"{folder}: a save was interrupted after it committed and the folder is read-only, "
                                  "so it cannot be finished; copy the folder somewhere writable and load it there")
        return
    if (folder / JOURNAL).exists() or any(folder.glob(".staged-*")):
        with folder_lock(folder):
            finish_staged(folder)


def check_weights(folder: Path, meta: Mapping[str, Any]) -> Path:
    """``folder/editor.safetensors``, refused if its sha256 is not the one ``editor.json``
    records (editors saved before the checksum record none and are not checked)."""
    weights = folder / "editor.safetensors"
    if meta.get("weights_sha256") and file_sha256(weights) != meta["weights_sha256"]:
        raise CheckpointError(f"{weights}: sha256 differs from the one recorded in {folder / 'editor.json'} (a corrupt "
                              "file, or weights from another save)")
    return weights


class EditNotRetrievedWarning(UserWarning):
    """An edit was stored, but its own prompt does not fire it (a gate blocked its top-1)."""


def auto_edit_id(prompt: str, target: str) -> str:
    """The id of a request given without one: ``auto-`` and a hash of its text, so it cannot
    collide with another request's (or a user's ``edit-0``)."""
    return "auto-" + hashlib.sha256(f"{prompt}\x1f{target}".encode("utf-8")).hexdigest()[:16]


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
        config = config or EditorConfig()
        config = EditorConfig(**{**asdict(config), **overrides})
        lm_model, lm_tok = lm or load_causal_lm(config.lm, seed=seed, device=device)
        backbone, enc_tok = load_encoder(config.encoder, seed=seed, device=device)
        torch.manual_seed(seed)
        enc_cfg = KnowledgeEncoderConfig(config.encoder, config.key_dim, config.n_prototype_tokens,
                                         config.max_length, config.train_backbone)
        encoder = KnowledgeEncoder(backbone, enc_tok, enc_cfg).to(device)
        model = EditedModel(lm_model, lm_tok, resolve_chat_template(lm_tok, config.chat_template))
        prompt_cfg = PromptEncoderConfig(get_preset(config.method).prompt_kind, config.key_dim,
                                         model.hidden_size, config.n_tokens, config.n_heads,
                                         encoder.config.hidden_size, config.n_prefix_tokens, config.n_suffix_tokens)
        prompt_encoder = PromptEncoder.from_config(prompt_cfg).to(device)
        if prompt_encoder.needs_lm_tokens:  # the learned frame starts as IKE's text frame
            prompt_encoder.initialise_frame(model.embed_texts(["New fact:"], prompt_cfg.n_prefix).states[0],
                                            model.embed_texts([".\n"], prompt_cfg.n_suffix).states[0])
        verifier = None
        if config.verify_k > 0:  # a copy of the released sentence encoder, its top layers to be trained
            verifier = QuestionVerifier(backbone, enc_tok, VerifierConfig(config.verifier_layers, config.max_length,
                                                                          config.verify_k, config.verifier_kind)).to(device)
        return cls(config, model, encoder, prompt_encoder, verifier)

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
        from tqdm.auto import tqdm

        if isinstance(requests, (EditRecord, Mapping)):
            requests = [requests]
        reqs = [_as_request(r, k) for k, r in enumerate(requests)]
        ids = [r["id"] if "id" in r else auto_edit_id(r["prompt"], r["target_new"]) for r in reqs]
        repeated = sorted(i for i, c in Counter(ids).items() if c > 1)
        stored = self.memory.stored(ids)
        if repeated or stored:
            raise ValueError(f"edit id(s) {'repeated in this call' if repeated else 'already stored'}: "
                             f"{(repeated or stored)[:5]}; nothing was stored")
        keys, prompts, token_rows, dropped = [], [], [], []  # everything is encoded before anything is stored
        for part in tqdm(list(batches(len(reqs), batch_size)), desc="editing", disable=not progress):
            p_texts, t_texts = [r["prompt"] for r in reqs[part]], [r["target_new"] for r in reqs[part]]
            if self.memory.config.prompt_store == "token_ids":
                rows, cut = self.edit_token_rows(p_texts, t_texts)
                keys.append(self.edit_keys(p_texts, t_texts))
                token_rows += rows
                dropped += cut
            else:
                k, p = self.encode_edits(p_texts, t_texts)
                keys.append(k)
                width = self.memory.config.n_tokens  # a vector memory holds n_tokens slots per edit
                prompts.append(pad_prompts([p.new_zeros(0, width, p.shape[2]), p]) if p.shape[1] < width else p)
                dropped += self.edit_tokens_dropped(p_texts, t_texts)
        if any(dropped):
            cut_ids = [i for i, d in zip(ids, dropped) if d]
            warnings.warn(f"{len(cut_ids)} of {len(ids)} edit texts are longer than the {self.text_slots} LM-token slots "
                          f"of this editor's prompt (n_tokens {self.config.n_tokens} minus its frame) and lost their first "
                          f"{max(dropped)} tokens at most (e.g. {cut_ids[:3]}); Editor.edit_tokens_dropped counts them "
                          "per edit. Load the editor with a larger n_tokens to carry them whole", EditTextCutWarning,
                          stacklevel=3)  # the caller of edit (under torch.no_grad's wrapper)
        if reqs:
            self.memory.add(ids, torch.cat(keys), token_rows if self.memory.config.prompt_store == "token_ids"
                            else torch.cat(prompts), reqs)
            if check_retrieval and not self.memory.config.exact_match:
                self._warn_unretrieved(ids, [r["prompt"] for r in reqs])
        return ids

    def _warn_unretrieved(self, ids: Sequence[str], prompts: Sequence[str]) -> None:
        """Warn about the edits whose own prompt does not fire them, with the gate that blocked
        the first few (:meth:`explain`)."""
        fired = self.lookup(prompts).ids  # one read of the memory: safe while other threads edit
        missed = [(i, p) for i, p, got in zip(ids, prompts, fired) if got != i]
        if not missed:
            return
        shown = []
        for edit_id, prompt in missed[:3]:
            why = self.explain(prompt)
            shown.append(f"{edit_id!r} ({'; '.join(why.blocked_by) or why.reason})")
        warnings.warn(f"{len(missed)} of {len(ids)} edits do not fire on their own prompt: {', '.join(shown)}. "
                      "Turn on exact match (Editor.load(..., exact_match=True)) to make an edited prompt always "
                      "retrieve its edit", EditNotRetrievedWarning, stacklevel=3)

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
        """``folder/editor.safetensors`` + ``folder/editor.json`` (config, sizes and the sha256
        of the weights file) and, if asked, the memory folder ``folder/memory`` tagged with
        :meth:`fingerprint`, as one step: every part is written under a staged name first, then
        a journal commits them (:func:`medrek.io.commit_staged`), so a kill or a full disk at any
        point leaves the previous editor or the new one, memory included. Saves of one folder
        from threads or processes wait for each other (an OS lock)."""
        folder = resolve_link(folder)
        if folder.is_symlink() and not folder.exists():
            raise FileNotFoundError(f"{folder}: a symbolic link that leads nowhere (a loop, or a missing target); "
                                    "nothing was written")
        folder.mkdir(parents=True, exist_ok=True)
        _check_editor_folder(folder, with_memory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        with folder_lock(folder):
            finish_staged(folder)  # a save a kill interrupted: finished or cleared first
            tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            moves: dict[str, str] = {}
            memory_sha256 = None
            try:
                if with_memory:  # first: a memory that cannot be saved changes nothing
                    self.memory.owner, self.memory.lm_identity = self.fingerprint(), self.model.identity()
                    moves["memory"] = staged_name(tag, "memory")
                    self.memory.save(folder / moves["memory"], lock=False)
                    memory_sha256 = self.memory.content_sha256
                moves["editor.safetensors"] = staged_name(tag, "editor.safetensors")
                save_file(tensors, str(folder / moves["editor.safetensors"]))
                os.chmod(folder / moves["editor.safetensors"], 0o644)  # an ordinary readable file, as before
                weights_sha256 = file_sha256(folder / moves["editor.safetensors"])
                moves["editor.json"] = staged_name(tag, "editor.json")
                write_json(folder / moves["editor.json"], {
                    "format": FORMAT, "config": asdict(self.config), "lm_hidden": self.model.hidden_size,
                    "encoder_hidden": self.encoder.config.hidden_size, "lm_identity": self.model.identity(),
                    "weights_sha256": weights_sha256,
                    "memory_sha256": memory_sha256})  # None: saved without its memory
            except BaseException as exc:
                finish_staged(folder)  # no journal yet: the staged parts go, the previous editor stays
                if isinstance(exc, OSError) and exc.filename is None:
                    raise OSError(exc.errno, f"{folder}: the editor could not be saved ({exc.strerror or exc}); "
                                  "the previous version, if any, is untouched") from exc
                raise
            commit_staged(folder, moves)
        return folder

    def load_weights(self, tensors: Mapping[str, torch.Tensor], source: str) -> None:
        """Load trained weights, refusing missing, unexpected or mis-shaped tensors by name."""
        own = self.trainable_state_dict()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"{source}: does not fit this editor (missing {missing[:3]}, unexpected {unexpected[:3]})")
        for name, value in tensors.items():
            if value.shape != own[name].shape:
                raise CheckpointError(f"{source}: tensor {name} has shape {tuple(value.shape)}, "
                                      f"this editor needs {tuple(own[name].shape)}")
        enc = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
        self.encoder.load_state_dict(enc, strict=False)
        self.prompt_encoder.load_state_dict({k[len("prompt_encoder."):]: v for k, v in tensors.items()
                                             if k.startswith("prompt_encoder.")})
        if self.verifier is not None:
            self.verifier.load_stored_state_dict({k[len("verifier."):]: v for k, v in tensors.items()
                                                  if k.startswith("verifier.")})
        if self.config.train_backbone:  # cached features came from the old backbone
            self.encoder.clear_cache()
        self.memory = self.new_memory()

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, device: str = "cpu",
             lm: tuple[nn.Module, Any] | None = None, with_memory: bool = False, **overrides: Any) -> "Editor":
        """Rebuild an editor from ``save``; the LM may be passed in to avoid reloading it."""
        folder = Path(folder)
        meta_path = folder / "editor.json"
        if folder.is_dir():
            finish_interrupted_save(folder)
        meta, config = read_editor_config(folder)
        weights = check_weights(folder, meta)
        editor = cls.build(config, device=device, lm=lm, **overrides)
        if editor.model.hidden_size != meta["lm_hidden"]:
            raise CheckpointError(f"{meta_path}: trained for an LM of hidden size {meta['lm_hidden']}, "
                                  f"got {editor.model.hidden_size}")
        if meta.get("lm_identity") and meta["lm_identity"] != editor.model.identity():  # editors saved before: none
            raise CheckpointError(f"{meta_path}: saved over another LM than the one given (LM identity "
                                  f"{meta['lm_identity'][:12]} vs {editor.model.identity()[:12]}: same name and size, "
                                  "other config or weights); load it with the LM it was trained with")
        tensors = read_tensors(weights)
        editor.load_weights(tensors, str(weights))
        if with_memory:
            memory = EditMemory.load(folder / "memory", key_dim=editor.config.key_dim, n_tokens=editor.config.n_tokens,
                                     lm_hidden=editor.model.hidden_size)
            editor.memory = editor.adopt_memory(memory, folder / "memory")  # another editor's: says what differs
            check_saved_together(meta, memory, meta_path, folder / "memory")  # this editor's, but another save
        return editor

    def adopt_memory(self, memory: EditMemory, source: str | os.PathLike[str]) -> EditMemory:
        """``memory`` if this editor made it (same fingerprint and gate settings), else an error
        naming what differs: keys and prompts from another editor would retrieve wrongly."""
        own = asdict(self.new_memory().config)
        if memory.config.prompt_store == "vectors":  # saved before token-id memories: its stored prompts still serve
            own["prompt_store"] = "vectors"
        diff = {k: (v, own.get(k)) for k, v in asdict(memory.config).items() if own.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: memory {a!r} vs editor {b!r}" for k, (a, b) in sorted(diff.items()))
            raise CheckpointError(f"{source}: memory saved with other settings than this editor's ({details})")
        own_fingerprint = self.fingerprint()
        if memory.lm_identity is not None and memory.lm_identity != self.model.identity():
            raise CheckpointError(f"{source}: memory was made over another LM (identity {memory.lm_identity[:12]} vs "
                                  f"{self.model.identity()[:12]}); its prompts were built for that LM")
        if memory.owner != own_fingerprint:
            raise CheckpointError(f"{source}: memory was made by another editor (fingerprint {str(memory.owner)[:12]} "
                                  f"vs this editor's {own_fingerprint[:12]}); its keys and prompts do not fit")
        memory.verify = self._verify()
        memory.build_prompts = self.build_prompts
        return memory
