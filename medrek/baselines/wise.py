"""WISE: a side copy of one FFN projection, edited in random-mask shards and routed by how
much it activates (Wang et al., "WISE: Rethinking the Knowledge Memory for Lifelong Model
Editing of Large Language Models", NeurIPS 2024; defaults from EasyEdit's WISE hyper-parameters).

The main memory (the LM's ``layers[layer].mlp.down_proj``) never changes. Edits train a side
memory ``W'`` (a copy of its weight) with::

    loss = CE(target | question)                        the edit, with W' in place of W
         + mean(relu(gap(irrelevant) - alpha))          an unrelated question leaves W' quiet
         + mean(relu(beta - gap(edit)))                 the edited question wakes it
         + mean(relu(gap(irrelevant) - gap(edit) + gamma))
    gap(x) = mean over x's question tokens of |silu(W' a) - silu(W a)|     (a: the projection's input)

where a question's tokens are those after the prefix every question shares (a chat template's
system turn): under causal attention those tokens' activations are the same for every question,
so they cannot tell an edited question from another one, and averaged in they drown the few that
can (SmolLM2's template puts 24 such tokens before a 6-12-token question).

Each ``save_freq`` edits form a knowledge shard: their gradient only reaches a random
``mask_ratio`` of W' (a fresh mask per shard); a finished shard is set aside and the next starts
from W; every ``merge_freq`` edits the shards set aside are merged into one side memory with TIES
(trim each shard's change to its top ``density`` by magnitude, elect a sign per weight, average
the changes that agree). At inference a question's gap is measured for each side memory; the one
with the largest gap answers if that gap reaches ``act_ratio`` times the smallest gap of the edits
it holds, and the main memory answers otherwise.

Where this follows EasyEdit's code rather than the paper's words: the routing threshold
(``act_ratio`` x the smallest edit gap), the merge schedule (``save_freq`` / ``merge_freq``) and
one irrelevant question per edit (here: a MedVersa *train* locality question). One deliberate
difference: gaps are measured on the question's tokens only, never on the answer's (EasyEdit
averages over the whole teacher-forced row, so a row whose target is the edited answer routes
more easily than one asking the same question with another answer; generation has no answer to
look at). ``remove(id)`` replays the other edits (each edit's training is deterministic), so the
result equals editing without it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..data.records import EditRecord
from ..editor import EditedModel, PairBatch, ScoreResult
from ..evaluate.metrics import prediction_positions
from ..io import CheckpointError, atomic_folder, read_checkpoint_meta, read_tensors, write_json
from .base import EditMethod, ReplayedEdits, score_with_hits
from .ft import default_layer
from .layers import check_partial_forward, decoder_layers, hidden_before, logits_at, module_input, projection

__all__ = ["WISEConfig", "WISEMethod", "ties_merge", "activation_gap", "shared_prefix_length", "locality_pairs"]

FORMAT = "medrek.WISE/1"


@dataclass
class WISEConfig:
    layer: int | None = None  # None: 80% of the depth (EasyEdit: layer 27 of LLaMA-2-7B's 32)
    module: str = "mlp.down_proj"
    steps: int = 70  # SGD steps per edit at most (EasyEdit: n_iter 70)
    lr: float = 1.0  # EasyEdit: edit_lr 1.0
    alpha: float = 5.0  # an irrelevant question's gap stays below this
    beta: float = 20.0  # the edited question's gap rises above this
    gamma: float = 10.0  # ... and above the irrelevant one's by this
    act_ratio: float = 0.88  # routing threshold: this times the smallest gap of a side memory's edits
    mask_ratio: float = 0.2  # share of W' a shard's gradient reaches
    norm_constraint: float | None = 1.0  # max |W' - W| per weight (None: unconstrained)
    save_freq: int = 500  # edits per shard
    merge_freq: int = 1000  # shards set aside are merged every this many edits
    density: float = 0.53  # TIES: share of each shard's change kept
    seed: int = 0  # the shards' masks

    def __post_init__(self) -> None:
        if not (self.steps >= 1 and self.lr > 0 and 0 < self.mask_ratio <= 1 and 0 < self.density <= 1
                and self.act_ratio > 0 and self.save_freq >= 1 and self.merge_freq % self.save_freq == 0):
            raise ValueError(f"WISEConfig needs steps >= 1, lr > 0, mask_ratio and density in (0, 1], act_ratio > 0 "
                             f"and merge_freq a multiple of save_freq, got {self}")


def activation_gap(main: torch.Tensor, side: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row [B]: mean over the ``mask`` [B, L] tokens of |silu(side) - silu(main)| ([B, L, H] each)."""
    per_token = (F.silu(side) - F.silu(main)).norm(dim=-1)  # [B, L]
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum(1) / mask.sum(1).clamp_min(1)


def ties_merge(base: torch.Tensor, weights: Sequence[torch.Tensor], density: float) -> torch.Tensor:
    """TIES-merging of ``weights`` around ``base``: each change trimmed to its top ``density``
    by magnitude, a sign elected per entry (the sign of the trimmed sum), and the trimmed changes
    that agree with it averaged."""
    changes = torch.stack([w - base for w in weights])  # [S, out, in]
    flat = changes.reshape(len(weights), -1).abs()
    keep = max(1, int(round(density * flat.shape[1])))
    cut = flat.kthvalue(flat.shape[1] - keep + 1, dim=1).values  # [S] the keep-th largest magnitude
    trimmed = torch.where(changes.abs() >= cut[:, None, None], changes, torch.zeros_like(changes))
    sign = torch.sign(trimmed.sum(0))  # [out, in]
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    merged = (trimmed * agree).sum(0) / agree.sum(0).clamp_min(1)
    return base + merged


def locality_pairs(records: Sequence[EditRecord]) -> list[tuple[str, str]]:
    """Every (question, answer) of ``records``' locality probes: the unrelated questions WISE
    keeps its side memory quiet on (``irrelevant``)."""
    return [(p.prompt, p.answer) for r in records for p in r.locality.values()]


def shared_prefix_length(model: EditedModel) -> int:
    """How many tokens every formatted question starts with (the chat template's system turn and
    user header; 0 for plain text), read off dissimilar probe questions."""
    probes = ["Which organ makes insulin?", "zebra", "12 mg of what, daily?"]
    rows = model.encode_pairs(probes, ["x"] * len(probes)).input_ids.tolist()
    n = 0
    while all(len(r) > n for r in rows) and len({r[n] for r in rows}) == 1:
        n += 1
    return n


def past_prefix(mask: torch.Tensor, prefix: int) -> torch.Tensor:
    """``mask`` [B, L] (one contiguous run of True per row, left- or right-padded) without its
    first ``prefix`` tokens."""
    return mask & (mask.long().cumsum(1) > prefix)


@dataclass
class SideMemory:
    weight: torch.Tensor  # [out, in]
    min_gap: float  # the smallest gap of the edits it holds (its routing threshold / act_ratio)
    edits: int


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


class WISEMethod(ReplayedEdits, EditMethod):
    """WISE behind the kit's :class:`~medrek.baselines.base.EditMethod` interface (edits are
    applied one at a time, in order). ``irrelevant``: (question, answer) pairs the side memory
    must leave quiet, one drawn per edit by its id."""

    name = "wise"
    fires = True  # scores say which rows a side memory answered

    def __init__(self, model: EditedModel, irrelevant: Sequence[tuple[str, str]], config: WISEConfig | None = None) -> None:
        super().__init__(model)
        if not irrelevant:
            raise ValueError("WISE needs irrelevant (question, answer) pairs to train its routing margins; none given")
        self.config = config or WISEConfig()
        self.irrelevant = list(irrelevant)
        n_layers = len(decoder_layers(model.lm))
        self.layer = self.config.layer if self.config.layer is not None else default_layer(n_layers, 0.8)
        self.module = projection(model.lm, self.layer, self.config.module)
        self.base = self.module.weight.detach()
        self.prefix = shared_prefix_length(model)  # tokens no gap is measured on
        self._shortcut: bool | None = None
        self._handles: list[Any] = []
        self._span: torch.Tensor | None = None  # [B, L] question tokens of the rows being scored
        self._attention: torch.Tensor | None = None  # [B, L] the decoder's attention mask of this forward
        self._route: torch.Tensor | None = None  # [B] the side memory each row uses (-1: main), kept for decode steps
        self._training: torch.Tensor | None = None  # W' while an edit trains it
        self._hits: list[torch.Tensor] = []  # per forward while scoring: which rows [B] a side memory answered
        self._scoring = False
        self.restore()

    def identity(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "layer": self.layer, "gap_after": self.prefix,
                "irrelevant": hashlib.sha256(repr(self.irrelevant).encode("utf-8")).hexdigest()[:16]}

    # ---- routing -----------------------------------------------------------------------------
    def _memories(self) -> list[SideMemory]:
        current = [SideMemory(self.current, min(self.current_gaps), len(self.current_gaps))] if self.current_gaps else []
        return self.memories + current

    def _attach(self, on: bool) -> None:
        if on and not self._handles:
            decoder = self.model.lm.get_decoder()
            self._handles = [decoder.register_forward_pre_hook(self._remember_mask, with_kwargs=True),
                             self.module.register_forward_hook(self._hook)]
        elif not on:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def _remember_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._attention = kwargs.get("attention_mask")

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        x = inputs[0]  # [B, L, in]
        if self._training is not None:  # an edit in training: every row through W'
            return F.linear(x, self._training)
        memories = self._memories()
        if not memories:
            if self._scoring:
                self._hits.append(torch.zeros(len(x), dtype=torch.bool))
            return out
        if x.shape[1] == 1 and self._route is not None and len(self._route) == len(x):  # a cached decode step
            route, sides = self._route, [None] * len(memories)
        else:
            route, sides = self._choose(x, out, memories)
            self._route = route
            if self._scoring:
                self._hits.append(route >= 0)
        result = out
        for m, (memory, side) in enumerate(zip(memories, sides)):
            rows = route == m
            if bool(rows.any()):
                side = F.linear(x, memory.weight.to(x.dtype)) if side is None else side
                result = torch.where(rows[:, None, None], side, result)
        return result

    def _choose(self, x: torch.Tensor, out: torch.Tensor, memories: list[SideMemory]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per row [B]: the side memory with the largest gap over its question tokens, if that
        gap reaches its threshold, else -1 (the main memory); and each side memory's output
        [B, L, out], computed for the gaps."""
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if self._attention is not None and self._attention.dim() == 2 and self._attention.shape == mask.shape:
            mask &= self._attention.bool()
        if self._span is not None and self._span.shape == mask.shape:
            mask &= self._span
        mask = past_prefix(mask, self.prefix)
        sides = [F.linear(x, m.weight.to(x.dtype)) for m in memories]
        gaps = torch.stack([activation_gap(out, side, mask) for side in sides])  # [M, B]
        bars = torch.tensor([m.min_gap * self.config.act_ratio for m in memories], device=x.device)[:, None]
        best, which = (gaps - bars).max(dim=0)
        return torch.where(best >= 0, which, torch.full_like(which, -1)), sides

    def score(self, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32,
              max_length: int | None = None) -> ScoreResult:
        """Teacher-forced scores; each row is routed on its question's tokens only."""
        if not self._handles:
            return super().score(prompts, targets, batch_size, max_length)

        def question_span(idx: list[int]) -> None:
            batch = self.model.encode_pairs([prompts[i] for i in idx], [targets[i] for i in idx], max_length)
            self._span = (batch.attention_mask.bool() & ~batch.target_mask).to(self.model.device)
            self._route = None

        self._scoring = True
        try:
            return score_with_hits(self.model, self._hits, prompts, targets, batch_size, max_length, question_span)
        finally:
            self._span, self._scoring = None, False

    def generate(self, texts: Sequence[str], max_new_tokens: int = 32, **kwargs: Any) -> list[str]:
        self._route = None
        try:
            return super().generate(texts, max_new_tokens, **kwargs)
        finally:
            self._route = None

    # ---- editing -----------------------------------------------------------------------------
    def _edit_one(self, record: EditRecord) -> None:
        cfg = self.config
        if self.count % cfg.save_freq == 0:  # a new shard: its own random mask
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.count)
            self.mask = torch.rand(self.base.shape, generator=generator) < cfg.mask_ratio
        question, answer = self.irrelevant[_digest(record.record_id) % len(self.irrelevant)]
        batch = self.model.encode_pairs([record.prompt, question], [record.target_new, answer]).to(self.model.device)
        span = batch.attention_mask.bool() & ~batch.target_mask
        span = past_prefix(span, self.prefix)  # [2, L] question tokens past the shared prefix
        weight = self._train(batch, span)
        self.current = weight
        self.current_gaps.append(self._edit_gap(batch, span, weight))
        self.count += 1
        if self.count % cfg.save_freq == 0:  # the shard is full: set aside, the next starts from W
            self.memories.append(SideMemory(self.current, min(self.current_gaps), len(self.current_gaps)))
            self.current, self.current_gaps = self.base.clone(), []
        if self.count % cfg.merge_freq == 0:
            n = cfg.merge_freq // cfg.save_freq
            shards, self.memories = self.memories[-n:], self.memories[:-n]
            merged = ties_merge(self.base, [s.weight for s in shards], cfg.density)
            self.memories.append(SideMemory(merged, min(s.min_gap for s in shards), sum(s.edits for s in shards)))

    def _train(self, batch: PairBatch, span: torch.Tensor) -> torch.Tensor:
        """SGD on W' for one edit (row 0) and its irrelevant question (row 1)."""
        cfg = self.config
        if self._shortcut is None:
            self._shortcut = check_partial_forward(self.model.lm, self.layer, batch.input_ids, batch.attention_mask)
        hidden = hidden_before(self.model.lm, self.layer, batch.input_ids, batch.attention_mask) if self._shortcut else None
        positions = prediction_positions(batch.target_mask)
        positions[1] = False  # the irrelevant question's answer is not trained
        labels = batch.input_ids[:, 1:][batch.target_mask[:, 1:]][: int(positions[0].sum())]
        weight = self.current.clone().requires_grad_(True)
        optimizer = torch.optim.SGD([weight], lr=cfg.lr)
        captured: dict[str, torch.Tensor] = {}
        grab = self.module.register_forward_pre_hook(lambda mod, args: captured.__setitem__("x", args[0]))
        self._training = weight
        try:
            for _ in range(cfg.steps):
                logits = logits_at(self.model, self.layer, batch, hidden, positions)  # [N, V]
                x = captured["x"]
                gap = activation_gap(F.linear(x, self.base), F.linear(x, weight), span)  # [2]
                act = (F.relu(gap[1] - cfg.alpha) + F.relu(cfg.beta - gap[0]) + F.relu(gap[1] - gap[0] + cfg.gamma))
                if bool((logits.argmax(-1) == labels).all()) and float(act.detach()) == 0.0:
                    break
                optimizer.zero_grad(set_to_none=True)
                (F.cross_entropy(logits.float(), labels) + act).backward()
                with torch.no_grad():  # EasyEdit's weight decay 1e-5, inside the shard's mask like the gradient
                    weight.grad.add_(weight, alpha=1e-5).mul_(self.mask.to(weight.grad.device))
                optimizer.step()
                if cfg.norm_constraint is not None:
                    with torch.no_grad():
                        weight.copy_(torch.clamp(weight, self.base - cfg.norm_constraint, self.base + cfg.norm_constraint))
        finally:
            self._training = None
            grab.remove()
        return weight.detach()

    @torch.no_grad()
    def _edit_gap(self, batch: PairBatch, span: torch.Tensor, weight: torch.Tensor) -> float:
        """The trained edit's gap on its own question (what the routing threshold is made of)."""
        saved, self._training = self._training, self.base  # the plain LM, only to read the projection's input
        try:
            x = module_input(self.model.lm, self.module, batch.input_ids[:1], batch.attention_mask[:1])
        finally:
            self._training = saved
        return float(activation_gap(F.linear(x, self.base), F.linear(x, weight), span[:1])[0])

    def restore(self) -> None:
        """Forget every edit and take the hooks off the LM: it answers as before, bit for bit."""
        self.memories: list[SideMemory] = []
        self.current = self.base.clone()
        self.current_gaps: list[float] = []
        self.mask = torch.zeros(self.base.shape, dtype=torch.bool)
        self.count = 0
        self.history: list[EditRecord] = []
        self._route = None
        self._attach(False)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """``folder/wise.safetensors`` (side memories, the shard in progress and its mask) and
        ``folder/wise.json``, swapped in as one folder."""
        tensors = {f"memory.{i}": m.weight.contiguous() for i, m in enumerate(self.memories)}
        tensors.update(current=self.current.contiguous(), mask=self.mask.contiguous())
        with atomic_folder(folder) as tmp:
            save_file(tensors, str(tmp / "wise.safetensors"))
            write_json(tmp / "wise.json", {
                "format": FORMAT, "config": asdict(self.config), "layer": self.layer, "count": self.count,
                "memories": [{"min_gap": m.min_gap, "edits": m.edits} for m in self.memories],
                "current_gaps": self.current_gaps,
                "history": self.history_json()})
        return Path(folder)

    def load(self, folder: str | os.PathLike[str]) -> None:
        """Replace the side memories with saved ones, refused by file and field if they do not fit."""
        folder = Path(folder)
        meta = read_checkpoint_meta(folder / "wise.json", FORMAT, "WISE memory")
        missing = [k for k in ("config", "layer", "count", "memories", "current_gaps", "history") if k not in meta]
        if missing:
            raise CheckpointError(f"{folder / 'wise.json'}: field(s) {missing} missing")
        if meta["layer"] != self.layer or meta["config"] != asdict(self.config):
            raise CheckpointError(f"{folder / 'wise.json'}: saved with other settings (layer {meta['layer']}, "
                                  f"config {meta['config']}) than this method's (layer {self.layer}, {asdict(self.config)})")
        tensors = read_tensors(folder / "wise.safetensors")
        names = [f"memory.{i}" for i in range(len(meta["memories"]))] + ["current", "mask"]
        absent = [n for n in names if n not in tensors]
        if absent or any(tensors[n].shape != self.base.shape for n in names):
            raise CheckpointError(f"{folder / 'wise.safetensors'}: tensors {absent or names} do not fit layer "
                                  f"{self.layer}'s {self.config.module} {tuple(self.base.shape)}")
        self.restore()
        self.memories = [SideMemory(tensors[f"memory.{i}"].to(self.base), m["min_gap"], m["edits"])
                         for i, m in enumerate(meta["memories"])]
        self.current, self.mask = tensors["current"].to(self.base), tensors["mask"].bool()
        self.current_gaps, self.count = list(meta["current_gaps"]), int(meta["count"])
        self.history = self.history_from_json(meta["history"])
        self._attach(bool(self._memories()))
