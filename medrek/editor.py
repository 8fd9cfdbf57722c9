"""Editing a frozen causal LM by retrieval and continuous prompts.

* :class:`EditedModel`: a frozen causal LM that takes, per row, optional prompt tokens
  [T, H] and prepends them at the first layer (``inputs_embeds``) with the attention mask
  extended; rows without prompt tokens see exactly the unedited model. Differentiable, so the
  trainer uses it too.
* :class:`Editor`: what users call. ``edit`` stores requests in an :class:`EditMemory` (encoder
  forwards only, no gradient); ``score``, ``generate`` and ``explain`` retrieve for each input
  and run the :class:`EditedModel`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from .data.records import EditRecord
from .evaluate.metrics import per_row_scores, prediction_positions, token_scores
from .config import check_fields, check_keys
from .io import CheckpointError, atomic_path, file_sha256, read_checkpoint_meta, read_tensors, write_json
from .memory import SCORES, EditMemory, Explanation, Lookup, MemoryConfig, Retrieval
from .methods import edit_text, get_preset
from .models.encoder import KnowledgeEncoder, KnowledgeEncoderConfig, TokenStates
from .models.prompt import EditTextCutWarning, PromptEncoder, PromptEncoderConfig
from .models.verifier import QuestionVerifier, VerifierConfig
from .models.registry import load_causal_lm, load_encoder

__all__ = ["EditorConfig", "EditedModel", "Editor", "EditTextCutWarning", "PairBatch", "RowPrompts", "ScoreResult",
           "auto_edit_id", "encode_pairs", "pad_prompts", "score_pairs"]

FORMAT = "medrek.Editor/1"


# ---------------------------------------------------------------------------------------------
# Tokenisation of (prompt, target) pairs for teacher-forced scoring and training
# ---------------------------------------------------------------------------------------------
@dataclass
class PairBatch:
    input_ids: torch.Tensor  # [B, L] prompt tokens then target tokens, right-padded
    attention_mask: torch.Tensor  # [B, L]
    target_mask: torch.Tensor  # [B, L] True at target-token positions
    truncated: torch.Tensor | None = None  # [B] True where the row was cut to max_length

    def to(self, device: torch.device | str) -> "PairBatch":
        cut = self.truncated if self.truncated is not None else torch.zeros(len(self.input_ids), dtype=torch.bool)
        return PairBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.target_mask)), cut)


def check_max_length(max_length: int | None) -> None:
    if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2):
        raise ValueError(f"max_length must be None (never cut a row) or an integer >= 2, got {max_length!r}")


def encode_pairs(tokenizer, prompts: Sequence[str], targets: Sequence[str], max_length: int | None = None,
                 add_special_tokens: bool = True) -> PairBatch:
    """Tokenise ``prompt`` (with the tokenizer's special tokens unless ``add_special_tokens`` is
    False, as for chat-formatted prompts) followed by ``" " + target``.

    ``max_length`` None (the default) never cuts a row. A number cuts longer rows from the left,
    keeping the target, so the prompt loses its first tokens (and with them, possibly, what makes
    it an efficacy rather than a generality probe): ``truncated`` marks every row that was cut,
    for the caller to count and report."""
    check_max_length(max_length)
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    empty = [i for i, t in enumerate(targets) if not t.strip()]
    if empty:
        raise ValueError(f"target {empty[0]} is empty")
    p_ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    t_ids = tokenizer([" " + t.strip() for t in targets], add_special_tokens=False)["input_ids"]
    rows = []
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        if not t:
            raise ValueError(f"target {i} ({targets[i]!r}) tokenises to nothing")
        ids = p + t if max_length is None else (p + t)[-max_length:]  # keep the target; cut from the left
        rows.append((ids, len(ids) - len(t)))
    cut = torch.tensor([len(p) + len(t) > len(ids) for (p, t), (ids, _) in zip(zip(p_ids, t_ids), rows)], dtype=torch.bool)
    L = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), L), pad, dtype=torch.long)
    attention = torch.zeros(len(rows), L, dtype=torch.long)
    target = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        target[i, max(start, 1): len(ids)] = True
    return PairBatch(input_ids, attention, target, cut)


CHAT_TEMPLATE_SETTINGS = ("auto", "none")


def check_chat_template(setting: str) -> None:
    if setting not in CHAT_TEMPLATE_SETTINGS:
        raise ValueError(f"chat_template must be one of {CHAT_TEMPLATE_SETTINGS}, got {setting!r}")


def resolve_chat_template(tokenizer, setting: str) -> bool:
    """Whether questions go through the tokenizer's chat template: ``auto`` (when it has one) or
    ``none`` (plain text, as the paper's LMs are queried)."""
    check_chat_template(setting)
    return setting == "auto" and bool(getattr(tokenizer, "chat_template", None))


# ---------------------------------------------------------------------------------------------
# The frozen LM with prompt injection
# ---------------------------------------------------------------------------------------------
class EditedModel(nn.Module):
    """A frozen causal LM with per-row prompt tokens prepended at the first layer.

    Layout of a batch with prompts: ``[T prompt slots][the tokenised text]``; a row without a
    prompt has its T slots masked out, and so has every all-zero slot (a prompt encoder's
    padding); position ids follow the attention mask, so masked slots (and left padding) are
    invisible, and slots that are padding in every row of the batch are not computed at all. A batch where no row has a prompt is passed to
    the LM untouched, so its logits are exactly the base model's.

    With ``chat_template`` every question is rendered as one user turn of the tokenizer's chat
    template (generation prompt included) before tokenisation, for scoring and generation alike;
    the answer follows the assistant header.
    """

    def __init__(self, lm: nn.Module, tokenizer, chat_template: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.chat_template = bool(chat_template)
        if self.chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template=True but this tokenizer has no chat template")
        lm.requires_grad_(False)

    def format(self, texts: Sequence[str]) -> list[str]:
        """Questions as the LM reads them: plain, or one user turn of the chat template."""
        if not self.chat_template:
            return list(texts)
        return [self.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                   add_generation_prompt=True) for t in texts]

    def encode_pairs(self, prompts: Sequence[str], targets: Sequence[str], max_length: int | None = None) -> PairBatch:
        """:func:`encode_pairs` of the formatted prompts (the template carries its own special tokens)."""
        return encode_pairs(self.tokenizer, self.format(prompts), targets, max_length,
                            add_special_tokens=not self.chat_template)

    def encode_queries(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Formatted, left-padded questions for generation: ``input_ids``, ``attention_mask``."""
        return self.tokenizer(self.format(texts), return_tensors="pt", padding=True, padding_side="left",
                              add_special_tokens=not self.chat_template).to(self.device)

    @property
    def hidden_size(self) -> int:
        return int(self.lm.get_input_embeddings().embedding_dim)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def _with_prompts(self, input_ids, attention_mask, prompts, fired):
        """-> inputs_embeds [B, T + L, H], attention mask [B, T + L]."""
        embeds = self.lm.get_input_embeddings()(input_ids)  # [B, L, H]
        prompts = prompts.to(embeds.dtype) * fired[:, None, None].to(embeds.dtype)
        slot_mask = prompts.ne(0).any(-1)  # [B, T]: all-zero slots are padding
        used = slot_mask.any(0)  # [T]: slots that are padding in every row are dropped, not computed
        if not bool(used.all()):
            prompts, slot_mask = prompts[:, used], slot_mask[:, used]
        return torch.cat([prompts, embeds], 1), torch.cat([slot_mask.to(attention_mask.dtype), attention_mask], 1)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The LM's token ids of ``texts`` (no special tokens)."""
        return [list(row) for row in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], max_tokens: int) -> TokenStates:
        """The LM's input embeddings of ``texts`` (no special tokens), left-padded, each cut to its
        last ``max_tokens`` tokens: states [B, n, H], mask [B, n]."""
        return self.embed_ids([row[-max_tokens:] for row in self.token_ids(texts)])

    @torch.no_grad()
    def embed_ids(self, rows: Sequence[Sequence[int] | torch.Tensor]) -> TokenStates:
        """The LM's input embeddings of token id ``rows``, left-padded to the longest:
        states [B, n, H], mask [B, n]."""
        ids = [r.tolist() if isinstance(r, torch.Tensor) else list(r) for r in rows]
        n = max(1, max((len(r) for r in ids), default=1))
        input_ids = torch.full((len(ids), n), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(len(ids), n, dtype=torch.long)
        for i, row in enumerate(ids):
            if row:
                input_ids[i, n - len(row):] = torch.tensor(row)
                mask[i, n - len(row):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        states = self.lm.get_input_embeddings()(input_ids)  # [B, n, H]
        return TokenStates(states, mask, states[:, -1])

    @property
    def _plain_head(self) -> bool:
        """Whether logits are just ``lm_head(hidden)`` (no soft-capping or scaling)."""
        cfg = self.lm.config
        scaled = any(getattr(cfg, name, None) not in (None, 1, 1.0)
                     for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
        return not scaled and self.lm.get_output_embeddings() is not None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompts: torch.Tensor | None = None, fired: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits aligned with ``input_ids``; ``prompts`` [B, T, H], ``fired`` [B] bool.

        Returns [B, L, V], or [N, V] at the N ``positions`` [B, L] (bool) when given: the
        vocabulary projection is then computed only where it is needed.
        """
        inputs, skip = self._inputs(input_ids, attention_mask, prompts, fired)
        if positions is not None and self._plain_head:
            hidden = self.lm.get_decoder()(**inputs).last_hidden_state[:, skip:]  # [B, L, H]
            return self.project(hidden[positions])  # [N, V]
        logits = self.lm(**inputs).logits[:, skip:]  # [B, L, V]
        return logits if positions is None else logits[positions]

    def _inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: torch.Tensor | None,
                fired: torch.Tensor | None) -> tuple[dict[str, Any], int]:
        """The LM's keyword inputs for a batch, and how many prompt slots lead each row (0: none)."""
        use = prompts is not None and fired is not None and bool(fired.any())
        if use:
            embeds, mask = self._with_prompts(input_ids, attention_mask, prompts, fired.to(input_ids.device))
            inputs = {"inputs_embeds": embeds, "attention_mask": mask,
                      "position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}
        else:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs["use_cache"] = False  # one full pass: a KV cache would only cost copies
        return inputs, (inputs["attention_mask"].shape[1] - input_ids.shape[1]) if use else 0

    @torch.no_grad()
    def target_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: torch.Tensor | None,
                      fired: torch.Tensor | None, positions: torch.Tensor, labels: torch.Tensor,
                      chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmax token [N] and the label's NLL [N] at the N ``positions`` [B, L] (bool).

        The vocabulary projection and the metric run ``chunk`` positions at a time, so memory
        is [chunk, V] rather than [N, V]: a batch of 32 rows with 300-token targets would
        otherwise hold 9,600 x V logits (1.9 GB for SmolLM2), twice. The argmax tokens (and so
        every accuracy metric) are the same as from one projection; the NLL can differ in float
        rounding (about 1e-5 for SmolLM2), since the matrix product is blocked differently.
        """
        if not self._plain_head:
            return token_scores(self(input_ids, attention_mask, prompts, fired, positions=positions), labels)
        inputs, skip = self._inputs(input_ids, attention_mask, prompts, fired)
        hidden = self.lm.get_decoder()(**inputs).last_hidden_state[:, skip:][positions]  # [N, H]
        pieces = [token_scores(self.project(hidden[s: s + chunk]), labels[s: s + chunk])
                  for s in range(0, len(hidden), chunk)]
        if not pieces:
            return labels.new_zeros(0), torch.zeros(0, device=labels.device)
        return torch.cat([a for a, _ in pieces]), torch.cat([n for _, n in pieces])

    def forward_bucketed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: torch.Tensor | None,
                         fired: torch.Tensor | None, positions: torch.Tensor, rows_per_chunk: int = 8) -> torch.Tensor:
        """``forward(..., positions=positions)`` in length-sorted chunks of rows, each trimmed to
        its own longest row: the same [N, V] result (same order) with far less padding.
        """
        lengths = attention_mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        pieces, keys = [], []
        L = input_ids.shape[1]
        for start in range(0, len(order), rows_per_chunk):
            rows = order[start: start + rows_per_chunk]
            n = int(lengths[rows].max())
            p = prompts[rows] if prompts is not None else None
            f = fired[rows] if fired is not None else None
            pos = positions[rows, :n]
            pieces.append(self(input_ids[rows, :n], attention_mask[rows, :n], p, f, positions=pos))
            where = pos.nonzero()
            keys.append(rows[where[:, 0]] * L + where[:, 1])
        restore = torch.argsort(torch.cat(keys))
        return torch.cat(pieces)[restore]

    def final_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     positions: torch.Tensor) -> torch.Tensor:
        """Unedited final hidden states [N, H] at ``positions`` (``project`` turns them into logits)."""
        if not self._plain_head:
            raise NotImplementedError("this LM's logits are not a plain projection of its hidden states")
        out = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state[positions]

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states [..., H] -> logits [..., V]."""
        return self.lm.get_output_embeddings()(hidden)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 prompts: torch.Tensor | None = None, fired: torch.Tensor | None = None,
                 **generate_kwargs: Any) -> torch.Tensor:
        """New tokens only [B, N]; ``input_ids`` must be left-padded."""
        kwargs = {"pad_token_id": self.tokenizer.pad_token_id, **generate_kwargs}
        if prompts is None or fired is None or not bool(fired.any()):
            out = self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            return out[:, input_ids.shape[1]:]
        embeds, mask = self._with_prompts(input_ids, attention_mask, prompts, fired.to(input_ids.device))
        return self.lm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)


# ---------------------------------------------------------------------------------------------
# The user-facing editor
# ---------------------------------------------------------------------------------------------
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

    def __post_init__(self) -> None:
        check_fields(self, EditorConfig, "EditorConfig")  # types and ranges, by field name
        get_preset(self.method)
        check_chat_template(self.chat_template)
        if self.score not in SCORES:
            raise ValueError(f"EditorConfig.score must be one of {SCORES}, got {self.score!r}")
        if self.min_verified > 1:
            raise ValueError(f"EditorConfig.min_verified is a probability, got {self.min_verified!r}")


RETRIEVAL_DEFAULTS = {name: getattr(EditorConfig, name) for name in
                      ("score", "exact_match", "prototype_gate", "verify_k", "min_verified", "verifier_layers")}


@dataclass
class ScoreResult:
    """Teacher-forced scores of (prompt, target) pairs, one entry per pair."""

    accuracy: torch.Tensor  # [N] fraction of target tokens predicted by argmax
    nll: torch.Tensor  # [N] mean token negative log-likelihood
    fired: torch.Tensor  # [N] bool, whether an edit was retrieved for the query
    retrieved_ids: list[str | None] = field(default_factory=list)  # the edit that fired, else None
    predictions: list[torch.Tensor] = field(default_factory=list)  # argmax ids at target positions
    margins: torch.Tensor | None = None  # [N] top-1 score minus prototype score (NaN: empty memory)
    truncated: torch.Tensor | None = None  # [N] bool, the row was cut to max_length (lost prompt tokens)


@dataclass
class RowPrompts:
    """What retrieval gives a chunk of rows: prompt tokens, fired mask, top-1 ids, margins."""

    prompts: torch.Tensor | None = None  # [B, T, H]
    fired: torch.Tensor | None = None  # [B] bool
    ids: list[str | None] | None = None
    margins: torch.Tensor | None = None  # [B]


def pad_prompts(prompts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Prompt tensors [B_i, T_i, H] as one [sum B_i, max T_i, H], each left-padded with all-zero
    (masked) slots, as prompts of different lengths are batched."""
    width = max(p.shape[1] for p in prompts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, width - p.shape[1], 0)) for p in prompts])


@torch.no_grad()
def score_pairs(model: "EditedModel", prompts: Sequence[str], targets: Sequence[str],
                retrieve: Callable[[list[int]], RowPrompts] | None = None, batch_size: int = 32,
                max_length: int | None = None) -> ScoreResult:
    """Teacher-forced scores of (prompt, target) pairs in length-sorted batches.

    ``retrieve(indices)`` gives the prompt tokens for those rows (none: the plain LM, which is
    also how parameter-editing baselines are scored). ``max_length`` (None: never) cuts longer
    rows from the left; ``truncated`` says which. Results come back in input order.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]) + len(targets[i]), i))
    acc, nll, fired_all, ids_all, preds, margins, cut = [], [], [], [], [], [], []
    for part in _batches(len(order), batch_size):
        idx = order[part]
        batch = model.encode_pairs([prompts[i] for i in idx], [targets[i] for i in idx], max_length).to(model.device)
        rp = retrieve(idx) if retrieve is not None else RowPrompts()
        positions = prediction_positions(batch.target_mask)
        labels = batch.input_ids[:, 1:][batch.target_mask[:, 1:]]  # [N]
        argmax, token_nll = model.target_scores(batch.input_ids, batch.attention_mask, rp.prompts, rp.fired,
                                                positions, labels)
        tf = per_row_scores(argmax, token_nll, labels, positions.nonzero()[:, 0], len(idx))
        acc.append(tf.accuracy)
        nll.append(tf.nll)
        preds += tf.predictions
        cut.append(batch.truncated.cpu())
        fired_all.append(rp.fired.cpu() if rp.fired is not None else torch.zeros(len(idx), dtype=torch.bool))
        ids_all += rp.ids if rp.ids is not None else [None] * len(idx)
        margins.append(rp.margins.cpu().float() if rp.margins is not None else torch.full((len(idx),), math.nan))
    if not order:
        empty = torch.zeros(0)
        none = torch.zeros(0, dtype=torch.bool)
        return ScoreResult(empty, empty.clone(), none, [], [], empty.clone(), none.clone())
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return ScoreResult(torch.cat(acc).cpu()[inverse], torch.cat(nll).cpu()[inverse], torch.cat(fired_all)[inverse],
                       [ids_all[i] for i in inverse], [preds[i] for i in inverse], torch.cat(margins)[inverse],
                       torch.cat(cut)[inverse])


def _as_request(item: EditRecord | Mapping[str, Any], position: int) -> dict[str, Any]:
    """A request as stored: ``prompt`` and ``target_new`` non-empty strings, ``id`` a string if given."""
    if isinstance(item, EditRecord):
        item = {"id": item.record_id, "prompt": item.prompt, "target_new": item.target_new}
    if not isinstance(item, Mapping):
        raise ValueError(f"edit request {position}: expected a mapping with 'prompt' and 'target_new', got {item!r}")
    for name in ("prompt", "target_new"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"edit request {position}: {name!r} must be a non-empty string, got {value!r}")
    if "id" in item and (not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool) or not str(item["id"]).strip()):
        raise ValueError(f"edit request {position}: 'id' must be a non-empty string, got {item['id']!r}")
    return {**item, "id": str(item["id"])} if "id" in item else dict(item)


def auto_edit_id(prompt: str, target: str) -> str:
    """The id of a request given without one: ``auto-`` and a hash of its text, so it cannot
    collide with another request's (or a user's ``edit-0``)."""
    return "auto-" + hashlib.sha256(f"{prompt}\x1f{target}".encode("utf-8")).hexdigest()[:16]


def _batches(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


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
                                                                          config.verify_k)).to(device)
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
        if self.prompt_encoder.needs_lm_tokens:
            tokens = self.model.embed_texts(texts, self.prompt_encoder.config.text_slots)
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
            return self.encoder.query(list(prompts))
        if values is None:
            values = self.encoder.knowledge([edit_text(p, t) for p, t in zip(prompts, targets)])
        return values

    @torch.no_grad()
    def edit(self, requests: EditRecord | Mapping[str, Any] | Sequence[EditRecord | Mapping[str, Any]],
             batch_size: int = 64, progress: bool = False) -> list[str]:
        """Store one request or a batch; returns the edit ids. Encoder forwards only."""
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
        for part in tqdm(list(_batches(len(reqs), batch_size)), desc="editing", disable=not progress):
            p_texts, t_texts = [r["prompt"] for r in reqs[part]], [r["target_new"] for r in reqs[part]]
            if self.memory.config.prompt_store == "token_ids":
                rows, cut = self.edit_token_rows(p_texts, t_texts)
                keys.append(self.edit_keys(p_texts, t_texts))
                token_rows += rows
                dropped += cut
            else:
                k, p = self.encode_edits(p_texts, t_texts)
                keys.append(k)
                prompts.append(p)
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
        return ids

    def remove(self, ids: str | Sequence[str]) -> None:
        self.memory.remove([ids] if isinstance(ids, str) else list(ids))

    def clear(self) -> None:
        self.memory.clear()

    # ---- retrieval ----------------------------------------------------------------------------
    @torch.no_grad()
    def retrieve(self, texts: Sequence[str]) -> Retrieval:
        texts = list(texts)
        return self.memory.retrieve(self.encoder.query(texts), texts)

    @torch.no_grad()
    def explain(self, text: str) -> Explanation:
        """What is retrieved for ``text``, its score, the prototype score, the runner-up and, in
        words (``explanation.reason``), which condition decided."""
        return self.memory.explain(self.encoder.query([text])[0], text)

    @torch.no_grad()
    def lookup(self, texts: Sequence[str]) -> Lookup | None:
        """Retrieval for ``texts`` with the prompt tokens, ids and requests it found, read from
        one state of the memory (safe while other threads edit); None when nothing is stored."""
        if len(self.memory) == 0:
            return None
        texts = list(texts)
        return self.memory.lookup(self.encoder.query(texts), texts)

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
        for part in _batches(len(texts), batch_size):
            batch = self.model.encode_queries(list(texts[part]))
            rp = self.row_prompts(texts[part]) if use_memory else RowPrompts()
            new = self.model.generate(batch["input_ids"], batch["attention_mask"], rp.prompts, rp.fired,
                                      max_new_tokens=max_new_tokens, **generate_kwargs)
            out += tok.batch_decode(new, skip_special_tokens=True)
        return out

    # ---- persistence ----------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"encoder.{k}": v for k, v in self.encoder.trainable_state_dict().items()}
        state.update({f"prompt_encoder.{k}": v for k, v in self.prompt_encoder.state_dict().items()})
        if self.verifier is not None:  # stored in float16 (train.retriever rounds it so before use)
            state.update({f"verifier.{k}": v.half() for k, v in self.verifier.trainable_state_dict().items()})
        return state

    def fingerprint(self) -> str:
        """sha256 of this editor's config and trained weights: what made a memory or a result."""
        config = asdict(self.config)
        for name, default in RETRIEVAL_DEFAULTS.items():  # settings added later: absent at their default,
            if config[name] == default:  # so editors, memories and results saved before them keep their fingerprint
                del config[name]
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8"))
        for name, value in sorted(self.trainable_state_dict().items()):
            value = value.detach().cpu().contiguous()
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode("utf-8"))
            digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
        return digest.hexdigest()

    def save(self, folder: str | os.PathLike[str], with_memory: bool = False) -> Path:
        """``folder/editor.safetensors`` + ``folder/editor.json`` (config, sizes and the sha256
        of the weights file) and, if asked, the memory folder ``folder/memory`` tagged with
        :meth:`fingerprint`."""
        folder = Path(folder)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        with atomic_path(folder / "editor.safetensors") as tmp:
            save_file(tensors, str(tmp))
            weights_sha256 = file_sha256(tmp)
        write_json(folder / "editor.json", {"format": FORMAT, "config": asdict(self.config),
                                            "lm_hidden": self.model.hidden_size,
                                            "encoder_hidden": self.encoder.config.hidden_size,
                                            "weights_sha256": weights_sha256})
        if with_memory:
            self.memory.owner = self.fingerprint()
            self.memory.save(folder / "memory")
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
            self.verifier.load_state_dict({k[len("verifier."):]: v.float() for k, v in tensors.items()
                                           if k.startswith("verifier.")}, strict=False)
        if self.config.train_backbone:  # cached features came from the old backbone
            self.encoder.clear_cache()
        self.memory = self.new_memory()

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, device: str = "cpu",
             lm: tuple[nn.Module, Any] | None = None, with_memory: bool = False, **overrides: Any) -> "Editor":
        """Rebuild an editor from ``save``; the LM may be passed in to avoid reloading it."""
        folder = Path(folder)
        meta_path = folder / "editor.json"
        meta = read_checkpoint_meta(meta_path, FORMAT, "editor checkpoint")
        config = {"chat_template": "none", **meta["config"]}  # editors saved before the setting asked plainly
        check_keys(config, [f.name for f in fields(EditorConfig)], f"{meta_path}: config")
        try:
            config = EditorConfig(**config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{meta_path}: {exc}") from None
        weights = folder / "editor.safetensors"
        if meta.get("weights_sha256") and file_sha256(weights) != meta["weights_sha256"]:
            raise CheckpointError(f"{weights}: sha256 differs from the one recorded in {meta_path} (a corrupt file, "
                                  "or weights from another save)")
        editor = cls.build(config, device=device, lm=lm, **overrides)
        if editor.model.hidden_size != meta["lm_hidden"]:
            raise CheckpointError(f"{meta_path}: trained for an LM of hidden size {meta['lm_hidden']}, "
                                  f"got {editor.model.hidden_size}")
        tensors = read_tensors(weights)
        editor.load_weights(tensors, str(weights))
        if with_memory:
            editor.memory = editor.adopt_memory(EditMemory.load(folder / "memory", key_dim=editor.config.key_dim,
                                                                n_tokens=editor.config.n_tokens,
                                                                lm_hidden=editor.model.hidden_size), folder / "memory")
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
        if memory.owner != own_fingerprint:
            raise CheckpointError(f"{source}: memory was made by another editor (fingerprint {str(memory.owner)[:12]} "
                                  f"vs this editor's {own_fingerprint[:12]}); its keys and prompts do not fit")
        memory.verify = self._verify()
        memory.build_prompts = self.build_prompts
        return memory
