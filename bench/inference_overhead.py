"""Inference overhead of an edited SmolLM2-135M holding 1e4 edits vs the unedited model.

    python bench/inference_overhead.py [--n-edits 10000] [--checkpoint checkpoints/small/medrek]

The memory holds the real test requests that are queried plus random keys and prompts up to
``--n-edits`` (retrieval cost depends on the count, not on what is stored). Generation uses
``min_new_tokens`` so both runs produce the same number of tokens; teacher-forced scoring is
timed on (prompt, target) pairs. Ratios edited / unedited are within this run; the goal is at
most 1.10 on CPU. Retrieval's share is query encoding plus search over the edited time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import save, timed

from medrek import Editor, EditorConfig, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-edits", type=int, default=10_000)
    parser.add_argument("--n-queries", type=int, default=16)
    parser.add_argument("--n-score", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--checkpoint", default="checkpoints/small/medrek")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    if Path(args.checkpoint, "editor.json").exists():
        editor = Editor.load(args.checkpoint)
    else:
        print(f"no checkpoint at {args.checkpoint}: untrained heads (cost is the same)")
        editor = Editor.build(EditorConfig(method="medrek", lm="smollm2-135m", encoder="minilm-l6", key_dim=512))
    records = load_split("medversa", "test", args.data_dir, limit=max(args.n_queries, args.n_score))
    editor.edit(records, batch_size=128)
    cfg = editor.memory.config
    filler = args.n_edits - len(editor.memory)
    g = torch.Generator().manual_seed(0)
    for start in range(0, filler, 4096):
        m = min(4096, filler - start)
        keys = torch.randn(m, cfg.key_dim, generator=g)
        prompts = torch.randn(m, cfg.n_tokens, cfg.lm_hidden, generator=g) * 0.02
        editor.memory.add([f"filler-{start + i}" for i in range(m)], keys, prompts, [{}] * m)
    texts = [r.prompt for r in records[: args.n_queries]]
    editor.generate(texts[:2], max_new_tokens=4)  # warm-up
    result: dict = {"n_edits": len(editor.memory), "n_queries": len(texts), "max_new_tokens": args.max_new_tokens,
                    "fired_on_queries": int(editor.retrieve(texts).fired.sum())}
    for name, use in (("unedited", False), ("edited", True)):
        result[f"generate_{name}_s"], _ = timed(lambda: editor.generate(
            texts, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, use_memory=use))
    prompts, targets = [r.prompt for r in records[: args.n_score]], [r.target_new for r in records[: args.n_score]]
    for name, use in (("unedited", False), ("edited", True)):
        seconds, _ = timed(lambda: editor.score(prompts, targets, use_memory=use))
        result[f"score_{name}_rows_per_s"] = len(prompts) / seconds
    result["retrieval_generate_s"], _ = timed(lambda: editor.retrieve(texts))
    result["retrieval_score_s"], _ = timed(lambda: editor.retrieve(prompts))
    result["generation_overhead_ratio"] = result["generate_edited_s"] / result["generate_unedited_s"]
    result["scoring_overhead_ratio"] = result["score_unedited_rows_per_s"] / result["score_edited_rows_per_s"]
    result["retrieval_share_generate"] = result["retrieval_generate_s"] / result["generate_edited_s"]
    result["retrieval_share_score"] = result["retrieval_score_s"] * result["score_edited_rows_per_s"] / len(prompts)
    result["goal_ratio"] = 1.10
    save("inference_overhead", result)


if __name__ == "__main__":
    main()
