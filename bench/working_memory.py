"""RAM and bytes per stored edit of the working preset's memory, from 1e4 to 1e6 stored edits.

    python bench/working_memory.py [--sizes 10000 100000 1000000] [--dims 512 384]

``medrek-lm-embedding`` memories store, per edit, its key [d] and the LM token ids of its edit
text (``prompt_store="token_ids"``); the prompt of an edit is built when it fires. Each size is
a real :class:`~medrek.memory.EditMemory` filled with MedVersa's released edits (train, valid and
test, cycled, each request's strings made unique so that none is shared), their SmolLM2 token
ids as ``Editor.edit`` stores them (the last 24 tokens: the committed editor's slots; ``--slots``),
and random unit keys. Reported per size: the memory's own bytes per edit (keys, token ids,
offsets), the process's resident-set growth per edit while the memory was built and held
(requests, ids and bookkeeping included), the saved folder's bytes per edit (at the smallest
size), and exact top-1 search latency for a batch of 16 queries. Each size is measured in a fresh
process (memory freed by earlier work would otherwise be reused and hide the growth).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import shutil
import tempfile
from pathlib import Path

import torch

from common import latencies, save

from medrek.data import load_split
from medrek.editor import edit_text
from medrek.memory import EditMemory, MemoryConfig
from medrek.models.registry import load_causal_lm


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def released_edits(data_dir: str | None, slots: int) -> tuple[list[dict], list[list[int]]]:
    """MedVersa's released requests and their edit texts' last ``slots`` SmolLM2 token ids."""
    records = [r for split in ("train", "valid", "test") for r in load_split("medversa", split, data_dir)]
    _, tokenizer = load_causal_lm("smollm2-135m")
    ids = tokenizer([edit_text(r.prompt, r.target_new) for r in records], add_special_tokens=False)["input_ids"]
    requests = [{"id": r.record_id, "prompt": r.prompt, "target_new": r.target_new} for r in records]
    return requests, [row[-slots:] for row in ids]


def fill(n: int, dim: int, requests: list[dict], token_rows: list[list[int]], chunk: int = 65536) -> EditMemory:
    config = MemoryConfig(dim, 30, 576, prompt_store="token_ids")
    memory = EditMemory(config, torch.zeros(dim))
    g = torch.Generator().manual_seed(0)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        rows = [(start + i) % len(requests) for i in range(m)]
        reqs = [{k: f"{v} [{start + i}]" for k, v in requests[r].items()} for i, r in enumerate(rows)]
        keys = torch.nn.functional.normalize(torch.randn(m, dim, generator=g), dim=-1)
        memory.add([q["id"] for q in reqs], keys, [token_rows[r] for r in rows], reqs)
    return memory


def measure(n: int, dim: int, requests, token_rows, on_disk: bool) -> dict:
    gc.collect()
    before = rss_bytes()
    memory = fill(n, dim, requests, token_rows)
    gc.collect()
    after = rss_bytes()
    row = {"stored": n, "key_dim": dim, "memory_bytes_per_edit": round(memory.nbytes() / n, 1),
           "key_bytes_per_edit": 4 * dim, "token_ids_per_edit": round(len(memory.token_rows.ids) / n, 2),
           "rss_bytes_per_edit": round((after - before) / n, 1), "rss_gb": round((after - before) / 1e9, 3)}
    queries = torch.nn.functional.normalize(memory.keys[:16] + 0.05 * torch.randn(16, dim), dim=-1)
    row["search_16"] = latencies(lambda: memory.retrieve(queries), repeat=10, warmup=1)
    if on_disk:
        folder = Path(tempfile.mkdtemp(prefix="medrek-memory-"))
        try:
            memory.save(folder / "memory")
            size = sum(p.stat().st_size for p in (folder / "memory").iterdir())
            tensors = (folder / "memory" / "memory.safetensors").stat().st_size
            row["saved_bytes_per_edit"] = round(size / n, 1)
            row["saved_tensor_bytes_per_edit"] = round(tensors / n, 1)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 384])
    parser.add_argument("--slots", type=int, default=24)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    requests, token_rows = released_edits(args.data_dir, args.slots)
    jobs = [(n, d, requests, token_rows, n == min(args.sizes)) for d in args.dims for n in args.sizes]
    rows = []
    for job in jobs:  # one fresh process per size: its resident-set growth is the memory's alone
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            rows.append(pool.apply(measure, job))
    save("working_memory", {"method": "medrek-lm-embedding", "prompt_store": "token_ids", "slots": args.slots,
                            "released_edits": len(requests), "rows": rows, "goal_ram_gb_at_1e6": 4.0,
                            "goal_bytes_per_edit_384d": 2048,
                            "notes": "rss_bytes_per_edit counts everything the memory holds in this process "
                                     "(keys, token ids, requests, ids, bookkeeping); memory_bytes_per_edit only "
                                     "its tensors; search_16: exact top-1 of 16 queries"})


if __name__ == "__main__":
    main()
