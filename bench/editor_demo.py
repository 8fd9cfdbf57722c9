"""Edit 1000 MedVersa requests into SmolLM2-135M (MiniLM-L6 retriever, untrained heads) and
generate with them: prints the insertion rate and the generation overhead of the edited model.

    python bench/editor_demo.py [--n-edits 1000] [--n-generate 16] [--out bench/results/editor_demo.json]

Untrained heads retrieve arbitrarily, so this measures cost, not quality. Both timings come from
the same run on the same machine; the overhead is a ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from medrek import Editor, EditorConfig, load_split
from medrek.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-edits", type=int, default=1000)
    parser.add_argument("--n-generate", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="bench/results/editor_demo.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    editor = Editor.build(EditorConfig(method="medrek", lm="smollm2-135m", encoder="minilm-l6",
                                       key_dim=1024, n_tokens=3, n_heads=8))
    records = load_split("medversa", "train", args.data_dir, limit=args.n_edits)

    start = time.perf_counter()
    editor.edit(records, batch_size=128, progress=True)
    insert_s = time.perf_counter() - start

    texts = [r.prompt for r in records[: args.n_generate]]
    editor.generate(texts[:2], max_new_tokens=4)  # warm-up
    timings = {}
    for name, use_memory in (("unedited", False), ("edited", True)):
        start = time.perf_counter()
        # min_new_tokens: both runs generate the same number of tokens, so the ratio is the overhead
        outputs = editor.generate(texts, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                                  use_memory=use_memory)
        timings[name] = time.perf_counter() - start
    start = time.perf_counter()
    fired = editor.retrieve(texts).fired
    retrieval_s = time.perf_counter() - start

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads()},
        "n_edits": len(records),
        "insert_seconds": round(insert_s, 3),
        "edits_per_minute": round(60 * len(records) / insert_s, 1),
        "generate_unedited_seconds": round(timings["unedited"], 3),
        "generate_edited_seconds": round(timings["edited"], 3),
        "generation_overhead_ratio": round(timings["edited"] / timings["unedited"], 3),
        "retrieval_seconds_per_batch": round(retrieval_s, 4),
        "fired": int(fired.sum()),
        "n_generate": len(texts),
        "max_new_tokens": args.max_new_tokens,
        "example": {"prompt": texts[0], "edited_output": outputs[0]},
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
