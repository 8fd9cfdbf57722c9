"""GRACE: a codebook of hidden-state keys at one layer, each with a deferral radius
(Hartvigsen et al., "Aging with GRACE: Lifelong Model Editing with Discrete Key-Value Adaptors",
NeurIPS 2023; the defaults follow EasyEdit's GRACE hyper-parameters where SmolLM2 allows).

The LM's weights never change. One projection (``layers[layer].mlp.down_proj`` by default) is
wrapped by a forward hook::

    x  = the projection's input at a token                                   [d_in]
    k* = argmin_k |x - key_k|                                                 (Euclidean)
    out = value_k*  if |x - key_k*| <= radius_k*  else  W x                  [d_out]

An edit's key is the projection's input at the last token of its question (the token whose
output predicts the first answer token); its value is trained for ``steps`` Adam steps so that
the LM, with the value in place there, gives the target (stopping early once every target token
is the argmax). The codebook grows by the paper's rules: a key farther than
``radius + radius_k*`` from every stored key is added with radius ``radius``; a nearby key with
the *same* answer has its radius expanded to cover the new one ("coverage") and its value trained
on the new question too; a nearby key with *another* answer gets a new key beside it, and both
radii are set to half their distance ("split"), so that neither answers the other's question.

The rule is applied at every token: a question none of whose tokens comes within a radius runs
as the plain LM, bit for bit. ``remove(id)`` rebuilds the codebook from the remaining edits (each
edit's training is seeded by its id, so a rebuild gives what editing without it would have).
Saved as safetensors (keys, values, radii) plus a JSON list of edit ids and answers.
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

from ..data.records import EditRecord, fold_question
from ..editor import EditedModel, PairBatch, ScoreResult
from ..evaluate.metrics import prediction_positions
from ..io import CheckpointError, atomic_folder, read_checkpoint_meta, read_tensors, write_json
from .base import EditMethod, ReplayedEdits, score_with_hits
from .ft import default_layer
from .layers import check_partial_forward, decoder_layers, hidden_before, logits_at, module_input, projection

__all__ = ["GRACEConfig", "GRACEMethod", "Codebook"]

FORMAT = "medrek.GRACE/1"


@dataclass
class GRACEConfig:
    layer: int | None = None  # None: 80% of the depth (EasyEdit: layer 27 of LLaMA-2-7B's 32)
    module: str = "mlp.down_proj"
    radius: float = 1.0  # a new key's deferral radius (EasyEdit: eps 1.0); picked on validation
    steps: int = 50  # Adam steps per edit at most (EasyEdit: n_iter)
    lr: float = 1.0  # EasyEdit: edit_lr 1.0
    value_init: str = "cold"  # cold: uniform [0, 1) seeded by the edit id (EasyEdit); warm: the layer's own output
    expand: bool = True  # a same-answer key nearby expands its radius (False: always add a new key)

    def __post_init__(self) -> None:
        if not (self.radius > 0 and self.steps >= 1 and self.lr > 0):
            raise ValueError(f"GRACEConfig needs radius > 0, steps >= 1 and lr > 0, got {self}")
        if self.value_init not in ("cold", "warm"):
            raise ValueError(f"GRACEConfig.value_init must be 'cold' or 'warm', got {self.value_init!r}")


class Codebook(nn.Module):
    """Keys [K, d_in], values [K, d_out] and radii [K], with the edit id and folded answer of each."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(0, d_in))
        self.register_buffer("values", torch.zeros(0, d_out))
        self.register_buffer("radii", torch.zeros(0))
        self.ids: list[str] = []
        self.answers: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, key: torch.Tensor, value: torch.Tensor, radius: float, edit_id: str, answer: str) -> int:
        self.keys = torch.cat([self.keys, key.detach().reshape(1, -1).to(self.keys)])
        self.values = torch.cat([self.values, value.detach().reshape(1, -1).to(self.values)])
        self.radii = torch.cat([self.radii, self.radii.new_tensor([radius])])
        self.ids.append(edit_id)
        self.answers.append(answer)
        return len(self.ids) - 1

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to the nearest key [N] and its row [N] for inputs x [N, d_in]."""
        d = torch.cdist(x.float(), self.keys.float())  # [N, K]
        return d.min(dim=1)

    def apply(self, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``out`` [B, L, d_out] with the value of every token whose input x [B, L, d_in] lies
        within its nearest key's radius, and which tokens [B, L] those were."""
        if not len(self):
            return out, torch.zeros(out.shape[:-1], dtype=torch.bool, device=out.device)
        dist, row = self.nearest(x.reshape(-1, x.shape[-1]))  # [B*L]
        hit = (dist <= self.radii[row]).reshape(out.shape[:-1])  # [B, L]
        if not bool(hit.any()):
            return out, hit
        return torch.where(hit[..., None], self.values[row].reshape(out.shape).to(out.dtype), out), hit

    def state(self) -> dict[str, Any]:
        return {"keys": self.keys.clone(), "values": self.values.clone(), "radii": self.radii.clone(),
                "ids": list(self.ids), "answers": list(self.answers)}


def _seed(edit_id: str) -> int:
    return int(hashlib.sha256(edit_id.encode("utf-8")).hexdigest()[:8], 16)


class GRACEMethod(ReplayedEdits, EditMethod):
    """GRACE behind the kit's :class:`~medrek.baselines.base.EditMethod` interface (edits are
    applied one at a time, in order, as the method is defined)."""

    name = "grace"
    fires = True  # scores say which rows a key's radius caught

    def __init__(self, model: EditedModel, config: GRACEConfig | None = None) -> None:
        super().__init__(model)
        self.config = config or GRACEConfig()
        n_layers = len(decoder_layers(model.lm))
        self.layer = self.config.layer if self.config.layer is not None else default_layer(n_layers, 0.8)
        self.module = projection(model.lm, self.layer, self.config.module)
        self.codebook = Codebook(self.module.in_features, self.module.out_features).to(self.module.weight.device)
        self.history: list[EditRecord] = []
        self._forced: tuple[torch.Tensor, torch.Tensor] | None = None  # (position [B, L] bool, value [d_out]) while training
        self._shortcut: bool | None = None
        self._handle = None  # the hook is on the LM only while edits are held (the LM is shared with other methods)
        self._hits: list[torch.Tensor] = []  # per forward while scoring: which rows [B] a key caught
        self._scoring = False

    def identity(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "layer": self.layer}

    # ---- the hook ----------------------------------------------------------------------------
    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        out, hit = self.codebook.apply(inputs[0], out)
        if self._scoring:
            self._hits.append(hit.any(dim=1))
        if self._forced is not None:  # training a value: it replaces the output at the edit's key token
            where, value = self._forced
            out = torch.where(where[..., None], value.to(out.dtype), out)
        return out

    def _key(self, batch: PairBatch) -> torch.Tensor:
        """The projection's input at the last question token of a one-row batch [d_in]."""
        x = module_input(self.model.lm, self.module, batch.input_ids, batch.attention_mask)
        return x[self._key_position(batch)][0]

    @staticmethod
    def _key_position(batch: PairBatch) -> torch.Tensor:
        """[B, L] bool: the token whose output predicts the first target token, per row."""
        positions = prediction_positions(batch.target_mask)
        first = positions.float().argmax(dim=1)  # the first prediction position of each row
        return F.one_hot(first, positions.shape[1]).bool()

    def score(self, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32,
              max_length: int | None = None) -> ScoreResult:
        """Teacher-forced scores; ``fired`` marks the rows one of whose tokens a key's radius caught."""
        if self._handle is None:
            return super().score(prompts, targets, batch_size, max_length)
        self._scoring = True
        try:
            return score_with_hits(self.model, self._hits, prompts, targets, batch_size, max_length)
        finally:
            self._scoring = False

    # ---- editing -----------------------------------------------------------------------------
    def _attach(self, on: bool) -> None:
        if on and self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)
        elif not on and self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _edit_one(self, record: EditRecord) -> None:
        cfg, book = self.config, self.codebook
        batch = self.model.encode_pairs([record.prompt], [record.target_new]).to(self.model.device)
        key = self._key(batch)
        answer = fold_question(record.target_new)
        row = None
        if len(book):
            dist, nearest = (t.item() for t in book.nearest(key[None]))
            if dist <= cfg.radius + book.radii[nearest].item():  # within reach of a stored key
                if cfg.expand and book.answers[nearest] == answer:  # the same answer: cover the new question
                    book.radii[nearest] = max(book.radii[nearest].item(), dist)
                    row = nearest
                else:  # another answer: a new key beside it, both radii halved
                    book.radii[nearest] = dist / 2 - 1e-5
                    row = book.add(key, self._initial_value(batch, record.record_id), dist / 2, record.record_id, answer)
        if row is None:
            row = book.add(key, self._initial_value(batch, record.record_id), cfg.radius, record.record_id, answer)
        book.values[row] = self._train_value(batch, book.values[row].clone())

    @torch.no_grad()
    def _initial_value(self, batch: PairBatch, edit_id: str) -> torch.Tensor:
        if self.config.value_init == "cold":
            generator = torch.Generator().manual_seed(_seed(edit_id))
            return torch.rand(self.module.out_features, generator=generator)
        captured: list[torch.Tensor] = []
        handle = self.module.register_forward_hook(lambda mod, args, out: captured.append(out))
        try:
            self.model.lm.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        finally:
            handle.remove()
        return captured[0][self._key_position(batch)][0].float()

    def _train_value(self, batch: PairBatch, value: torch.Tensor) -> torch.Tensor:
        """Adam on the value at the key token until the target is the argmax everywhere (or ``steps``)."""
        if self._shortcut is None:
            self._shortcut = check_partial_forward(self.model.lm, self.layer, batch.input_ids, batch.attention_mask)
        hidden = hidden_before(self.model.lm, self.layer, batch.input_ids, batch.attention_mask) if self._shortcut else None
        labels = batch.input_ids[:, 1:][batch.target_mask[:, 1:]]  # [N]
        value = value.to(self.module.weight.device).float().requires_grad_(True)
        optimizer = torch.optim.Adam([value], lr=self.config.lr)
        self._forced = (self._key_position(batch), value)
        try:
            for _ in range(self.config.steps):
                logits = logits_at(self.model, self.layer, batch, hidden, prediction_positions(batch.target_mask))  # [N, V]
                if bool((logits.argmax(-1) == labels).all()):
                    break
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(logits.float(), labels).backward()
                optimizer.step()
        finally:
            self._forced = None
        return value.detach()

    def restore(self) -> None:
        """Forget every edit and take the hook off the LM: it answers as before, bit for bit."""
        self.codebook = Codebook(self.module.in_features, self.module.out_features).to(self.module.weight.device)
        self.history = []
        self._attach(False)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """``folder/grace.safetensors`` (keys, values, radii) and ``folder/grace.json`` (ids,
        answers, the edits in order), swapped in as one folder: a kill leaves the old save or the new."""
        book = self.codebook
        with atomic_folder(folder) as tmp:
            save_file({"keys": book.keys.contiguous(), "values": book.values.contiguous(), "radii": book.radii.contiguous()},
                      str(tmp / "grace.safetensors"))
            write_json(tmp / "grace.json", {
                "format": FORMAT, "config": asdict(self.config), "layer": self.layer, "ids": book.ids,
                "answers": book.answers,
                "history": self.history_json()})
        return Path(folder)

    def load(self, folder: str | os.PathLike[str]) -> None:
        """Replace the codebook with a saved one, refused by file and field if it does not fit."""
        folder = Path(folder)
        meta = read_checkpoint_meta(folder / "grace.json", FORMAT, "GRACE codebook")
        missing = [k for k in ("config", "layer", "ids", "answers", "history") if k not in meta]
        if missing:
            raise CheckpointError(f"{folder / 'grace.json'}: field(s) {missing} missing")
        if meta.get("layer") != self.layer or meta.get("config") != asdict(self.config):
            raise CheckpointError(f"{folder / 'grace.json'}: saved with other settings (layer {meta.get('layer')}, "
                                  f"config {meta.get('config')}) than this method's (layer {self.layer}, {asdict(self.config)})")
        tensors = read_tensors(folder / "grace.safetensors")
        book = Codebook(self.module.in_features, self.module.out_features)
        for name in ("keys", "values", "radii"):
            if name not in tensors:
                raise CheckpointError(f"{folder / 'grace.safetensors'}: tensor {name!r} is missing")
        if tensors["keys"].shape[1:] != book.keys.shape[1:] or tensors["values"].shape[1:] != book.values.shape[1:]:
            raise CheckpointError(f"{folder / 'grace.safetensors'}: keys {tuple(tensors['keys'].shape)} / values "
                                  f"{tuple(tensors['values'].shape)} do not fit layer {self.layer}'s {self.config.module}")
        n = len(meta["ids"])
        if not (len(tensors["keys"]) == len(tensors["values"]) == len(tensors["radii"]) == len(meta["answers"]) == n):
            raise CheckpointError(f"{folder}: {n} ids but {len(tensors['keys'])} keys; the files are from different saves")
        book.keys, book.values, book.radii = tensors["keys"], tensors["values"], tensors["radii"]
        book.ids, book.answers = list(meta["ids"]), list(meta["answers"])
        self.codebook = book.to(self.module.weight.device)
        self._attach(len(book) > 0)
        self.history = self.history_from_json(meta["history"])
