"""The training records' LM rows, tokenised once, and their unedited locality states, computed once.

A training step feeds the LM, for each of its B records, the prompt + target row, the rephrase +
target row and one row per locality probe. :class:`TrainingRows` tokenises all of them when the
trainer starts and builds a step's batch by indexing (no tokenizer and no Python loop over rows
in the step). :class:`LocalityReference` holds the frozen LM's final hidden states at every
probe's answer positions, computed up front in batches of rows of equal length (no padding, so
each row's states are exactly those of a forward of that row alone, on CPU bit for bit), and
gathers a step's in one indexing operation.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Sequence

import torch
import torch.nn.functional as F

from ..data.records import EditRecord
from ..editor import EditedModel, PairBatch
from ..evaluate.metrics import prediction_positions
from ..methods import edit_text

__all__ = ["TokenRows", "TrainingRows", "LocalityReference", "warm_feature_cache"]


@dataclass
class TokenRows:
    """One kind of row (e.g. prompt + target) for every record, right-padded."""

    input_ids: torch.Tensor  # [N, L]
    target_mask: torch.Tensor  # [N, L] bool
    lengths: torch.Tensor  # [N]

    @classmethod
    def tokenise(cls, model: EditedModel, prompts: Sequence[str], targets: Sequence[str]) -> "TokenRows":
        batch = model.encode_pairs(prompts, targets)  # a row's ids do not depend on the other rows
        return cls(batch.input_ids, batch.target_mask, batch.attention_mask.sum(1))

    def to(self, device: torch.device | str) -> "TokenRows":
        return TokenRows(self.input_ids.to(device), self.target_mask.to(device), self.lengths.to(device))


class TrainingRows:
    """Every training record's rows: ``rel`` (prompt + target), ``gen`` (rephrase + target) and
    one kind per locality probe name, in that order."""

    def __init__(self, model: EditedModel, records: Sequence[EditRecord], device: torch.device | str = "cpu") -> None:
        self.probes = list(records[0].locality)
        self.pad_id = model.tokenizer.pad_token_id
        targets = [r.target_new for r in records]
        kinds = {"rel": TokenRows.tokenise(model, [r.prompt for r in records], targets),
                 "gen": TokenRows.tokenise(model, [r.rephrase for r in records], targets)}
        for name in self.probes:
            kinds[name] = TokenRows.tokenise(model, [r.locality[name].prompt for r in records],
                                             [r.locality[name].answer for r in records])
        self.kinds = {k: v.to(device) for k, v in kinds.items()}
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.kinds["rel"].lengths)

    def batch(self, idx: torch.Tensor) -> PairBatch:
        """The rows of records ``idx`` [B]: all rel rows, all gen rows, then each probe's rows;
        padded to the longest, exactly as ``encode_pairs`` pads the same texts."""
        idx = idx.to(self.device)
        lengths = torch.cat([k.lengths[idx] for k in self.kinds.values()])  # [R]
        width = int(lengths.max())
        ids, targets = [], []
        for k in self.kinds.values():
            block, mask = k.input_ids[idx, :width], k.target_mask[idx, :width]
            extra = width - block.shape[1]
            ids.append(F.pad(block, (0, extra), value=self.pad_id) if extra else block)
            targets.append(F.pad(mask, (0, extra), value=False) if extra else mask)
        attention = (torch.arange(width, device=self.device)[None, :] < lengths[:, None]).long()
        return PairBatch(torch.cat(ids), attention, torch.cat(targets))


class LocalityReference:
    """The unedited LM's final hidden states [P, H] at every probe row's answer positions."""

    def __init__(self, hidden: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor) -> None:
        self.hidden = hidden  # [P, H]
        self.offsets = offsets  # [K, N] first position of (probe k, record i)
        self.counts = counts  # [K, N]

    @classmethod
    @torch.no_grad()
    def compute(cls, model: EditedModel, rows: TrainingRows, batch_rows: int = 64,
                autocast: ContextManager[Any] | None = None) -> "LocalityReference":
        """One pass over every probe row, in batches of rows of one length (no padding)."""
        per_row: dict[tuple[int, int], torch.Tensor] = {}
        for k, name in enumerate(rows.probes):
            kind = rows.kinds[name]
            lengths = kind.lengths.cpu()
            for n in sorted(set(lengths.tolist())):
                same = (lengths == n).nonzero()[:, 0]
                for start in range(0, len(same), batch_rows):
                    group = same[start: start + batch_rows].to(kind.input_ids.device)
                    ids = kind.input_ids[group, :n]
                    positions = prediction_positions(kind.target_mask[group, :n])
                    with autocast or nullcontext():
                        states = model.final_hidden(ids, torch.ones_like(ids), positions)  # [sum, H]
                    for i, piece in zip(group.tolist(), torch.split(states, positions.sum(1).tolist())):
                        per_row[(k, i)] = piece
        n_records = len(rows)
        order = [(k, i) for k in range(len(rows.probes)) for i in range(n_records)]
        counts = torch.tensor([len(per_row[key]) for key in order]).view(len(rows.probes), n_records)
        offsets = (counts.flatten().cumsum(0) - counts.flatten()).view_as(counts)
        hidden = torch.cat([per_row[key] for key in order])
        return cls(hidden, offsets.to(hidden.device), counts.to(hidden.device))

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """States [N, H] for records ``idx`` [B], probe by probe (the order of the step's rows)."""
        idx = idx.to(self.offsets.device)
        starts = self.offsets[:, idx].flatten()  # [K * B]
        counts = self.counts[:, idx].flatten()
        total = int(counts.sum())
        first = torch.repeat_interleave(starts - (counts.cumsum(0) - counts), counts)  # [total]
        return self.hidden[first + torch.arange(total, device=first.device)]


def warm_feature_cache(encoder, records: Sequence[EditRecord], valid_size: int) -> None:
    """Pooled features of every training text of ``records`` in ``encoder``'s cache, computed
    once in one fixed order (a frozen backbone: the retrieval side then costs only the heads).
    The cache is made to hold them all and ``valid_size`` validation records' texts: otherwise
    its least-recently-used eviction would recompute features every epoch."""
    texts = set()
    for r in records:
        texts.update([r.prompt, r.rephrase, edit_text(r.prompt, r.target_new)])
        texts.update(p.prompt for p in r.locality.values())
    ordered = sorted(texts, key=lambda t: (len(t), t))
    encoder.cache_capacity = max(encoder.cache_capacity, len(ordered) + 8 * valid_size)
    for start in range(0, len(ordered), 256):
        encoder.features(ordered[start: start + 256])
