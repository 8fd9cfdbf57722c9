"""EditMemory: stored edits, their keys and prompts, a FAISS inner-product index, and persistence.

Each edit is stored as an id, its request, a key [d] and what makes its prompt: the prompt
tokens [T, H] themselves (``prompt_store="vectors"``, computed once at insertion), or, for prompt
encoders whose prompt is a function of the edit's LM tokens (``medrek-lm-embedding``), those
token ids alone (``prompt_store="token_ids"``: a few hundred bytes instead of T x H floats); the
editor's ``build_prompts`` then makes the prompts of the rows that fired, at lookup time, each
as long as its own edit. With the exact ``flat`` index the keys are held once, as a tensor
searched by one matrix product; ``hnsw`` and ``ivf`` keep a FAISS index next to them.

The memory finds each query's top keys by score (``q . key / sqrt(d)``, the paper's, or the
cosine) and keeps the folded prompt of every edit for ``exact_match``; what fires among those
candidates (the prototype gate, a minimum similarity or margin, the verifier's second look,
exact match) is the retrieval policy's to decide: :mod:`medrek.retrieval`, one small object per
gate. When nothing fires the LM runs exactly as unedited.

An :class:`EditMemory` is safe to share between threads: every mutation and every lookup runs
under one lock, so a reader sees the memory before or after a writer's ``add`` / ``remove``,
never in between (ids, keys, prompts and the index always agree row for row).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import json

import faiss
import numpy as np
import torch
from safetensors.torch import save_file

from .data.records import fold_question
from .io import (CheckpointError, atomic_folder, file_sha256, folder_lock, read_checkpoint_meta, read_tensors,
                 recover_folder, writable, write_text)
from .retrieval import Explanation, Lookup, Retrieval, RetrievalPolicy, Verify, unit_rows

__all__ = ["MemoryConfig", "Retrieval", "Lookup", "Explanation", "EditMemory", "CheckpointError", "INDEX_KINDS",
           "SCORES", "PROMPT_STORES", "TokenRows", "build_index", "search", "fold_question", "read_memory",
           "write_memory"]

INDEX_KINDS = ("flat", "hnsw", "ivf")
SCORES = ("dot", "cosine")
PROMPT_STORES = ("vectors", "token_ids")
SEARCH_CHUNK = 64  # queries per matrix product in exact search: [64, N] scores at a time
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
    score: str = "dot"  # dot: q.k / sqrt(d) (the paper) | cosine: q.k / (|q| |k|)
    exact_match: bool = False  # a question equal to a stored prompt (case, spacing folded) fires that edit
    prototype_gate: bool = True  # fire only if the top-1 beats the prototype's score
    verify_k: int = 0  # 0: no second look; else the verifier reads the top verify_k candidates
    min_verified: float = 0.5  # the verifier's probability a candidate needs to fire
    prompt_store: str = "vectors"  # vectors: prompt tokens [T, H] per edit | token_ids: the edit's LM token ids

    def __post_init__(self) -> None:
        if self.prompt_store not in PROMPT_STORES:
            raise ValueError(f"unknown prompt_store {self.prompt_store!r}; choose one of {PROMPT_STORES}")
        if self.index not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.index!r}; choose one of {INDEX_KINDS}")
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose one of {SCORES}")
        if not isinstance(self.verify_k, int) or self.verify_k < 0:
            raise ValueError(f"verify_k must be an integer >= 0, got {self.verify_k!r}")
        if not 0.0 <= float(self.min_verified) <= 1.0:
            raise ValueError(f"min_verified must be a probability in [0, 1], got {self.min_verified!r}")


BuildPrompts = Callable[[Sequence[torch.Tensor]], torch.Tensor]  # B edits' token ids -> prompt tokens [B, T, H]


@dataclass
class TokenRows:
    """Ragged rows of token ids: row i is ``ids[offsets[i]:offsets[i + 1]]`` (int32 [M], int64 [N + 1])."""

    ids: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def empty(cls) -> "TokenRows":
        return cls(torch.zeros(0, dtype=torch.int32), torch.zeros(1, dtype=torch.long))

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> "TokenRows":
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        flat = torch.tensor([t for r in rows for t in r], dtype=torch.int32)
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> torch.Tensor:
        return self.ids[int(self.offsets[i]): int(self.offsets[i + 1])]

    def cat(self, other: "TokenRows") -> "TokenRows":
        return TokenRows(torch.cat([self.ids, other.ids]), torch.cat([self.offsets, other.offsets[1:] + self.offsets[-1]]))

    def select(self, rows: Sequence[int]) -> "TokenRows":
        return TokenRows.from_lists([self.row(i).tolist() for i in rows]) if len(rows) else TokenRows.empty()

    def check(self, where: str) -> None:
        """Offsets start at 0, never decrease and end at the number of ids."""
        o = self.offsets
        if o.dim() != 1 or len(o) < 1 or int(o[0]) != 0 or int(o[-1]) != len(self.ids) or bool((o[1:] < o[:-1]).any()):
            raise CheckpointError(f"{where}: token offsets do not describe the stored token ids")


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


def content_sha256(meta: dict[str, Any]) -> str:
    """sha256 of a memory.json's content (every field but this checksum), canonically serialised."""
    body = {k: v for k, v in meta.items() if k != "content_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_memory_meta(meta: dict[str, Any], where: Path) -> None:
    """Refuse a memory.json whose content was changed after its save (``content_sha256``; files
    saved before it have none) or whose fields do not have their types, naming the field."""
    from .config import check_settings

    if "content_sha256" in meta and meta["content_sha256"] != content_sha256(meta):
        raise CheckpointError(f"{where}: content differs from its checksum (content_sha256): the file was changed "
                              "after it was saved; ids, requests or settings cannot be trusted")
    expected = {"config": dict, "ids": list, "requests": list}
    for name, kind in expected.items():
        if not isinstance(meta.get(name), kind):
            raise CheckpointError(f"{where}: field {name!r} must be a JSON {kind.__name__}, got {type(meta.get(name)).__name__}")
    try:
        check_settings(meta["config"], MemoryConfig, f"{where}: config")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    ids, requests = meta["ids"], meta["requests"]
    bad = next((k for k, i in enumerate(ids) if not isinstance(i, str)), None)
    if bad is not None:
        raise CheckpointError(f"{where}: ids[{bad}] must be a string, got {ids[bad]!r}")
    repeated = sorted(i for i, c in Counter(ids).items() if c > 1)
    if repeated:
        raise CheckpointError(f"{where}: ids {repeated[:3]} are stored more than once")
    if len(requests) != len(ids):
        raise CheckpointError(f"{where}: {len(ids)} ids but {len(requests)} requests")
    bad = next((k for k, r in enumerate(requests) if not isinstance(r, dict)), None)
    if bad is not None:
        raise CheckpointError(f"{where}: requests[{bad}] must be a JSON object, got {type(requests[bad]).__name__}")


class EditMemory:
    """Stored edits: ids, requests, keys [N, d] and prompts (vectors or token ids), searched
    exactly by one matrix product (``flat``) or through a FAISS index (``hnsw``, ``ivf``)."""

    def __init__(self, config: MemoryConfig, prototype_key: torch.Tensor, verify: Verify | None = None,
                 build_prompts: BuildPrompts | None = None) -> None:
        if prototype_key.shape != (config.key_dim,):
            raise CheckpointError(f"prototype key has shape {tuple(prototype_key.shape)}, expected ({config.key_dim},)")
        self.config = config
        self.prototype_key = prototype_key.detach().float().cpu()
        self.ids: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.keys = torch.zeros(0, config.key_dim)
        self.prompts = torch.zeros(0, config.n_tokens, config.lm_hidden)  # prompt_store "vectors"
        self.token_rows = TokenRows.empty()  # prompt_store "token_ids"
        self._rows: dict[str, int] = {}
        self._by_prompt: dict[str, int] = {}  # folded prompt -> newest row with it (exact_match)
        self._unit = self.keys  # what exact search multiplies: the keys, or unit keys for the cosine score
        self._index = self._new_index()
        self._lock = threading.RLock()  # around every mutation and every lookup
        self.owner: str | None = None  # fingerprint of the editor whose encoders made the keys and prompts
        self.lm_identity: str | None = None  # identity of the LM it was saved over (EditedModel.identity)
        self.content_sha256: str | None = None  # of the memory.json last loaded or saved (None: neither)
        self.verify = verify  # the second look of verify_k > 0 (not saved: it belongs to the editor)
        self.build_prompts = build_prompts  # token ids -> prompts, for prompt_store "token_ids" (the editor's)

    # ---- bookkeeping ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, edit_id: str) -> bool:
        return str(edit_id) in self._rows

    def stored(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` already stored."""
        with self._lock:
            return [i for i in map(str, ids) if i in self._rows]

    @property
    def _token_store(self) -> bool:
        return self.config.prompt_store == "token_ids"

    def _new_index(self) -> faiss.Index | None:
        """None for ``flat``: exact search multiplies the stored keys directly (one copy of them)."""
        if self.config.index == "flat":
            return None
        return build_index(self.config, np.zeros((0, self.config.key_dim), dtype=np.float32))

    def nbytes(self) -> int:
        """Bytes of the stored keys, prompts or token ids and search structures (not the requests)."""
        total = self.keys.numel() * self.keys.element_size()
        if self._unit is not self.keys:
            total += self._unit.numel() * self._unit.element_size()
        total += self.prompts.numel() * self.prompts.element_size()
        total += self.token_rows.ids.numel() * 4 + self.token_rows.offsets.numel() * 8
        if self._index is not None:
            total += faiss.serialize_index(self._index).nbytes
        return total

    def _index_rows(self, keys: torch.Tensor) -> np.ndarray:
        """What the index holds for keys [N, d]: the keys, or unit keys for the cosine score."""
        keys = unit_rows(keys) if self.config.score == "cosine" else keys
        return np.ascontiguousarray(keys.numpy().astype(np.float32, copy=False))

    def _rebuild(self) -> None:
        """Rebuild the index and the folded-prompt table from ``self.keys`` and ``self.requests``
        (after removal or loading; IVF also retrains here)."""
        self._unit = unit_rows(self.keys) if self.config.score == "cosine" else self.keys
        if self.config.index != "flat":
            self._index = build_index(self.config, self._index_rows(self.keys))
        self._by_prompt = {}
        if self.config.exact_match:
            for row, request in enumerate(self.requests):
                self._by_prompt[fold_question(str(request.get("prompt", "")))] = row  # the newest edit wins

    # ---- editing -------------------------------------------------------------------------
    def add(self, ids: Sequence[str], keys: torch.Tensor, prompts: torch.Tensor | TokenRows | Sequence[Sequence[int]],
            requests: Sequence[dict[str, Any]]) -> None:
        """Add edits: keys [N, d] and prompts [N, T, H] (``vectors``) or the N edits' token ids
        (``token_ids``: a :class:`TokenRows` or N lists). Ids must be new."""
        ids = [str(i) for i in ids]
        n, cfg = len(ids), self.config
        if self._token_store:
            prompts = prompts if isinstance(prompts, TokenRows) else TokenRows.from_lists(prompts)
            if keys.shape != (n, cfg.key_dim) or len(prompts) != n:
                raise ValueError(f"expected keys [{n}, {cfg.key_dim}] and {n} rows of token ids, "
                                 f"got {tuple(keys.shape)} and {len(prompts)} rows")
        elif not isinstance(prompts, torch.Tensor) or keys.shape != (n, cfg.key_dim) or \
                prompts.shape != (n, cfg.n_tokens, cfg.lm_hidden):
            shape = tuple(prompts.shape) if isinstance(prompts, torch.Tensor) else type(prompts).__name__
            raise ValueError(f"expected keys [{n}, {cfg.key_dim}] and prompts [{n}, {cfg.n_tokens}, "
                             f"{cfg.lm_hidden}], got {tuple(keys.shape)} and {shape}")
        else:
            prompts = prompts.detach().float().cpu()
        if len(requests) != n:
            raise ValueError(f"{n} ids but {len(requests)} requests")
        keys = keys.detach().float().cpu()
        with self._lock:
            clash = {i for i, c in Counter(ids).items() if c > 1 or i in self._rows}
            if clash:
                raise ValueError(f"edit id(s) already stored or repeated: {sorted(clash)[:5]}")
            self._rows.update((i, len(self.ids) + r) for r, i in enumerate(ids))
            self.ids += ids
            self.requests += [dict(r) for r in requests]
            first = len(self.keys)
            self.keys = torch.cat([self.keys, keys])
            self._unit = torch.cat([self._unit, unit_rows(keys)]) if self.config.score == "cosine" else self.keys
            if self._token_store:
                self.token_rows = self.token_rows.cat(prompts)
            else:
                self.prompts = torch.cat([self.prompts, prompts])
            if self.config.exact_match:
                for row, request in enumerate(requests, start=first):
                    self._by_prompt[fold_question(str(request.get("prompt", "")))] = row
            if self.config.index == "ivf":
                self._rebuild()
            elif self._index is not None:
                self._index.add(self._index_rows(keys))

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
            if self._token_store:
                self.token_rows = self.token_rows.select(keep)
            else:
                self.prompts = self.prompts[keep]
            self._rebuild()

    def clear(self) -> None:
        with self._lock:
            self.remove(list(self.ids))

    # ---- retrieval -----------------------------------------------------------------------
    def retrieve(self, queries: torch.Tensor, texts: Sequence[str] | None = None) -> Retrieval:
        """Prototype-gated top-1 retrieval for queries [B, d]; ``texts`` (the B questions) are
        needed for ``exact_match`` and ignored without it."""
        with self._lock:
            return self._retrieve(queries, texts)

    def _exact_rows(self, texts: Sequence[str] | None, b: int) -> torch.Tensor:
        """[B] row of the stored edit whose prompt each text equals (folded), else -1."""
        if not self.config.exact_match or texts is None:
            return torch.full((b,), -1, dtype=torch.long)
        if len(texts) != b:
            raise ValueError(f"{b} query vectors but {len(texts)} texts")
        return torch.tensor([self._by_prompt.get(fold_question(t), -1) for t in texts], dtype=torch.long)

    def _top_k(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` raw scores [B, k] and rows [B, k] of queries ``q`` [B, d]: exact (one
        matrix product per chunk of queries) for ``flat``, else through the FAISS index."""
        if self._index is not None:
            sims, rows = search(self._index, q.numpy(), k)
            return torch.from_numpy(sims), torch.from_numpy(rows).long()
        parts = [(q[s: s + SEARCH_CHUNK] @ self._unit.T).topk(k, dim=1) for s in range(0, len(q), SEARCH_CHUNK)]
        return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])

    def _retrieve(self, queries: torch.Tensor, texts: Sequence[str] | None = None) -> Retrieval:
        policy = self.policy
        q = policy.query_rows(queries)  # [B, d]
        proto = policy.prototype_scores(q, self.prototype_key)  # [B]
        if len(self) == 0:
            return policy.nothing(proto)
        sims, rows = self._top_k(q, policy.candidates(len(self)))  # [B, k] raw scores and rows
        return policy.decide(q, proto, sims, rows, texts, lambda row: str(self.requests[row].get("prompt", "")),
                             self._exact_rows(texts, q.shape[0]), self._unit)

    def lookup(self, queries: torch.Tensor, texts: Sequence[str] | None = None) -> Lookup:
        """Retrieval for queries [B, d] (and their ``texts``, for ``exact_match``) with the
        retrieved prompt tokens and edit ids, all read under the lock from one state of the
        memory (what :class:`~medrek.Editor` uses)."""
        with self._lock:
            r = self._retrieve(queries, texts)
            prompts, fired = self.prompts_for(r)
            rows = r.rows.tolist()
            return Lookup(r, prompts, fired, [self.ids[k] if k >= 0 else None for k in rows],
                          [self.requests[k] if k >= 0 else None for k in rows])

    def prompts_for(self, retrieval: Retrieval) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt tokens [B, T, H] (zeros where nothing fired) and the fired mask [B]; the
        retrieval must come from this memory's current state (see :meth:`lookup`). With
        ``token_ids`` the prompts of the edits that fired are built now, each edit once; T is
        then the longest of them (shorter ones are left-padded with zero slots, masked)."""
        fired = retrieval.fired
        rows = retrieval.rows.clamp_min(0)
        if self._token_store:
            return self._built_prompts(retrieval.rows), fired
        if len(self) == 0:
            return torch.zeros(len(rows), self.config.n_tokens, self.config.lm_hidden), fired
        return self.prompts[rows] * fired[:, None, None], fired

    def stored_prompts(self, rows: Sequence[int]) -> torch.Tensor:
        """The prompt tokens [N, T, H] of stored ``rows`` (built from their token ids with
        ``token_ids``; shorter edits left-padded with zero slots)."""
        with self._lock:
            if self._token_store:
                return self._built_prompts(torch.tensor(list(rows), dtype=torch.long))
            return self.prompts[list(rows)]

    def _built_prompts(self, rows: torch.Tensor) -> torch.Tensor:
        b, hidden = len(rows), self.config.lm_hidden
        unique = sorted({int(r) for r in rows.tolist() if r >= 0})
        if not unique:
            return torch.zeros(b, 0, hidden)
        if self.build_prompts is None:
            raise ValueError("this memory stores token ids (prompt_store='token_ids'): it needs the editor's "
                             "build_prompts to make prompts (use Editor.lookup, or set memory.build_prompts)")
        built = self.build_prompts([self.token_rows.row(r).long() for r in unique]).detach().float().cpu()  # [U, T, H]
        out = torch.zeros(b, built.shape[1], hidden)
        fired = rows >= 0
        out[fired] = built[torch.searchsorted(torch.tensor(unique), rows[fired])]  # each row's edit among the built
        return out

    def explain(self, query: torch.Tensor, text: str | None = None) -> Explanation:
        """Explain retrieval for one query vector [d] and its ``text`` (``Editor.explain`` takes
        text): what fired, the scores, and in ``reason`` which condition decided."""
        with self._lock:
            r = self._retrieve(query.reshape(1, -1), None if text is None else [text])
            return self.policy.explain(r, self.ids, self.requests)

    @property
    def policy(self) -> RetrievalPolicy:
        """What fires (:mod:`medrek.retrieval`), under this memory's current config and verifier."""
        return RetrievalPolicy(self.config, self.verify)

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], lock: bool = True) -> Path:
        """Write the folder ``path`` in one step (:func:`write_memory`)."""
        return write_memory(self, path, lock)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, key_dim: int | None = None,
             n_tokens: int | None = None, lm_hidden: int | None = None) -> "EditMemory":
        """Load a saved memory folder (:func:`read_memory`)."""
        return read_memory(path, key_dim=key_dim, n_tokens=n_tokens, lm_hidden=lm_hidden)


# ---- persistence ---------------------------------------------------------------------------
def write_memory(memory: EditMemory, path: str | os.PathLike[str], lock: bool = True) -> Path:
    """Write the folder ``path``: ``memory.json`` (config, ids, requests, owner and the sha256
    of ``memory.safetensors``) and ``memory.safetensors`` (keys, prompts or token ids and
    offsets, prototype). Both
    are written into a temporary folder that replaces ``path`` by renames, so a crash or an
    error leaves the previous memory whole; values JSON cannot hold are refused first."""
    path = Path(path)
    with memory._lock:
        tensors = {"keys": memory.keys.contiguous(), "prototype_key": memory.prototype_key.contiguous()}
        if memory._token_store:
            tensors.update(token_ids=memory.token_rows.ids.contiguous(),
                           token_offsets=memory.token_rows.offsets.contiguous())
        else:
            tensors["prompts"] = memory.prompts.contiguous()
        meta = {"format": FORMAT, "config": asdict(memory.config), "ids": list(memory.ids),
                "requests": [dict(r) for r in memory.requests], "owner": memory.owner}
        if memory.lm_identity is not None:  # absent otherwise: memories saved before it keep their checksum
            meta["lm_identity"] = memory.lm_identity
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: a stored request cannot be saved as JSON ({exc}); nothing was written") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    guard = folder_lock(path.parent, f".{path.name}.lock") if lock else nullcontext()
    with guard, atomic_folder(path) as tmp:
        try:
            save_file(tensors, str(tmp / "memory.safetensors"))
        except Exception as exc:  # safetensors names no path (a full disk, a read-only folder)
            raise OSError(f"{path}: the memory could not be written ({exc}); the previous version, if any, "
                          "is untouched") from exc
        meta["tensors_sha256"] = file_sha256(tmp / "memory.safetensors")
        meta["content_sha256"] = content_sha256(meta)
        write_text(tmp / "memory.json", json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    memory.content_sha256 = meta["content_sha256"]
    return path


def read_memory(path: str | os.PathLike[str], *, key_dim: int | None = None, n_tokens: int | None = None,
                lm_hidden: int | None = None) -> EditMemory:
    """Load a saved memory folder; its tensors must match the checksum in its JSON, and
    optional expected sizes are checked against the file."""
    path = Path(path)
    lock = folder_lock(path.parent, f".{path.name}.lock") if writable(path.parent) else nullcontext()
    with lock:  # a save of this memory running in another thread or process keeps its temporary folder
        path = recover_folder(path)  # a save interrupted between its renames
    meta_path, tensor_path = path / "memory.json", path / "memory.safetensors"
    if not path.is_dir() and path.with_suffix(".json").exists():
        raise CheckpointError(f"{path.with_suffix('.json')}: an edit memory saved by an older medrek-kit (two loose "
                              "files, no checksum); load it with that version and save it again")
    meta = read_checkpoint_meta(meta_path, FORMAT, "edit memory")
    check_memory_meta(meta, meta_path)
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
    memory = EditMemory(config, tensors["prototype_key"])
    n = len(meta["ids"])
    if config.prompt_store == "token_ids":
        names = ("keys", "token_ids", "token_offsets")
        shapes_ok = tensors.get("token_offsets", torch.zeros(0)).shape == (n + 1,)
    else:
        names = ("keys", "prompts")
        shapes_ok = tensors.get("prompts", torch.zeros(0)).shape == (n, config.n_tokens, config.lm_hidden)
    missing = [name for name in names if name not in tensors]
    if missing:
        raise CheckpointError(f"{tensor_path}: tensor(s) {missing} missing for prompt_store {config.prompt_store!r}")
    if tensors["keys"].shape != (n, config.key_dim) or not shapes_ok:
        raise CheckpointError(f"{tensor_path}: tensor shapes do not match {meta_path}")
    memory.ids, memory.requests = list(meta["ids"]), list(meta["requests"])
    memory._rows = {i: r for r, i in enumerate(memory.ids)}
    memory.keys = tensors["keys"]
    if config.prompt_store == "token_ids":
        memory.token_rows = TokenRows(tensors["token_ids"].to(torch.int32), tensors["token_offsets"].long())
        memory.token_rows.check(str(tensor_path))
    else:
        memory.prompts = tensors["prompts"]
    memory.owner = meta.get("owner")
    memory.lm_identity = meta.get("lm_identity")
    memory.content_sha256 = meta.get("content_sha256")
    memory._rebuild()
    return memory
