"""Masked pooling over token states, shared by the knowledge encoder and sentence embeddings."""

from __future__ import annotations

import torch

__all__ = ["masked_mean", "masked_max", "masked_min", "sentence_embeddings"]


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """states [B, L, H], mask [B, L] (1 = token) -> [B, H]."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """states [B, L, H], mask [B, L] -> [B, H]; padding never wins."""
    return states.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(states.dtype).min).amax(1)


def masked_min(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """states [B, L, H], mask [B, L] -> [B, H]; padding never wins."""
    return states.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(states.dtype).max).amin(1)


@torch.no_grad()
def sentence_embeddings(model, tokenizer, texts: list[str], batch_size: int = 128,
                        max_length: int = 128, progress: bool = False) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings [N, H] (the sentence-transformers recipe).

    Texts are batched by length (less padding, same results) and returned in input order.
    """
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), model.config.hidden_size)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="embedding", disable=not progress):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(model.device)
        states = model(**batch).last_hidden_state  # [b, L, H]
        pooled = torch.nn.functional.normalize(masked_mean(states, batch["attention_mask"]), dim=-1)
        out[idx] = pooled.float().cpu()
    return out
