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
from ..editor import EditedModel, PairBatch, encode_pairs
from ..evaluate.metrics import prediction_positions
from .base import ParameterEditingMethod
from .layers import check_partial_forward, decoder_layers, hidden_before, projection, run_from_layer

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


def target_nll(model: EditedModel, batch: PairBatch, hidden: torch.Tensor | None, layer: int) -> torch.Tensor:
    """Mean over rows of the mean target-token NLL; from ``hidden`` entering ``layer`` when given."""
    decoder = model.lm.get_decoder()
    if hidden is not None:
        with run_from_layer(model.lm, layer):
            states = decoder(inputs_embeds=hidden, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
    else:
        states = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
    positions = prediction_positions(batch.target_mask)
    logits = model.project(states[positions])  # [N, V]
    labels = batch.input_ids[:, 1:][batch.target_mask[:, 1:]]
    rows = positions.nonzero()[:, 0]
    nll = F.cross_entropy(logits.float(), labels, reduction="none")
    per_row = torch.zeros(len(batch.input_ids), device=nll.device).index_add_(0, rows, nll)
    return (per_row / torch.bincount(rows, minlength=len(per_row)).clamp_min(1)).mean()


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

    def edit(self, records: Sequence[EditRecord]) -> None:
        cfg = self.config
        tok = self.model.tokenizer
        chunks = []
        for start in range(0, len(records), cfg.rows_per_chunk):
            part = records[start: start + cfg.rows_per_chunk]
            chunks.append(encode_pairs(tok, [r.prompt for r in part], [r.target_new for r in part]).to(self.model.device))
        if self._shortcut is None:
            self._shortcut = check_partial_forward(self.model.lm, self.layer, chunks[0].input_ids, chunks[0].attention_mask)
        hidden = [hidden_before(self.model.lm, self.layer, c.input_ids, c.attention_mask) if self._shortcut else None
                  for c in chunks]
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
