"""MedREK's training objective for one editor: every loss term of one batch.

* retrieval terms (``losses.contrastive_q1`` / ``prototype_q2`` / ``locality_q3``) on keys
  ``K`` (per the method preset), the prototype key and queries drawn per record from
  {prompt, rephrase};
* edit terms: the batch's prompt tokens prepended, hinge-masked NLL of ``target_new`` after the
  prompt (``edit_rel``) and after the rephrase (``edit_gen``);
* locality: KL(pre-edit || with the record's prompt tokens) on the locality answer positions.

All LM rows of a batch (prompt, rephrase and locality probes) go through one batched forward,
built from the rows tokenised once (``rows.TrainingRows``); the unedited LM's states on every
locality answer are computed once (``rows.LocalityReference``). With several processes
(``group``), this one computes the rows of its shard and its share of each token mean.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Sequence

import torch

from ..data.records import EditRecord
from ..evaluate.metrics import prediction_positions
from . import losses
from .parallel import SingleProcess
from .rows import LocalityReference, TrainingRows

if TYPE_CHECKING:
    from ..editor import Editor
    from .trainer import TrainConfig

__all__ = ["Objective"]


class Objective:
    """The loss terms of ``editor`` on batches of ``records`` (whose LM rows are ``rows``)."""

    def __init__(self, config: TrainConfig, editor: Editor, records: Sequence[EditRecord], rows: TrainingRows,
                 group: SingleProcess) -> None:
        self.config, self.editor, self.rows, self.group = config, editor, rows, group
        self._index_of = {id(r): i for i, r in enumerate(records)}
        self._reference: LocalityReference | None = None  # computed at the first use

    def weights(self) -> dict[str, float]:
        c = self.config
        return {"q1": c.weight_q1, "q2": c.weight_q2, "q3": c.weight_q3, "edit_rel": c.weight_edit_rel,
                "edit_gen": c.weight_edit_gen, "locality": c.weight_locality}

    def autocast(self):
        """bf16 autocast for the LM forward when ``precision`` is bf16."""
        if self.config.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.editor.model.device.type, dtype=torch.bfloat16)

    @property
    def reference(self) -> LocalityReference | None:
        """The unedited LM's states on every training locality answer (None: LMs whose logits
        are not a plain projection, which get a batched unedited forward per step instead)."""
        if self._reference is None and self.editor.model._plain_head:
            self._reference = LocalityReference.compute(self.editor.model, self.rows, autocast=self.autocast())
        return self._reference

    def indices(self, batch: Sequence[EditRecord]) -> torch.Tensor:
        """Positions of ``batch``'s records among the training records (their pre-tokenised rows)."""
        try:
            return torch.tensor([self._index_of[id(r)] for r in batch])
        except KeyError:
            raise ValueError("compute_losses takes records of this trainer's train_records "
                             "(their LM rows are tokenised when the trainer starts)") from None

    def losses(self, batch: Sequence[EditRecord], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Every loss term for one batch (each a scalar tensor attached to the graph)."""
        keys, prompt_tokens = self.editor.encode_edits([r.prompt for r in batch], [r.target_new for r in batch])
        out = self.retrieval_losses(batch, keys, generator)
        out.update(self.edit_losses(batch, prompt_tokens))
        return out

    def retrieval_losses(self, batch: Sequence[EditRecord], keys: torch.Tensor,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        """q1, q2, q3 for a batch with edit keys [B, d] (only the heads and prototype are involved)."""
        cfg, encoder = self.config, self.editor.encoder
        prompts = [r.prompt for r in batch]
        rephrases = [r.rephrase for r in batch]
        proto = encoder.prototype_key()  # [d]
        pick = torch.randint(0, 2, (len(batch),), generator=generator)
        q1_texts = [(p, r)[int(c)] for p, r, c in zip(prompts, rephrases, pick)]
        q2_texts = [(r, p)[int(c)] for p, r, c in zip(prompts, rephrases, pick)]
        out = {
            "q1": losses.contrastive_q1(encoder.query(q1_texts), keys, proto, cfg.temperature_query_key),
            "q2": losses.prototype_q2(encoder.query(q2_texts), keys, proto,
                                      cfg.temperature_query_prototype, cfg.contrastive_hinge),
        }
        probe_names = list(batch[0].locality)
        out["q3"] = sum(
            losses.locality_q3(encoder.query([r.locality[n].prompt for r in batch]), keys, proto,
                               cfg.temperature_query_prototype, cfg.contrastive_hinge)
            for n in probe_names
        )
        return out

    def edit_losses(self, batch: Sequence[EditRecord], prompt_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """edit_rel, edit_gen and locality with the batch's prompt tokens [B, T, H] prepended.

        One LM pass for all rows: prompt+target, rephrase+target, each locality probe, built
        from the pre-tokenised rows. With several processes, this one computes the rows of its
        shard of the records and its share of each token mean (see ``parallel``).
        """
        cfg, model, group = self.config, self.editor.model, self.group
        local = group.shard(len(batch))  # [b] positions in the batch
        idx = self.indices(batch)[local]
        B, n_probes = len(idx), len(self.rows.probes)
        pairs = self.rows.batch(idx)
        positions = prediction_positions(pairs.target_mask)  # [R, L]
        rows = positions.nonzero()[:, 0]  # [N] row of each prediction position
        labels = pairs.input_ids[:, 1:][pairs.target_mask[:, 1:]]  # [N]
        all_prompts = prompt_tokens[local.to(prompt_tokens.device)].repeat(2 + n_probes, 1, 1)  # row j: record j % B
        fired = torch.ones(len(all_prompts), dtype=torch.bool, device=model.device)
        rel, gen, loc = rows < B, (rows >= B) & (rows < 2 * B), rows >= 2 * B  # [N] masks
        with self.autocast():
            logits = model.forward_bucketed(pairs.input_ids, pairs.attention_mask, all_prompts, fired,
                                            positions, rows_per_chunk=cfg.rows_per_chunk)
            pre = self._unedited_logits(idx, pairs, positions, range(2 * B, (2 + n_probes) * B))
        post = logits[loc]
        probe_of = (rows[loc] - 2 * B) // B  # which probe each locality position belongs to
        if group.world_size == 1:  # the token means of the objective, as the paper writes them
            return {"edit_rel": losses.hinge_token_nll(logits[rel], labels[rel], cfg.edit_hinge),
                    "edit_gen": losses.hinge_token_nll(logits[gen], labels[gen], cfg.edit_hinge),
                    "locality": sum(losses.locality_kl(pre[probe_of == k], post[probe_of == k])
                                    for k in range(n_probes))}
        out = {"edit_rel": self._global_mean(*losses.hinge_token_nll_sum(logits[rel], labels[rel], cfg.edit_hinge)),
               "edit_gen": self._global_mean(*losses.hinge_token_nll_sum(logits[gen], labels[gen], cfg.edit_hinge))}
        out["locality"] = sum(self._global_mean(*losses.locality_kl_sum(pre[probe_of == k], post[probe_of == k]))
                              for k in range(n_probes))
        return out

    def _global_mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """This process's share of a mean over every process's items: ``total`` / the global
        count, times the world size (gradients are then averaged over processes)."""
        everywhere = self.group.sum(count.float())
        return total / everywhere.clamp_min(1) * self.group.world_size

    @torch.no_grad()
    def _unedited_logits(self, idx: torch.Tensor, pairs, positions: torch.Tensor,
                         row_ids: Sequence[int]) -> torch.Tensor:
        """Unedited logits at the locality prediction positions of records ``idx`` (rows
        ``row_ids`` of ``pairs``), probe by probe: projected from the states computed once
        (``reference``), or a batched forward for LMs without a plain output projection."""
        model = self.editor.model
        if self.reference is None:
            rows = list(row_ids)
            return model(pairs.input_ids[rows], pairs.attention_mask[rows], positions=positions[rows])
        return model.project(self.reference.gather(idx))
