"""MEMIT: mass-editing MLP weights (Meng et al. 2023), written for any Llama-style HF LM.

For a batch of N edits:

1. the lookup position of each edit is the last prompt token;
2. a residual vector ``delta`` [N, H] added to the output of the last edited layer at that
   position is optimised so the LM predicts ``target_new`` (weight decay, norm clamp): the
   target hidden states are ``z = h + delta``;
3. layer by layer, the remaining gap ``(z - h_now) / layers_left`` is written into that
   layer's MLP output projection by the least-squares update
   ``dW = R K^T (w C + K K^T)^-1`` where K are the projection's inputs at the lookup
   positions and C = E[k k^T] is the covariance of those inputs over a medical text sample,
   computed once per (LM, layer) and cached as safetensors.

Simplifications against the official code (stated, not hidden): no random context prefixes
and no KL term while optimising ``delta``; the lookup token is the last prompt token (the
official code uses the last subject token, which MedVersa questions do not mark).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..data.records import EditRecord
from ..editor import EditedModel, PairBatch
from ..evaluate.metrics import prediction_positions
from ..io import atomic_path, read_tensors, write_json
from .base import ParameterEditingMethod
from .layers import check_partial_forward, decoder_layers, hidden_before, projection, run_from_layer

__all__ = ["MEMITConfig", "MEMITMethod", "projection_covariance"]


@dataclass
class MEMITConfig:
    layers: tuple[int, ...] | None = None  # None: 5 consecutive layers from 1/8 of the depth (LLaMA-7B: 4-8)
    module: str = "mlp.down_proj"
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    mom2_weight: float = 15000.0
    stats_texts: int = 1000  # texts of the medical sample used for the covariance
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = tuple(sorted(int(x) for x in self.layers))
            if not self.layers:
                raise ValueError("MEMITConfig.layers is empty")


def _lookup_positions(batch: PairBatch) -> torch.Tensor:
    """[B] index of each row's last prompt token (the one before its first target token)."""
    return batch.target_mask.float().argmax(1) - 1


def _capture_inputs(lm, modules: dict[str, torch.nn.Module]) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
    store: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: store.__setitem__(name, args[0]))
               for name, m in modules.items()]
    return store, lambda: [h.remove() for h in handles]


@torch.no_grad()
def projection_covariance(model: EditedModel, layers: Sequence[int], module: str, texts: Sequence[str],
                          batch_size: int = 16, progress: bool = False) -> dict[int, torch.Tensor]:
    """E[k k^T] [d_in, d_in] of each layer's projection input over all tokens of ``texts``."""
    from tqdm.auto import tqdm

    mods = {str(l): projection(model.lm, l, module) for l in layers}
    sums = {l: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for l, m in zip(layers, mods.values())}
    count = 0
    store, remove = _capture_inputs(model.lm, mods)
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="memit covariance", disable=not progress):
            batch = model.tokenizer(list(texts[start: start + batch_size]), return_tensors="pt", padding=True,
                                    truncation=True, max_length=128).to(model.device)
            model.lm.get_decoder()(**batch, use_cache=False)
            keep = batch["attention_mask"].bool()
            count += int(keep.sum())
            for l in layers:
                k = store[str(l)][keep].double().cpu()  # [tokens, d_in]
                sums[l] += k.T @ k
    finally:
        remove()
    return {l: (s / max(count, 1)).float() for l, s in sums.items()}


def _cache_key(lm_name: str, layer: int, module: str, texts: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in lm_name)
    return f"{safe}_L{layer}_{module.replace('.', '-')}_{len(texts)}_{digest}"


class MEMITMethod(ParameterEditingMethod):
    """MEMIT over ``config.layers``; covariance statistics from ``stats_texts`` (cached)."""

    name = "memit"

    def __init__(self, model: EditedModel, stats_texts: Sequence[str], config: MEMITConfig | None = None, *,
                 lm_name: str = "lm", cache_dir: str | os.PathLike[str] | None = None, progress: bool = False) -> None:
        super().__init__(model)
        self.config = config or MEMITConfig()
        n_layers = len(decoder_layers(model.lm))
        if self.config.layers is None:
            first = max(0, min(n_layers - 5, n_layers // 8))
            self.layers = tuple(range(first, min(n_layers - 1, first + 5)))  # the top layer is never edited
        else:
            self.layers = self.config.layers
        self.projections = {l: projection(model.lm, l, self.config.module) for l in self.layers}
        texts = [t for t in stats_texts if t.strip()][: self.config.stats_texts]
        if not texts:
            raise ValueError("MEMIT needs a non-empty text sample for its covariance statistics")
        self.covariance = self._load_or_compute(texts, lm_name, cache_dir, progress)
        self._shortcut: bool | None = None

    def _load_or_compute(self, texts, lm_name, cache_dir, progress) -> dict[int, torch.Tensor]:
        cache = Path(cache_dir) / "memit" if cache_dir else None
        out, missing = {}, []
        for l in self.layers:
            path = cache / f"{_cache_key(lm_name, l, self.config.module, texts)}.safetensors" if cache else None
            if path is not None and path.exists():
                out[l] = read_tensors(path)["covariance"]
            else:
                missing.append(l)
        if missing:
            fresh = projection_covariance(self.model, missing, self.config.module, texts, progress=progress)
            for l, cov in fresh.items():
                out[l] = cov
                if cache is not None:
                    key = _cache_key(lm_name, l, self.config.module, texts)
                    with atomic_path(cache / f"{key}.safetensors") as tmp:
                        save_file({"covariance": cov.contiguous()}, str(tmp))
                    write_json(cache / f"{key}.json", {"lm": lm_name, "layer": l, "module": self.config.module,
                                                       "texts": len(texts)})
        return out

    # ---- the edit ---------------------------------------------------------------------------------
    def _targets(self, batch: PairBatch, lookup: torch.Tensor) -> torch.Tensor:
        """Optimised hidden states z [N, H] at the lookup positions after the last edited layer."""
        cfg, last = self.config, self.layers[-1]
        lm, decoder = self.model.lm, self.model.lm.get_decoder()
        n_layers = len(decoder_layers(lm))
        rows = torch.arange(len(lookup), device=lookup.device)
        if self._shortcut is None:
            self._shortcut = last + 1 < n_layers and check_partial_forward(lm, last + 1, batch.input_ids, batch.attention_mask)
        if not self._shortcut:
            raise NotImplementedError("MEMIT here needs the hidden-state shortcut (edited layers below the top, "
                                      "a Llama-style decoder)")
        hidden = hidden_before(lm, last + 1, batch.input_ids, batch.attention_mask)  # [B, L, H]
        h = hidden[rows, lookup]  # [N, H]
        delta = torch.zeros_like(h, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=cfg.v_lr)
        positions = prediction_positions(batch.target_mask)
        labels = batch.input_ids[:, 1:][batch.target_mask[:, 1:]]
        owner = positions.nonzero()[:, 0]
        max_norm = cfg.clamp_norm_factor * h.norm(dim=-1, keepdim=True)  # [N, 1]
        for _ in range(cfg.v_steps):
            optimizer.zero_grad(set_to_none=True)
            edited = hidden.index_put((rows, lookup), h + delta)
            with run_from_layer(lm, last + 1):
                states = decoder(inputs_embeds=edited, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
            nll = F.cross_entropy(self.model.project(states[positions]).float(), labels, reduction="none")
            per_row = torch.zeros(len(rows), device=nll.device).index_add_(0, owner, nll) / torch.bincount(owner, minlength=len(rows)).clamp_min(1)
            decay = cfg.v_weight_decay * (delta.norm(dim=-1) / h.norm(dim=-1)).pow(2)
            (per_row + decay).mean().backward()
            optimizer.step()
            with torch.no_grad():
                delta.mul_(torch.clamp(max_norm / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12), max=1.0))
        return (h + delta).detach()

    @torch.no_grad()
    def _keys_and_hidden(self, batch: PairBatch, lookup: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection inputs [N, d_in] at ``layer`` and last-edited-layer outputs [N, H], now."""
        rows = torch.arange(len(lookup), device=lookup.device)
        store, remove = _capture_inputs(self.model.lm, {"k": self.projections[layer]})
        try:
            hidden = hidden_before(self.model.lm, self.layers[-1] + 1, batch.input_ids, batch.attention_mask)
        finally:
            remove()
        return store["k"][rows, lookup], hidden[rows, lookup]

    def edit(self, records: Sequence[EditRecord]) -> None:
        cfg = self.config
        batch = self.model.encode_pairs([r.prompt for r in records],
                                        [r.target_new for r in records]).to(self.model.device)
        lookup = _lookup_positions(batch)
        z = self._targets(batch, lookup)  # [N, H]
        for i, layer in enumerate(self.layers):
            keys, now = self._keys_and_hidden(batch, lookup, layer)  # [N, d_in], [N, H]
            resid = (z - now).double() / (len(self.layers) - i)  # [N, H]
            k = keys.double()
            a = cfg.mom2_weight * self.covariance[layer].double() + k.T @ k  # [d_in, d_in]
            update = resid.T @ torch.linalg.solve(a, k.T).T  # [H, d_in]
            weight = self._touch(f"memit.{layer}", self.projections[layer].weight)
            with torch.no_grad():
                weight.add_(update.to(weight.dtype))

    def describe(self) -> dict:
        return {"layers": list(self.layers), **{k: v for k, v in asdict(self.config).items() if k != "layers"}}
