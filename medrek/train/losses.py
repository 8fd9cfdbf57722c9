"""Each term of MedREK's training objective as a small pure function.

Notation (one batch of B edits): ``K`` [B, d] the edit keys, ``p`` [d] the prototype key,
``scale = 1 / sqrt(d)``. Hinge masks follow the official code: a term is dropped for a row
(or token) whose probability already exceeds ``hinge_scale`` times the second-largest
probability of its distribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "contrastive_q1",
    "prototype_q2",
    "locality_q3",
    "hinge_token_nll_sum",
    "locality_kl_sum",
    "hinge_token_nll",
    "locality_kl",
]


def _hinge_nll(probs: torch.Tensor, target_prob: torch.Tensor, hinge_scale: float, eps: float) -> torch.Tensor:
    """Mean of -log(target_prob) over rows where it is not already > hinge_scale x runner-up."""
    second = probs.topk(2, dim=-1).values[..., 1]
    keep = target_prob < second * hinge_scale
    if not bool(keep.any()):
        return target_prob.sum() * 0.0  # zero, still attached to the graph
    return -torch.log(target_prob[keep] + eps).mean()


def contrastive_q1(queries: torch.Tensor, keys: torch.Tensor, prototype: torch.Tensor,
                   temperature: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """InfoNCE of q(query_i) against [K; p]; the positive is the record's own key K_i.

    queries, keys [B, d]; prototype [d].
    """
    scale = 1.0 / math.sqrt(keys.shape[1])
    logits = queries @ torch.cat([keys, prototype[None]]).T * scale  # [B, B + 1]
    probs = torch.softmax(logits * temperature, dim=1)
    return -torch.log(probs.diagonal() + eps).mean()


def prototype_q2(queries: torch.Tensor, keys: torch.Tensor, prototype: torch.Tensor,
                 temperature: float = 1.0, hinge_scale: float = 1.2, eps: float = 1e-8) -> torch.Tensor:
    """With its own key removed, a record's other query must retrieve the prototype.

    The prototype score takes the place of the own key on the diagonal of ``q . K^T``; a
    hinge-masked NLL pushes that diagonal entry up. queries, keys [B, d]; prototype [d].
    """
    scale = 1.0 / math.sqrt(keys.shape[1])
    B = keys.shape[0]
    eye = torch.eye(B, device=keys.device, dtype=keys.dtype)
    sims = (queries @ keys.T) * scale * (1 - eye) + torch.diag((queries @ prototype) * scale)  # [B, B]
    probs = torch.softmax(sims * temperature, dim=1)
    return _hinge_nll(probs, probs.diagonal(), hinge_scale, eps)


def locality_q3(queries: torch.Tensor, keys: torch.Tensor, prototype: torch.Tensor,
                temperature: float = 1.0, hinge_scale: float = 1.2, eps: float = 1e-8) -> torch.Tensor:
    """Locality queries must retrieve the prototype from [K; p] (hinge-masked NLL)."""
    scale = 1.0 / math.sqrt(keys.shape[1])
    probs = torch.softmax(queries @ torch.cat([keys, prototype[None]]).T * scale * temperature, dim=1)
    return _hinge_nll(probs, probs[:, -1], hinge_scale, eps)


def hinge_token_nll(logits: torch.Tensor, labels: torch.Tensor, hinge_scale: float = 1.2,
                    eps: float = 1e-8) -> torch.Tensor:
    """Hinge-masked token NLL: logits [N, V] at target positions, labels [N].

    Tokens whose probability already beats ``hinge_scale`` x the runner-up are dropped;
    the loss is the mean NLL of the remaining tokens (zero if none remain).
    """
    probs = torch.softmax(logits.float(), dim=-1)
    target = probs.gather(-1, labels[:, None])[:, 0]
    return _hinge_nll(probs, target, hinge_scale, eps)


def locality_kl(pre_logits: torch.Tensor, post_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(pre || post); both [N, V] at the locality positions."""
    log_pre = F.log_softmax(pre_logits.float(), dim=-1)
    log_post = F.log_softmax(post_logits.float(), dim=-1)
    return (log_pre.exp() * (log_pre - log_post)).sum(-1).mean()


def hinge_token_nll_sum(logits: torch.Tensor, labels: torch.Tensor, hinge_scale: float = 1.2,
                        eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the kept tokens' NLL, number kept): :func:`hinge_token_nll` is their quotient.

    For a mean over tokens spread over several processes, which divide by the global count."""
    probs = torch.softmax(logits.float(), dim=-1)
    target = probs.gather(-1, labels[:, None])[:, 0]
    second = probs.topk(2, dim=-1).values[..., 1] if len(probs) else target
    keep = target < second * hinge_scale
    return -torch.log(target[keep] + eps).sum() + target.sum() * 0.0, keep.sum()


def locality_kl_sum(pre_logits: torch.Tensor, post_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over positions of KL(pre || post), number of positions): :func:`locality_kl` is their quotient."""
    log_pre = F.log_softmax(pre_logits.float(), dim=-1)
    log_post = F.log_softmax(post_logits.float(), dim=-1)
    kl = (log_pre.exp() * (log_pre - log_post)).sum(-1)
    return kl.sum(), torch.tensor(len(kl), device=kl.device)
