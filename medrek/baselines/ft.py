"""FT-L: constrained fine-tuning of one MLP projection on the edit targets (Zhu et al. 2020,
as configured in ROME/EasyEdit: one layer's ``mlp.down_proj``, Adam, 25 steps, lr 5e-4,
every weight kept within ``norm_constraint`` of its value before the edit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.records import EditRecord
from ..editor import EditedModel, PairBatch
from ..evaluate.metrics import prediction_positions
from .base import ParameterEditingMethod
from .layers import check_partial_forward, decoder_layers, hidden_before, logits_at, projection

__all__ = ["FTConfig", "FTLMethod", "default_layer"]


def default_layer(n_layers: int, fraction: float) -> int:
    return min(n_layers - 1, max(0, round(fraction * n_layers)))


@dataclass
class FTConfig:
    layer: int | None = None  # None: two thirds of the depth (EasyEdit: layer 21 of LLaMA's 32)
    module: str = "mlp.down_proj"
    steps: int = 25
    lr: float = 5e-4
    norm_constraint: float | None = 5e-4  # max |W - W_before| per weight; None: unconstrained
    rows_per_chunk: int = 32  # rows per forward/backward (gradients are accumulated)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.rows_per_chunk < 1:
            raise ValueError(f"FTConfig needs steps >= 1, lr > 0 and rows_per_chunk >= 1, got {self}")


def target_nll(model: EditedModel, batch: PairBatch, hidden: torch.Tensor | None, layer: int,
               reduce: bool = True) -> torch.Tensor:
    """Mean over rows of the mean target-token NLL (per row [B] unless ``reduce``); from
    ``hidden`` entering ``layer`` when given."""
    positions = prediction_positions(batch.target_mask)
    logits = logits_at(model, layer, batch, hidden, positions)  # [N, V]
    labels = batch.input_ids[:, 1:][batch.target_mask[:, 1:]]
    rows = positions.nonzero()[:, 0]
    nll = F.cross_entropy(logits.float(), labels, reduction="none")
    per_row = torch.zeros(len(batch.input_ids), device=nll.device).index_add_(0, rows, nll)
    per_row = per_row / torch.bincount(rows, minlength=len(per_row)).clamp_min(1)
    return per_row.mean() if reduce else per_row


class FTLMethod(ParameterEditingMethod):
    """Fine-tune ``layers[layer].<module>`` on (prompt, target_new) of the edits."""

    name = "ft-l"

    def __init__(self, model: EditedModel, config: FTConfig | None = None) -> None:
        super().__init__(model)
        self.config = config or FTConfig()
        n_layers = len(decoder_layers(model.lm))
        self.layer = self.config.layer if self.config.layer is not None else default_layer(n_layers, 2 / 3)
        self.weight = projection(model.lm, self.layer, self.config.module).weight
        self._shortcut: bool | None = None  # whether hidden_before/run_from_layer is exact here
        self._prepared: dict[tuple[str, ...], torch.Tensor] = {}  # block ids -> weight delta

    def _chunks(self, records: Sequence[EditRecord]) -> list[PairBatch]:
        size = self.config.rows_per_chunk
        return [self.model.encode_pairs([r.prompt for r in records[i: i + size]],
                                        [r.target_new for r in records[i: i + size]]).to(self.model.device)
                for i in range(0, len(records), size)]

    def _hidden(self, chunks: list[PairBatch]) -> list[torch.Tensor | None]:
        """Hidden states entering the edited layer per chunk (None: the shortcut is not exact
        for this LM, so every step runs the full forward)."""
        if self._shortcut is None:
            self._shortcut = check_partial_forward(self.model.lm, self.layer, chunks[0].input_ids, chunks[0].attention_mask)
        return [hidden_before(self.model.lm, self.layer, c.input_ids, c.attention_mask) if self._shortcut else None
                for c in chunks]

    def prepare(self, blocks: Sequence[Sequence[EditRecord]]) -> None:
        """Fine-tune the weight deltas of several independent blocks at once (each block as if
        edited alone from the current weights); ``edit`` of a prepared block then only applies
        its delta. Adam and the box constraint act per weight, so the blocks do not interact:
        this is the same optimisation as one ``edit`` per block, with the LM's weights read
        once per step for all blocks instead of once per block."""
        cfg = self.config
        blocks = [list(b) for b in blocks if b]
        if len(blocks) < 2:
            return
        rows = [r for b in blocks for r in b]
        owner = torch.tensor([g for g, b in enumerate(blocks) for _ in b])
        chunks = self._chunks(rows)
        hidden = self._hidden(chunks)
        module = projection(self.model.lm, self.layer, self.config.module)
        deltas = torch.zeros(len(blocks), *self.weight.shape, device=self.weight.device, requires_grad=True)  # [G, out, in]
        optimizer = torch.optim.Adam([deltas], lr=cfg.lr)
        current: dict[str, torch.Tensor] = {}
        handle = module.register_forward_hook(
            lambda mod, inp, out: out + torch.einsum("bli,boi->blo", inp[0], deltas[current["rows"]]))
        sizes = torch.tensor([len(b) for b in blocks], dtype=torch.float)
        try:
            for _ in range(cfg.steps):
                optimizer.zero_grad(set_to_none=True)
                start = 0
                for c, h in zip(chunks, hidden):
                    n = len(c.input_ids)
                    current["rows"] = owner[start: start + n]
                    # each block's loss is the mean over its own rows, as in ``edit``
                    per_row = target_nll(self.model, c, h, self.layer, reduce=False)
                    (per_row / sizes[current["rows"]]).sum().backward()
                    start += n
                optimizer.step()
                if cfg.norm_constraint is not None:
                    with torch.no_grad():
                        deltas.clamp_(-cfg.norm_constraint, cfg.norm_constraint)
        finally:
            handle.remove()
        self._prepared = {self._key(b): d for b, d in zip(blocks, deltas.detach())}

    @staticmethod
    def _key(records: Sequence[EditRecord]) -> tuple[str, ...]:
        return tuple(r.record_id for r in records)

    def edit(self, records: Sequence[EditRecord]) -> None:
        prepared = self._prepared.pop(self._key(records), None)
        if prepared is not None and not self._originals:
            weight = self._touch("ft.weight", self.weight)
            with torch.no_grad():
                weight.add_(prepared)
            return
        cfg = self.config
        chunks = self._chunks(records)
        hidden = self._hidden(chunks)
        weight = self._touch("ft.weight", self.weight)
        before = weight.detach().clone()
        optimizer = torch.optim.Adam([weight], lr=cfg.lr)
        weight.requires_grad_(True)
        try:
            for _ in range(cfg.steps):
                optimizer.zero_grad(set_to_none=True)
                for c, h in zip(chunks, hidden):
                    loss = target_nll(self.model, c, h, self.layer) * len(c.input_ids) / len(records)
                    loss.backward()
                optimizer.step()
                if cfg.norm_constraint is not None:
                    with torch.no_grad():
                        weight.copy_(torch.clamp(weight, before - cfg.norm_constraint, before + cfg.norm_constraint))
        finally:
            weight.requires_grad_(False)
            weight.grad = None
