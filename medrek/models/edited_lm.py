"""The frozen causal LM with prompt injection, and teacher-forced scoring through it.

* :func:`encode_pairs` tokenises (prompt, target) pairs; the chat-template helpers say how a
  question is put to the LM.
* :class:`EditedModel`: a frozen causal LM that takes, per row, optional prompt tokens [T, H]
  and prepends them at the first layer (``inputs_embeds``) with the attention mask extended;
  rows without prompt tokens see exactly the unedited model. Differentiable, so the trainer
  uses it too.
* :func:`score_pairs`: teacher-forced accuracy and NLL of (prompt, target) pairs, with the
  prompt tokens a retrieval callback gives each row (:class:`RowPrompts`).

:class:`~medrek.editor.Editor` (the user API) puts a memory and encoders in front of these.
"""

from __future__ import annotations

import hashlib
import json

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..evaluate.metrics import per_row_scores, prediction_positions, token_scores
from .encoder import TokenStates

__all__ = ["CHAT_TEMPLATE_SETTINGS", "EditedModel", "PairBatch", "RowPrompts", "ScoreResult", "batches",
           "check_chat_template", "check_max_length", "encode_pairs", "pad_prompts", "resolve_chat_template",
           "score_pairs"]


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
    def context_window(self) -> int | None:
        """The most positions the LM was built for (``max_position_embeddings``; None: unknown)."""
        window = getattr(self.lm.config, "max_position_embeddings", None)
        return int(window) if isinstance(window, int) and window > 0 else None

    def check_context(self, lengths: Sequence[int], what: str, rows: Sequence[int] | None = None) -> None:
        """Refuse rows longer than the context window (positions past it were never trained, and
        a forward there is slow and meaningless): names the first such row (``rows[i]``, else
        ``i``) and its length."""
        window = self.context_window
        for i, n in enumerate(lengths):
            if window is not None and n > window:
                raise ValueError(f"{what} {rows[i] if rows is not None else i}: {n} positions (prompt slots included) "
                                 f"exceed the LM's context window of {window}; shorten it, or cut scored rows with "
                                 "max_length")

    @staticmethod
    def row_lengths(attention_mask: torch.Tensor, prompts: torch.Tensor | None, fired: torch.Tensor | None) -> list[int]:
        """Positions each row takes: its tokens plus the non-padding prompt slots of rows that fired."""
        lengths = attention_mask.sum(1).cpu()
        if prompts is not None and fired is not None:
            lengths = lengths + prompts.ne(0).any(-1).sum(1).cpu() * fired.cpu()
        return lengths.tolist()

    @property
    def hidden_size(self) -> int:
        return int(self.lm.get_input_embeddings().embedding_dim)

    @torch.no_grad()
    def identity(self) -> str:
        """sha256 of the LM's architecture config and a sample of its weights (every 997th value
        of the input embeddings and of the last layer's parameters): two LMs with the same name
        and hidden size but other weights differ here. Computed once per model."""
        cached = getattr(self, "_identity", None)
        if cached is not None:
            return cached
        config = {k: v for k, v in sorted(self.lm.config.to_dict().items())
                  if isinstance(v, (int, float, str, bool)) and not k.startswith("_") and k not in ("dtype", "torch_dtype")}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8"))
        params = list(self.lm.parameters())
        for tensor in (self.lm.get_input_embeddings().weight, params[-1]):
            digest.update(tensor.detach().float().cpu().flatten()[::997].numpy().tobytes())
        self._identity = digest.hexdigest()
        return self._identity

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

        When only some rows fired, the rows that did not run as the plain LM in their own forward
        (not beside prompt slots they would only mask): the same numbers, fewer positions.
        """
        if prompts is not None and fired is not None and bool(fired.any()) and not bool(fired.all()):
            return self._split_by_fired(input_ids, attention_mask, prompts, fired, positions, labels, chunk)
        if not self._plain_head:
            return token_scores(self(input_ids, attention_mask, prompts, fired, positions=positions), labels)
        inputs, skip = self._inputs(input_ids, attention_mask, prompts, fired)
        hidden = self.lm.get_decoder()(**inputs).last_hidden_state[:, skip:][positions]  # [N, H]
        pieces = [token_scores(self.project(hidden[s: s + chunk]), labels[s: s + chunk])
                  for s in range(0, len(hidden), chunk)]
        if not pieces:
            return labels.new_zeros(0), torch.zeros(0, device=labels.device)
        return torch.cat([a for a, _ in pieces]), torch.cat([n for _, n in pieces])

    def _split_by_fired(self, input_ids, attention_mask, prompts, fired, positions, labels, chunk):
        """:meth:`target_scores` of the fired rows (with their prompts) and of the rest (plain),
        put back in the order of ``positions``."""
        row_of = positions.nonzero()[:, 0]  # [N] the row of each scored position, row-major
        argmax, nll = labels.new_empty(len(labels)), torch.empty(len(labels), device=labels.device)
        for part, with_prompts in ((fired, True), (~fired, False)):
            rows = part.nonzero()[:, 0]
            mine = part[row_of]  # [N] the positions of these rows, in the same relative order
            a, n = self.target_scores(input_ids[rows], attention_mask[rows], prompts[rows] if with_prompts else None,
                                      fired[rows] if with_prompts else None, positions[rows], labels[mine], chunk)
            argmax[mine], nll[mine] = a, n.to(nll.dtype)
        return argmax, nll

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
    for part in batches(len(order), batch_size):
        idx = order[part]
        batch = model.encode_pairs([prompts[i] for i in idx], [targets[i] for i in idx], max_length).to(model.device)
        rp = retrieve(idx) if retrieve is not None else RowPrompts()
        model.check_context(model.row_lengths(batch.attention_mask, rp.prompts, rp.fired), "scored row", idx)
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


def batches(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
