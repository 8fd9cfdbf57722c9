"""What the cross-encoder's second look costs at lookup: seconds per question with 6,000 edits stored.

    python bench/verifier_lookup.py --editor runs/large-memory/ce10 [--baseline checkpoints/small/medrek-lm-embedding]

Both editors store the same 6,000 released MedVersa edits; 100 paraphrases of test edits are
asked through ``Editor.retrieve`` (query encoding, search and, with a verifier, the verifier
reading the top ``verify_k`` stored prompts of each), best of 3 runs, in one process. Writes
``bench/results/verifier_lookup.json``; the ratio is within this run.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import save

from medrek import Editor, load_split
from medrek.config import repo_path
from medrek.models.registry import load_causal_lm


def seconds_per_question(editor: Editor, questions: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        if editor.verifier is not None:
            editor.verifier.eval()
        editor.encoder.clear_cache()  # every run encodes its questions again, as a new question would be
        start = time.perf_counter()
        editor.retrieve(questions)
        best = min(best, time.perf_counter() - start)
    return best / len(questions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--editor", required=True, help="an editor with a verifier (verify_k > 0)")
    parser.add_argument("--baseline", default="checkpoints/small/medrek-lm-embedding")
    parser.add_argument("--stored", type=int, default=6000)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    lm = load_causal_lm("smollm2-135m", seed=0)
    pool = [r for s in ("test", "valid", "train") for r in load_split("medversa", s, args.data_dir)][: args.stored]
    questions = [r.rephrase for r in pool[: args.questions]]
    result = {"stored": len(pool), "questions": len(questions)}
    for name, folder in (("baseline", args.baseline), ("verified", args.editor)):
        editor = Editor.load(repo_path(folder), lm=lm)
        editor.edit(pool, batch_size=128, check_retrieval=False)
        result[name] = {"editor": folder, "verify_k": editor.config.verify_k,
                        "verifier_kind": editor.config.verifier_kind if editor.config.verify_k else None,
                        "seconds_per_question": seconds_per_question(editor, questions)}
    result["ratio"] = result["verified"]["seconds_per_question"] / result["baseline"]["seconds_per_question"]
    save("verifier_lookup", result)
    print(result)


if __name__ == "__main__":
    main()
