"""What an edit costs: the working editor against GRACE, WISE, and FT-L and MEMIT edited in order.

    python bench/lifelong_cost.py [--n-edits 20] [--checkpoint checkpoints/small/medrek-lm-embedding]

The same MedVersa valid requests are edited one at a time, in order (the sequential protocol),
by each method on the same LM (SmolLM2-135M-Instruct, chat template), with the settings
``params/small.yaml`` names. Reported per method: seconds per edit (the mean over the edits after
the first, which pays one-off set-up) and what the saved state weighs after ``n/2`` and ``n``
edits, so the bytes each further edit adds (WISE's side memory is one copy of a projection per
shard of 500 edits: its bytes do not grow with edits inside a shard; FT-L and MEMIT, wrapped in
``one_at_a_time``, save the weights they changed, a fixed size). Ratios are within this run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

from common import save

from medrek import load_split
from medrek.baselines import build_method, locality_pairs, one_at_a_time
from medrek.models.registry import load_causal_lm

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("medrek-lm-embedding", "grace", "wise", "ft-l", "memit")


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def saved_bytes(method) -> int:
    """Bytes of the method's edits as saved (the editor: its memory only, not its trained weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        if hasattr(method, "editor"):
            method.editor.save(Path(tmp) / "with", with_memory=True)
            method.editor.save(Path(tmp) / "without")
            return folder_bytes(Path(tmp) / "with") - folder_bytes(Path(tmp) / "without")
        method.save(Path(tmp) / "state")
        return folder_bytes(Path(tmp) / "state")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-edits", type=int, default=20)
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "small" / "medrek-lm-embedding"))
    parser.add_argument("--params", default=str(ROOT / "params" / "small.yaml"))
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.n_edits < 4:
        parser.error("--n-edits must be at least 4")
    torch.manual_seed(0)
    settings = yaml.safe_load(Path(args.params).read_text())["notebooks"]["04_batch_edit"]
    lm = load_causal_lm("smollm2-135m", seed=0)
    records = load_split("medversa", "valid", args.data_dir)[: args.n_edits]
    irrelevant = locality_pairs(load_split("medversa", "train", args.data_dir))
    result: dict = {"lm": "smollm2-135m", "n_edits": len(records), "params": Path(args.params).name,
                    **{key: settings.get(key, {}) for key in ("grace", "wise", "ft", "memit")}}
    stats_texts = [f"{r.prompt} {r.target_new}" for r in load_split("medversa", settings.get("memit_stats_split", "train"),
                                                                     args.data_dir)]
    half = len(records) // 2
    for name in METHODS:
        method = one_at_a_time(build_method(
            name, lm, checkpoints={"medrek-lm-embedding": args.checkpoint}, chat_template="auto",
            grace=settings.get("grace"), wise=settings.get("wise"), ft=settings.get("ft"), memit=settings.get("memit"),
            irrelevant=irrelevant, memit_texts=stats_texts, lm_name="smollm2-135m",
            cache_dir=os.environ.get("MEDREK_CACHE_DIR")))
        seconds, held = [], {}
        for i, record in enumerate(records, 1):
            start = time.perf_counter()
            method.edit([record])
            seconds.append(time.perf_counter() - start)
            if i in (half, len(records)):
                held[i] = saved_bytes(method)
        method.restore()
        later = seconds[1:]
        result[name] = {"seconds_per_edit": sum(later) / len(later), "first_edit_s": seconds[0],
                        f"bytes_after_{half}": held[half], f"bytes_after_{len(records)}": held[len(records)],
                        "bytes_per_further_edit": (held[len(records)] - held[half]) / (len(records) - half)}
        print(name, result[name])
    base = result["medrek-lm-embedding"]["seconds_per_edit"]
    for name in METHODS[1:]:
        result[name]["seconds_vs_working_editor"] = result[name]["seconds_per_edit"] / base
    save("lifelong_cost", result)


if __name__ == "__main__":
    main()
