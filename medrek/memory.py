"""EditMemory: stored edits, a FAISS inner-product index and the prototype-gated top-1 rule.

Each edit is stored as an id, its request, a key [d] and its prompt tokens [T, H] (computed once
at insertion). For a query q the score of a key is ``q . key / sqrt(d)``; the top-1 edit is used
only if its score beats the prototype's score ``q . p / sqrt(d)`` and, when set, a minimum
similarity. Otherwise nothing is retrieved and the LM runs exactly as unedited.

An :class:`EditMemory` is safe to share between threads: every mutation and every lookup runs
under one lock, so a reader sees the memory before or after a writer's ``add`` / ``remove``,
never in between (ids, keys, prompts and the index always agree row for row).
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import json

import faiss
import numpy as np
import torch
from safetensors.torch import save_file

from .io import CheckpointError, atomic_folder, file_sha256, read_checkpoint_meta, read_tensors, recover_folder, write_text

__all__ = ["MemoryConfig", "Retrieval", "Lookup", "Explanation", "EditMemory", "CheckpointError", "INDEX_KINDS",
           "build_index", "search"]

INDEX_KINDS = ("flat", "hnsw", "ivf")
FORMAT = "medrek.EditMemory/2"  # a folder: memory.json (config, ids, requests, checksum) + memory.safetensors


@dataclass
class MemoryConfig:
    key_dim: int
    n_tokens: int
    lm_hidden: int
    index: str = "flat"  # flat (exact IndexFlatIP) | hnsw | ivf (approximate)
    min_similarity: float | None = None  # gate on top-1 score, besides the prototype
    min_margin: float | None = None  # gate on top-1 score minus the prototype's (None: just beat it)
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0: about 4 sqrt(N) lists
    ivf_nprobe: int = 16
    ivf_train_iterations: int = 10  # k-means iterations when (re)training the IVF lists
    ivf_train_per_list: int = 64  # training sample: at most this many keys per list

    def __post_init__(self) -> None:
        if self.index not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.index!r}; choose one of {INDEX_KINDS}")


def build_index(config: MemoryConfig, keys: np.ndarray) -> faiss.Index:
    """The FAISS inner-product index of ``config.index`` holding ``keys`` [N, d].

    ``ivf`` (with at least 64 keys; fewer fall back to exact search) uses about 4 sqrt(N)
    lists, trained by k-means for ``ivf_train_iterations`` on at most ``ivf_train_per_list``
    keys per list (a seeded sample), as FAISS recommends; ``hnsw`` is a flat HNSW graph.
    """
    d = config.key_dim
    if config.index == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = config.hnsw_ef_search
    elif config.index == "ivf" and len(keys) >= 64:
        nlist = config.ivf_nlist or max(1, int(4 * math.sqrt(len(keys))))
        nlist = min(nlist, len(keys) // 39 or 1)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = config.ivf_train_iterations
        sample = keys
        if len(keys) > config.ivf_train_per_list * nlist:
            rows = np.random.default_rng(0).choice(len(keys), config.ivf_train_per_list * nlist, replace=False)
            sample = keys[np.sort(rows)]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = min(config.ivf_nprobe, nlist)
    else:
        index = faiss.IndexFlatIP(d)
    if len(keys):
        index.add(np.ascontiguousarray(keys))
    return index


_BLAS_THRESHOLD_LOCK = threading.Lock()


@contextmanager
def _blas_distances():
    """Let FAISS compute exact inner products with BLAS for any number of queries.

    FAISS (1.15) switches to BLAS only when ``n_queries * dim`` reaches
    ``distance_compute_blas_threshold`` (128,000); below it, it scans every key once per query.
    For 16-256 queries that is 2-5x slower on CPU than one BLAS product (bench/memory_scale.py),
    and retrieval batches are in that range. The threshold is a process-wide FAISS setting, so
    it is set for the duration of one search and then restored, under a lock so that searches
    from several threads cannot restore each other's value.
    """
    with _BLAS_THRESHOLD_LOCK:
        old = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 1
        try:
            yield
        finally:
            faiss.cvar.distance_compute_blas_threshold = old


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores [B, k], rows [B, k]) of ``queries`` [B, d] in ``index``, exact
    distances through BLAS (see ``_blas_distances``); -1 rows where fewer than k were found."""
    with _blas_distances():
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


@dataclass
class Retrieval:
    """Top-1 retrieval for a batch of queries; ``rows[i] == -1`` when nothing fires."""

    rows: torch.Tensor  # [B] long, row of the retrieved edit or -1
    top_rows: torch.Tensor  # [B] long, top-1 row whether or not it fired (-1 if memory empty)
    scores: torch.Tensor  # [B] top-1 score (-inf if memory empty)
    runner_up: torch.Tensor  # [B] second score (-inf if fewer than 2 edits)
    prototype_scores: torch.Tensor  # [B]

    @property
    def fired(self) -> torch.Tensor:
        return self.rows >= 0


@dataclass
class Lookup:
    """Retrieval plus what the LM consumes, taken from one consistent state of the memory."""

    retrieval: Retrieval
    prompts: torch.Tensor  # [B, T, H], zeros where nothing fired
    fired: torch.Tensor  # [B] bool
    ids: list[str | None]  # the edit that fired, else None
    requests: list[dict[str, Any] | None]  # its request, else None


@dataclass
class Explanation:
    """Why an edit fired or did not, for one query."""

    fired: bool
    edit_id: str | None
    top_edit_id: str | None
    score: float
    prototype_score: float
    runner_up_score: float
    min_similarity: float | None
    request: dict[str, Any] | None
    min_margin: float | None = None


class EditMemory:
    """Stored edits with a FAISS index; keys and prompts are kept as tensors too (for save/remove)."""

    def __init__(self, config: MemoryConfig, prototype_key: torch.Tensor) -> None:
        if prototype_key.shape != (config.key_dim,):
            raise CheckpointError(f"prototype key has shape {tuple(prototype_key.shape)}, expected ({config.key_dim},)")
        self.config = config
        self.prototype_key = prototype_key.detach().float().cpu()
        self.ids: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.keys = torch.zeros(0, config.key_dim)
        self.prompts = torch.zeros(0, config.n_tokens, config.lm_hidden)
        self._rows: dict[str, int] = {}
        self._index = self._new_index()
        self._lock = threading.RLock()  # around every mutation and every lookup
        self.owner: str | None = None  # fingerprint of the editor whose encoders made the keys and prompts

    # ---- bookkeeping ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, edit_id: str) -> bool:
        return str(edit_id) in self._rows

    def stored(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` already stored."""
        with self._lock:
            return [i for i in map(str, ids) if i in self._rows]

    def _new_index(self) -> faiss.Index:
        return build_index(self.config, np.zeros((0, self.config.key_dim), dtype=np.float32))

    def _rebuild(self) -> None:
        """Rebuild the index from ``self.keys`` (after removal; IVF also retrains here)."""
        self._index = build_index(self.config, self.keys.numpy().astype(np.float32, copy=False))

    # ---- editing -------------------------------------------------------------------------
    def add(self, ids: Sequence[str], keys: torch.Tensor, prompts: torch.Tensor,
            requests: Sequence[dict[str, Any]]) -> None:
        """Add edits: keys [N, d], prompts [N, T, H]. Ids must be new."""
        ids = [str(i) for i in ids]
        n, cfg = len(ids), self.config
        if keys.shape != (n, cfg.key_dim) or prompts.shape != (n, cfg.n_tokens, cfg.lm_hidden):
            raise ValueError(f"expected keys [{n}, {cfg.key_dim}] and prompts [{n}, {cfg.n_tokens}, "
                             f"{cfg.lm_hidden}], got {tuple(keys.shape)} and {tuple(prompts.shape)}")
        if len(requests) != n:
            raise ValueError(f"{n} ids but {len(requests)} requests")
        keys = keys.detach().float().cpu()
        prompts = prompts.detach().float().cpu()
        with self._lock:
            clash = {i for i, c in Counter(ids).items() if c > 1 or i in self._rows}
            if clash:
                raise ValueError(f"edit id(s) already stored or repeated: {sorted(clash)[:5]}")
            self._rows.update((i, len(self.ids) + r) for r, i in enumerate(ids))
            self.ids += ids
            self.requests += [dict(r) for r in requests]
            self.keys = torch.cat([self.keys, keys])
            self.prompts = torch.cat([self.prompts, prompts])
            if self.config.index == "ivf":
                self._rebuild()
            else:
                self._index.add(np.ascontiguousarray(keys.numpy()))

    def remove(self, ids: Sequence[str]) -> None:
        """Remove edits by id; the model then answers as before those edits."""
        ids = [str(i) for i in ids]
        with self._lock:
            missing = [i for i in ids if i not in self._rows]
            if missing:
                raise KeyError(f"no stored edit with id(s) {missing[:5]}")
            drop = {self._rows[i] for i in ids}
            keep = [r for r in range(len(self)) if r not in drop]
            self.ids = [self.ids[r] for r in keep]
            self._rows = {i: r for r, i in enumerate(self.ids)}
            self.requests = [self.requests[r] for r in keep]
            self.keys = self.keys[keep]
            self.prompts = self.prompts[keep]
            self._rebuild()

    def clear(self) -> None:
        with self._lock:
            self.remove(list(self.ids))

    # ---- retrieval -----------------------------------------------------------------------
    def retrieve(self, queries: torch.Tensor) -> Retrieval:
        """Prototype-gated top-1 retrieval for queries [B, d]."""
        with self._lock:
            return self._retrieve(queries)

    def _retrieve(self, queries: torch.Tensor) -> Retrieval:
        q = queries.detach().float().cpu()
        scale = 1.0 / math.sqrt(self.config.key_dim)
        proto = (q @ self.prototype_key) * scale  # [B]
        b = q.shape[0]
        if len(self) == 0:
            none = torch.full((b,), -1, dtype=torch.long)
            ninf = torch.full((b,), -math.inf)
            return Retrieval(none, none.clone(), ninf, ninf.clone(), proto)
        k = min(2, len(self))
        sims, rows = search(self._index, q.numpy(), k)  # [B, k]
        sims = torch.from_numpy(sims) * scale
        rows = torch.from_numpy(rows).long()
        top, top_rows = sims[:, 0], rows[:, 0]
        runner = sims[:, 1] if k > 1 else torch.full((b,), -math.inf)
        fire = (top > proto) & (top_rows >= 0)
        if self.config.min_similarity is not None:
            fire &= top >= self.config.min_similarity
        if self.config.min_margin is not None:
            fire &= top - proto >= self.config.min_margin
        return Retrieval(torch.where(fire, top_rows, -1), top_rows, top, runner, proto)

    def lookup(self, queries: torch.Tensor) -> Lookup:
        """Retrieval for queries [B, d] with the retrieved prompt tokens and edit ids, all read
        under the lock from one state of the memory (what :class:`~medrek.Editor` uses)."""
        with self._lock:
            r = self._retrieve(queries)
            prompts, fired = self.prompts_for(r)
            rows = r.rows.tolist()
            return Lookup(r, prompts, fired, [self.ids[k] if k >= 0 else None for k in rows],
                          [self.requests[k] if k >= 0 else None for k in rows])

    def prompts_for(self, retrieval: Retrieval) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt tokens [B, T, H] (zeros where nothing fired) and the fired mask [B]; the
        retrieval must come from this memory's current state (see :meth:`lookup`)."""
        fired = retrieval.fired
        rows = retrieval.rows.clamp_min(0)
        if len(self) == 0:
            return torch.zeros(len(rows), self.config.n_tokens, self.config.lm_hidden), fired
        return self.prompts[rows] * fired[:, None, None], fired

    def explain(self, query: torch.Tensor) -> Explanation:
        """Explain retrieval for one query vector [d] (``Editor.explain`` takes text)."""
        with self._lock:
            r = self._retrieve(query.reshape(1, -1))
            row, top = int(r.rows[0]), int(r.top_rows[0])
            return Explanation(
                fired=row >= 0,
                edit_id=self.ids[row] if row >= 0 else None,
                top_edit_id=self.ids[top] if top >= 0 else None,
                score=float(r.scores[0]),
                prototype_score=float(r.prototype_scores[0]),
                runner_up_score=float(r.runner_up[0]),
                min_similarity=self.config.min_similarity,
                request=self.requests[row] if row >= 0 else None,
                min_margin=self.config.min_margin,
            )

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the folder ``path``: ``memory.json`` (config, ids, requests, owner and the sha256
        of ``memory.safetensors``) and ``memory.safetensors`` (keys, prompts, prototype). Both
        are written into a temporary folder that replaces ``path`` by renames, so a crash or an
        error leaves the previous memory whole; values JSON cannot hold are refused first."""
        path = Path(path)
        with self._lock:
            tensors = {"keys": self.keys.contiguous(), "prompts": self.prompts.contiguous(),
                       "prototype_key": self.prototype_key.contiguous()}
            meta = {"format": FORMAT, "config": asdict(self.config), "ids": list(self.ids),
                    "requests": [dict(r) for r in self.requests], "owner": self.owner}
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: a stored request cannot be saved as JSON ({exc}); nothing was written") from None
        with atomic_folder(path) as tmp:
            save_file(tensors, str(tmp / "memory.safetensors"))
            meta["tensors_sha256"] = file_sha256(tmp / "memory.safetensors")
            write_text(tmp / "memory.json", json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, key_dim: int | None = None,
             n_tokens: int | None = None, lm_hidden: int | None = None) -> "EditMemory":
        """Load a saved memory folder; its tensors must match the checksum in its JSON, and
        optional expected sizes are checked against the file."""
        path = recover_folder(path)  # a save interrupted between its renames
        meta_path, tensor_path = path / "memory.json", path / "memory.safetensors"
        if not path.is_dir() and path.with_suffix(".json").exists():
            raise CheckpointError(f"{path.with_suffix('.json')}: an edit memory saved by an older medrek-kit (two loose "
                                  "files, no checksum); load it with that version and save it again")
        meta = read_checkpoint_meta(meta_path, FORMAT, "edit memory")
        config = MemoryConfig(**meta["config"])
        for name, want in (("key_dim", key_dim), ("n_tokens", n_tokens), ("lm_hidden", lm_hidden)):
            if want is not None and getattr(config, name) != want:
                raise CheckpointError(f"{meta_path}: {name} is {getattr(config, name)}, the model needs {want}")
        if not tensor_path.exists():
            raise CheckpointError(f"{tensor_path}: missing (its pair {meta_path} exists)")
        if file_sha256(tensor_path) != meta.get("tensors_sha256"):
            raise CheckpointError(f"{tensor_path}: sha256 differs from the one recorded in {meta_path}: "
                                  "the two files are not one saved memory")
        tensors = read_tensors(tensor_path)
        memory = cls(config, tensors["prototype_key"])
        n = len(meta["ids"])
        if tensors["keys"].shape != (n, config.key_dim) or tensors["prompts"].shape != (n, config.n_tokens, config.lm_hidden):
            raise CheckpointError(f"{tensor_path}: tensor shapes do not match {meta_path}")
        memory.ids, memory.requests = list(meta["ids"]), list(meta["requests"])
        memory._rows = {i: r for r, i in enumerate(memory.ids)}
        memory.keys, memory.prompts = tensors["keys"], tensors["prompts"]
        memory.owner = meta.get("owner")
        memory._rebuild()
        return memory
