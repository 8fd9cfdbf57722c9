"""Edit-memory scale: retrieval latency, memory per edit and build rate from 1e3 to 1e5 stored
edits (1e6 with --full), exact FAISS IndexFlatIP vs approximate indexes vs torch brute force.

    python bench/memory_scale.py [--full] [--dims 384 4096]

Keys are random unit vectors; each query is a stored key plus noise (cosine about 0.8 with
it), like a paraphrase near its edit, so the exact top-1 is well defined. Every latency is per
batch of 16 queries. The torch baseline is what the official code does (``q @ K.T``, top-k).
Approximate indexes report their top-1 agreement with exact search at the kit's defaults and
along a sweep of search breadth (IVF nprobe, HNSW efSearch) up to the first setting that reaches
0.99. Exact search is the kit's path (``medrek.memory.search``: FAISS with BLAS); FAISS's own
dispatch, which skips BLAS for small query batches, is reported too. Random keys have no cluster
structure, the hard case for IVF; trained keys cluster by topic. Ratios compare numbers of the
same run only.
"""

from __future__ import annotations

import argparse
import gc

import faiss
import numpy as np
import torch

from common import latencies, save, timed

from medrek.memory import MemoryConfig, build_index, search

QUERY_BATCH = 16
AGREEMENT_QUERIES = 512
TARGET_AGREEMENT = 0.99
SWEEPS = {"ivf": ("nprobe", [32, 64, 128, 256, 512]), "hnsw": ("efSearch", [256, 512, 1024])}
DEFAULT_KNOBS = {"ivf": "ivf_nprobe", "hnsw": "hnsw_ef_search"}  # where each sweep starts (MemoryConfig)
RAM_LIMIT = 20e9  # bytes this script lets one configuration use


def unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    keys = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 65536):
        block = rng.standard_normal((min(65536, n - start), d), dtype=np.float32)
        keys[start: start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return keys


def noisy_queries(keys: np.ndarray, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, len(keys), m)
    noise = rng.standard_normal((m, keys.shape[1]), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = 0.8 * keys[idx] + 0.6 * noise  # cosine ~0.8 with its own key
    return np.ascontiguousarray(q, dtype=np.float32), idx


def build(kind: str, keys: np.ndarray) -> tuple[faiss.Index, float, int]:
    """The kit's own index (``medrek.memory.build_index``, default settings): (index, build
    seconds incl. IVF training, index bytes). The bytes are the serialised index (vectors,
    graph links, list ids, centroids), which is what the index holds in memory up to small
    bookkeeping; a resident-set delta would be dominated by the allocator."""
    config = MemoryConfig(keys.shape[1], 1, 1, index=kind)
    seconds, index = timed(lambda: build_index(config, keys))
    return index, seconds, int(faiss.serialize_index(index).nbytes)


def set_knob(index: faiss.Index, kind: str, value: int) -> None:
    if kind == "ivf" and hasattr(index, "nprobe"):
        index.nprobe = min(value, index.nlist)
    elif kind == "hnsw":
        index.hnsw.efSearch = value


def sweep(index: faiss.Index, kind: str, queries: np.ndarray, batch: np.ndarray, exact_top: np.ndarray,
          repeat: int, default: dict) -> list[dict]:
    """Agreement with exact top-1 and p50 latency for growing search breadth, from the kit's
    default (``default``: its already measured entry) until agreement reaches
    ``TARGET_AGREEMENT`` (the settings a user would pick from)."""
    name, values = SWEEPS[kind]
    start = getattr(MemoryConfig(1, 1, 1), DEFAULT_KNOBS[kind])
    points = [{name: start, "agreement_top1": default["agreement_top1"], "p50_s": default["p50_s"]}]
    for value in values:
        last = points[-1]
        if last["agreement_top1"] >= TARGET_AGREEMENT or kind == "ivf" and last[name] >= getattr(index, "nlist", 0):
            break
        set_knob(index, kind, value)
        agreement = float((search(index, queries, 1)[1][:, 0] == exact_top).mean())
        points.append({name: value, "agreement_top1": agreement,
                       "p50_s": latencies(lambda: search(index, batch, 2), repeat)["p50_s"]})
    return points


def measure(n: int, d: int, kinds: list[str], repeat: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    keys = unit_rows(n, d, rng)
    queries, own = noisy_queries(keys, AGREEMENT_QUERIES, rng)
    batch = queries[:QUERY_BATCH]
    row: dict = {"n": n, "dim": d, "key_bytes_per_edit": 4 * d}
    t_keys = torch.from_numpy(keys)
    t_batch = torch.from_numpy(batch)
    row["torch"] = latencies(lambda: torch.topk(t_batch @ t_keys.T, 2, dim=1), repeat)
    exact_top = None
    for kind in kinds:  # "flat" first: it defines the exact answer
        index, build_s, nbytes = build(kind, keys)
        entry = {"build_s": build_s, "adds_per_s": n / build_s if build_s > 0 else None,
                 "index_bytes_per_edit": nbytes / n}
        entry.update(latencies(lambda idx=index: search(idx, batch, 2), repeat))
        top = search(index, queries, 1)[1][:, 0]
        if kind == "flat":
            exact_top = top
            entry["own_key_top1"] = float((exact_top == own).mean())
            # FAISS's own dispatch, for the record: no BLAS below n_queries * dim = 128,000
            entry["faiss_default_dispatch"] = latencies(lambda idx=index: idx.search(batch, 2), repeat)
        else:
            entry["agreement_top1"] = float((top == exact_top).mean())
            entry["sweep"] = sweep(index, kind, queries, batch, exact_top, repeat, entry)
            reached = [p for p in entry["sweep"] if p["agreement_top1"] >= TARGET_AGREEMENT]
            entry["reaches_target_at"] = reached[0] if reached else None
        row[kind] = entry
        del index
        gc.collect()
    row["flat_vs_torch_p50"] = row["flat"]["p50_s"] / row["torch"]["p50_s"]
    row["faiss_default_vs_torch_p50"] = row["flat"]["faiss_default_dispatch"]["p50_s"] / row["torch"]["p50_s"]
    for kind in kinds:
        if kind != "flat":
            row[f"{kind}_vs_flat_p50"] = row[kind]["p50_s"] / row["flat"]["p50_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="also 1e6 stored edits (minutes, GBs of RAM)")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 4096])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                        help="numbers of stored edits (--full appends 1e6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result name (default memory_scale, memory_scale_full)")
    args = parser.parse_args()
    sizes = args.sizes + ([1_000_000] if args.full else [])
    rows, skipped = [], []
    for d in args.dims:
        for n in sizes:
            need = 3.2 * n * d * 4  # keys + an index copy + the HNSW graph, with margin
            if need > RAM_LIMIT:
                skipped.append({"n": n, "dim": d, "reason": f"needs about {need / 1e9:.0f} GB of RAM"})
                print(f"skip n={n} d={d}: {skipped[-1]['reason']}")
                continue
            # HNSW construction grows with n*d; at 4096 dims and 1e5+ it takes longer than this
            # benchmark's budget on 2 cores, so IVF is the approximate index there.
            kinds = ["flat", "ivf"] + (["hnsw"] if n * d <= 10_000 * 4096 or args.full and d <= 384 else [])
            repeat = 50 if n <= 10_000 else 15
            print(f"n={n} d={d} indexes={kinds}", flush=True)
            rows.append(measure(n, d, kinds, repeat, args.seed))
    save(args.out or "memory_scale" + ("_full" if args.full else ""),
         {"query_batch": QUERY_BATCH, "agreement_queries": AGREEMENT_QUERIES, "rows": rows, "skipped": skipped,
          "settings": {k: v for k, v in vars(MemoryConfig(1, 1, 1)).items() if k.startswith(("hnsw", "ivf"))},
          "notes": "latency per batch of 16 queries; the kit's own indexes (medrek.memory.build_index)"})


if __name__ == "__main__":
    main()
