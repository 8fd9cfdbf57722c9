"""Inference overhead of an edited SmolLM2-135M holding 1e4 edits vs the unedited model.

    python bench/inference_overhead.py [--n-edits 10000] [--checkpoint checkpoints/small/medrek-lm-embedding]

The editor is the working preset users get (``medrek-lm-embedding``; ``--checkpoint`` picks
another). The memory holds the real test requests that are queried plus filler edits up to
``--n-edits``: random keys with random prompts (vector presets) or random token ids of the
real edits' mean length (token-id memories); retrieval cost depends on the count, not on what
is stored. Generation uses ``min_new_tokens`` so both runs produce the same number of tokens;
teacher-forced scoring is timed on (prompt, target) pairs. Edited and unedited runs alternate
``--repeat`` times (best of), each after emptying the encoder's feature cache, so query encoding
is paid as a deployed editor pays it. Ratios edited / unedited are within this run; the goals
are at most 1.10 (generation) and 1.15 (scoring) on CPU.

Retrieval's share (query encoding, search and building the prompts of the edits that fired:
``Editor.lookup``, which generation and scoring call) is timed inside the edited calls; the rest
of the overhead is the LM reading the prompt positions of every row that fired. Every queried
and scored row fires its own edit here (the worst case); the ``_mixed`` jobs add as many rows that fire
nothing (locality prompts) to a second scoring and a second generation job, as a user's traffic
would.
"""

from __future__ import annotations

import argparse

import torch

from common import editor_or_untrained, save, timed

from medrek import load_split


def add_filler(editor, n: int) -> None:
    """``n`` edits that never fire (random keys) and cost what real ones cost to store."""
    cfg = editor.memory.config
    g = torch.Generator().manual_seed(0)
    mean_tokens = max(1, round(len(editor.memory.token_rows.ids) / max(1, len(editor.memory))))
    vocab = len(editor.model.tokenizer)
    for start in range(0, max(0, n), 4096):
        m = min(4096, n - start)
        keys = torch.randn(m, cfg.key_dim, generator=g)
        if cfg.prompt_store == "token_ids":
            filler = torch.randint(0, vocab, (m, mean_tokens), generator=g).tolist()
        else:
            filler = torch.randn(m, cfg.n_tokens, cfg.lm_hidden, generator=g) * 0.02
        editor.memory.add([f"filler-{start + i}" for i in range(m)], keys, filler, [{}] * m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-edits", type=int, default=10_000)
    parser.add_argument("--n-queries", type=int, default=16)
    parser.add_argument("--n-score", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checkpoint", default="checkpoints/small/medrek-lm-embedding")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    editor = editor_or_untrained(args.checkpoint, method="medrek-lm-embedding", lm="smollm2-135m", encoder="minilm-l6",
                                 key_dim=512, n_tokens=30)
    records = load_split("medversa", "test", args.data_dir, limit=max(args.n_queries, args.n_score))
    editor.edit(records, batch_size=128, check_retrieval=False)
    add_filler(editor, args.n_edits - len(editor.memory))
    texts = [r.prompt for r in records[: args.n_queries]]
    prompts, targets = [r.prompt for r in records[: args.n_score]], [r.target_new for r in records[: args.n_score]]
    editor.generate(texts[:2], max_new_tokens=4)  # warm-up
    result: dict = {"checkpoint": args.checkpoint, "method": editor.config.method,
                    "prompt_store": editor.memory.config.prompt_store,
                    "n_edits": len(editor.memory), "n_queries": len(texts), "n_score": len(prompts),
                    "max_new_tokens": args.max_new_tokens, "repeat": args.repeat,
                    "fired_on_queries": int(editor.retrieve(texts).fired.sum()),
                    "fired_on_scored": int(editor.retrieve(prompts).fired.sum())}
    mixed_prompts = prompts + [r.locality[name].prompt for r in records[: args.n_score] for name in list(r.locality)[:1]]
    mixed_targets = targets + [r.locality[name].answer for r in records[: args.n_score] for name in list(r.locality)[:1]]
    result["fired_on_mixed"] = int(editor.retrieve(mixed_prompts).fired.sum())
    result["n_mixed"] = len(mixed_prompts)
    locality_texts = [r.locality[name].prompt for r in records[: args.n_queries] for name in list(r.locality)[:1]]
    mixed_texts = [t for pair in zip(texts, locality_texts) for t in pair]  # interleaved: every batch is mixed
    result["fired_on_mixed_queries"] = int(editor.retrieve(mixed_texts).fired.sum())
    result["n_mixed_queries"] = len(mixed_texts)
    jobs = {
        "generate": lambda use: editor.generate(texts, max_new_tokens=args.max_new_tokens,
                                                min_new_tokens=args.max_new_tokens, use_memory=use),
        "generate_mixed": lambda use: editor.generate(mixed_texts, max_new_tokens=args.max_new_tokens,
                                                      min_new_tokens=args.max_new_tokens, use_memory=use),
        "score": lambda use: editor.score(prompts, targets, use_memory=use),
        "score_mixed": lambda use: editor.score(mixed_prompts, mixed_targets, use_memory=use),
    }
    # Retrieval (query encoding, search, building the fired edits' prompts) is timed inside the
    # edited calls themselves, in the chunks they use, by wrapping this editor's ``lookup`` (what
    # generation and scoring call).
    retrieval = {"s": 0.0}
    plain_lookup = editor.lookup

    def timed_lookup(batch_texts):
        seconds, out = timed(lambda: plain_lookup(batch_texts))
        retrieval["s"] += seconds
        return out

    editor.lookup = timed_lookup
    # Unedited and edited runs alternate, so drift of the machine hits both alike. The encoder's
    # feature cache is emptied before every run: a deployed editor meets queries it has not
    # encoded before, so query encoding is part of the measured cost.
    times: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for job, fn in jobs.items():
            for name, use in (("unedited", False), ("edited", True)):
                editor.encoder.clear_cache()
                retrieval["s"] = 0.0
                times.setdefault(f"{job}_{name}", []).append(timed(lambda: fn(use))[0])
                if use:
                    times.setdefault(f"{job}_retrieval", []).append(retrieval["s"])
    # Best of the repeats: the work is deterministic, so machine noise can only add time.
    best = {k: min(v) for k, v in times.items()}
    result["seconds"] = best
    result["generation_overhead_ratio"] = best["generate_edited"] / best["generate_unedited"]
    result["scoring_overhead_ratio"] = best["score_edited"] / best["score_unedited"]
    result["mixed_scoring_overhead_ratio"] = best["score_mixed_edited"] / best["score_mixed_unedited"]
    result["mixed_generation_overhead_ratio"] = best["generate_mixed_edited"] / best["generate_mixed_unedited"]
    result["score_unedited_rows_per_s"] = len(prompts) / best["score_unedited"]
    result["score_edited_rows_per_s"] = len(prompts) / best["score_edited"]
    # Shares of the edited time: retrieval; the rest of the overhead is the LM reading the prompt
    # positions of every row that fired.
    for job in jobs:
        edited, unedited, retr = best[f"{job}_edited"], best[f"{job}_unedited"], best[f"{job}_retrieval"]
        result[f"retrieval_share_{job}"] = retr / edited
        result[f"prompt_positions_share_{job}"] = (edited - unedited - retr) / edited
    result["goal_generation_ratio"] = 1.10
    result["goal_scoring_ratio"] = 1.15
    save("inference_overhead", result)


if __name__ == "__main__":
    main()
