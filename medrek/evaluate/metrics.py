"""Metric functions on teacher-forced logits (pure, batched, unit-tested on hand-built tensors).

* efficacy / generality: token accuracy of ``target_new`` after the prompt / a rephrase, i.e. the
  fraction of target positions where the argmax equals the target token;
* locality: fraction of the locality answer's positions where the post-edit argmax equals the
  pre-edit argmax;
* Avg = (mean(efficacy, generality) + locality) / 2;
* fluency: weighted bi/tri-gram entropy (weights 2/3 and 4/3, bits) of generated text, as in
  the ROME/EasyEdit code. Words come from a regular expression instead of NLTK's punkt model
  (which needs a download); on plain English the two agree except for contractions.

All metrics are fractions in [0, 1]; tables that follow the official code multiply by 100 and
say so.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = ["TeacherForced", "prediction_positions", "token_scores", "per_row_scores", "teacher_forced",
           "teacher_forced_selected", "agreement", "avg_score", "ngram_entropy", "fluency", "bootstrap_ci"]


@dataclass
class TeacherForced:
    accuracy: torch.Tensor  # [B]
    nll: torch.Tensor  # [B]
    predictions: list[torch.Tensor]  # argmax token ids at the target positions, per row


def prediction_positions(target_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] mask of the positions whose logits predict a target token (one to the left)."""
    positions = torch.zeros_like(target_mask)
    positions[:, :-1] = target_mask[:, 1:]
    return positions


def token_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax token [N] and NLL of the label [N] from logits [N, V] at N prediction positions."""
    return logits.argmax(-1), F.cross_entropy(logits.float(), labels, reduction="none")


def per_row_scores(argmax: torch.Tensor, nll: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor,
                   n_rows: int) -> TeacherForced:
    """Per-row accuracy and mean NLL from per-position argmax [N], NLL [N] and labels [N];
    rows [N] says which row each position belongs to (sorted, as ``mask.nonzero()`` gives them)."""
    counts = torch.bincount(rows, minlength=n_rows)
    n = counts.clamp_min(1)
    hits = torch.zeros(n_rows, device=argmax.device).index_add_(0, rows, (argmax == labels).float())
    total = torch.zeros(n_rows, device=argmax.device).index_add_(0, rows, nll.float())
    return TeacherForced(accuracy=hits / n, nll=total / n,
                         predictions=list(torch.split(argmax.cpu(), counts.tolist())))


def teacher_forced_selected(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor,
                            n_rows: int) -> TeacherForced:
    """Per-row accuracy and NLL from logits at selected positions only.

    logits [N, V] and labels [N] at the N prediction positions; rows [N] says which row each
    position belongs to (sorted, as ``mask.nonzero()`` gives them).
    """
    return per_row_scores(*token_scores(logits, labels), labels, rows, n_rows)


def teacher_forced(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> TeacherForced:
    """Per-row token accuracy and mean NLL of the masked target tokens.

    logits [B, L, V] aligned with input_ids [B, L] (position t predicts token t + 1);
    target_mask [B, L] is True at target-token positions.
    """
    positions = prediction_positions(target_mask)
    rows = positions.nonzero()[:, 0]
    return teacher_forced_selected(logits[positions], input_ids[:, 1:][target_mask[:, 1:]], rows, len(input_ids))


def agreement(before: list[torch.Tensor], after: list[torch.Tensor]) -> torch.Tensor:
    """Per row, the fraction of positions where two argmax sequences agree (locality)."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} rows before but {len(after)} after")
    out = []
    for i, (a, b) in enumerate(zip(before, after)):
        if a.shape != b.shape:
            raise ValueError(f"row {i}: {tuple(a.shape)} positions before but {tuple(b.shape)} after")
        out.append((a == b).float().mean() if len(a) else torch.tensor(1.0))
    return torch.stack(out) if out else torch.zeros(0)


def avg_score(efficacy: float, generality: float, locality: float) -> float:
    """The paper's Avg: (mean(efficacy, generality) + locality) / 2."""
    return ((efficacy + generality) / 2 + locality) / 2


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of the n-gram entropies (bits) of ``text``'s words; 0 for empty text."""
    words = _WORD.findall(text)
    entropies = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        h = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        entropies.append(w * h)
    return sum(entropies) / len(entropies)


def fluency(texts: Sequence[str]) -> float:
    """Mean :func:`ngram_entropy` over generated texts (the paper's Fluency, unscaled)."""
    if not texts:
        raise ValueError("fluency needs at least one generated text")
    return sum(ngram_entropy(t) for t in texts) / len(texts)


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped), seeded
    (``scipy.stats.bootstrap``); values without spread give the value itself."""
    from scipy.stats import bootstrap

    x = np.asarray([v for v in values if pd.notna(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if np.all(x == x[0]):  # scipy refuses degenerate samples; every resample's mean is this value
        return float(x[0]), float(x[0])
    ci = bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                   rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)
