"""Where edit keys and queries sit: the data behind the representation-overlap figure.

Saved as tidy tables by notebook 04 so notebook 05 plots without running a model.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch

from ..data.records import EditRecord

__all__ = ["pca_2d", "key_query_geometry"]


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """[N, d] -> [N, 2] principal-component coordinates with a fixed sign convention
    (each component's largest loading is positive), so reruns give identical points."""
    centred = x.double() - x.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    comps = vh[:2]  # [2, d]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    return (centred @ (comps * signs).T).float()


@torch.no_grad()
def key_query_geometry(editor, records: Sequence[EditRecord], method: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Edit keys (as the memory stores them) and rephrase queries of ``records``.

    Returns ``points`` (method, record_id, subject, kind key|query, x, y: a joint 2-D PCA) and
    ``margins`` (per record: own-key score, nearest wrong key's score, prototype score and
    ``margin`` = own - nearest wrong, scores q.k/sqrt(d) as retrieval uses them).
    """
    prompts, targets = [r.prompt for r in records], [r.target_new for r in records]
    keys = editor.edit_keys(prompts, targets).float()  # [N, d]
    queries = editor.encoder.query([r.rephrase for r in records]).float()  # [N, d]
    scale = 1.0 / math.sqrt(keys.shape[1])
    scores = queries @ keys.T * scale  # [N, N]
    own = scores.diagonal()
    wrong = scores.masked_fill(torch.eye(len(records), dtype=torch.bool), -math.inf).max(1).values
    proto = queries @ editor.encoder.prototype_key().float() * scale  # [N]
    xy = pca_2d(torch.cat([keys, queries]))
    n = len(records)
    points = pd.DataFrame({"method": method, "record_id": [r.record_id for r in records] * 2,
                           "subject": [r.subject for r in records] * 2, "kind": ["key"] * n + ["query"] * n,
                           "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist()})
    margins = pd.DataFrame({"method": method, "record_id": [r.record_id for r in records],
                            "subject": [r.subject for r in records], "own_score": own.tolist(),
                            "nearest_wrong_score": wrong.tolist(), "prototype_score": proto.tolist(),
                            "margin": (own - wrong).tolist()})
    return points, margins
