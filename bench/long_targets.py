"""Scoring speed with long targets (MedFE-style explanations), as ratios in one run.

    python bench/long_targets.py [--lengths 10 50 100 300] [--n-records 16] [--check-records 100]

Synthetic MedFE-style records (``medrek.data.synthetic``) are cut so that every target and
locality answer is exactly N LM tokens. For each N, the unedited LM, a retrieval editor
(``--checkpoint``, default the committed medrek-lm-embedding editor) and IKE with its retriever
are evaluated under the single protocol (``run_protocol``, as notebook 03 does, no fluency).
Reported per (N, method): rows/s, target tokens/s (target and locality-answer tokens scored per
second) and the split of the wall time between LM forward, vocabulary projection, metric,
tokenisation, retrieval and the rest (Python). The unedited locality reference is timed apart.

Then the acceptance check: ``--check-records`` records with 100-token targets, unedited,
single protocol, no fluency, timed end to end (reference included). Targets: target
tokens/s at 300-token targets at least half of that at 10-token targets; the check under 180 s
on 2 idle cores. Writes bench/results/long_targets.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from common import editor_or_untrained, save, timing_into

import medrek.editor as editor_module
import medrek.evaluate.protocols as protocols_module
from medrek import Editor
from medrek.baselines.base import RetrievalMethod, UneditedMethod
from medrek.baselines.ike import InContextMethod
from medrek.data.loaders import records_from_json
from medrek.data.synthetic import medfe_style_records
from medrek.evaluate import Protocol, run_protocol, unedited_locality_predictions


def exact_tokens(tokenizer, text: str, n: int) -> str:
    """``text`` cut to its first ``n`` LM tokens (as the scorer tokenises a target: after a space)."""
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"][:n]
    return tokenizer.decode(ids).strip()


def long_records(tokenizer, n_records: int, n_tokens: int, seed: int = 0):
    raw = medfe_style_records(n_records, target_words=2 * n_tokens + 5, seed=seed)
    for r in raw:
        for key in ("target_new", "locality_topic_ground_truth", "locality_tokenSem_ground_truth"):
            r[key] = exact_tokens(tokenizer, r[key], n_tokens)
    return records_from_json(raw, "medfe", f"<synthetic {n_tokens}-token targets>")


def target_tokens(tokenizer, records) -> int:
    """Target tokens the single protocol scores: target after prompt and rephrase, every locality answer."""
    texts = [r.target_new for r in records] * 2 + [p.answer for r in records for p in r.locality.values()]
    return sum(len(ids) for ids in tokenizer([" " + t for t in texts], add_special_tokens=False)["input_ids"])


class StageTimer:
    """Wall time inside the LM decoder, the vocabulary projection, metrics, tokenisation and retrieval."""

    def __init__(self, model, editor: Editor | None) -> None:
        self.model, self.editor = model, editor
        self.seconds: dict[str, float] = defaultdict(float)

    def _wrap(self, owner: Any, name: str, stage: str):
        original = getattr(owner, name)
        setattr(owner, name, timing_into(original, self.seconds, stage))
        return owner, name, original

    def _hooks(self, module: torch.nn.Module, stage: str) -> list:
        starts: list[float] = []

        def pre(*_):
            starts.append(time.perf_counter())

        def post(*_):
            self.seconds[stage] += time.perf_counter() - starts.pop()

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    @contextmanager
    def active(self) -> Iterator["StageTimer"]:
        lm = self.model.lm
        handles = self._hooks(lm.get_decoder(), "lm_forward") + self._hooks(lm.get_output_embeddings(), "vocab_projection")
        patched = [self._wrap(editor_module, "token_scores", "metric"),  # argmax and NLL over the vocabulary
                   self._wrap(editor_module, "per_row_scores", "metric"),
                   self._wrap(protocols_module, "agreement", "metric"),
                   self._wrap(editor_module, "encode_pairs", "tokenise")]
        if self.editor is not None:
            patched.append(self._wrap(self.editor, "lookup", "retrieval"))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            for owner, name, original in reversed(patched):
                if owner is self.editor:
                    delattr(owner, name)  # back to the class method
                else:
                    setattr(owner, name, original)

    def split(self, total: float) -> dict[str, float]:
        out = {k: round(v / total, 4) for k, v in sorted(self.seconds.items())}
        out["python_other"] = round(max(0.0, 1 - sum(self.seconds.values()) / total), 4)
        return out


def evaluate(method, records, reference, editor, batch_size: int) -> tuple[float, dict[str, float]]:
    timer = StageTimer(method.model, editor)
    with tempfile.TemporaryDirectory() as tmp, timer.active():
        start = time.perf_counter()
        run_protocol(method, records, Protocol("single"), reference, Path(tmp) / "rows.csv", resume=False,
                     progress=False, batch_size=batch_size)
        seconds = time.perf_counter() - start
    return seconds, timer.split(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 50, 100, 300])
    parser.add_argument("--n-records", type=int, default=16)
    parser.add_argument("--check-records", type=int, default=100, help="0 skips the acceptance check")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--checkpoint", default="checkpoints/small/medrek-lm-embedding")
    args = parser.parse_args()
    torch.manual_seed(0)
    editor = editor_or_untrained(args.checkpoint, method="medrek-lm-embedding", key_dim=512, n_tokens=30)
    tok = editor.model.tokenizer
    methods = {"unedited": (UneditedMethod(editor.model), None), editor.config.method: (RetrievalMethod(editor), editor),
               "ike": (InContextMethod(editor), editor)}
    rows = []
    for n_tokens in args.lengths:
        records = long_records(tok, args.n_records, n_tokens)
        tokens = target_tokens(tok, records)
        start = time.perf_counter()
        reference = unedited_locality_predictions(editor.model, records, args.batch_size)
        ref_seconds = time.perf_counter() - start
        for name, (method, retriever) in methods.items():
            seconds, split = evaluate(method, records, reference, retriever, args.batch_size)
            n_rows = len(records) * (2 + len(records[0].locality))
            rows.append({"target_tokens": n_tokens, "method": name, "records": len(records), "rows": n_rows,
                         "seconds": round(seconds, 3), "rows_per_s": round(n_rows / seconds, 3),
                         "target_tokens_per_s": round(tokens / seconds, 1), "reference_seconds": round(ref_seconds, 3),
                         "split": split})
            print(rows[-1])
    result: dict[str, Any] = {"lengths": args.lengths, "n_records": args.n_records, "batch_size": args.batch_size,
                              "editor": args.checkpoint, "rows": rows}
    ratios = {}
    lo, hi = min(args.lengths), max(args.lengths)
    for name in methods:
        by = {r["target_tokens"]: r["target_tokens_per_s"] for r in rows if r["method"] == name}
        ratios[name] = round(by[hi] / by[lo], 3)
    result[f"tokens_per_s_ratio_{hi}_vs_{lo}"] = ratios
    if args.check_records:
        records = long_records(tok, args.check_records, 100, seed=1)
        start = time.perf_counter()
        reference = unedited_locality_predictions(editor.model, records, args.batch_size)
        ref_seconds = time.perf_counter() - start
        seconds, split = evaluate(methods["unedited"][0], records, reference, None, args.batch_size)
        result["check_100x100"] = {"records": len(records), "reference_seconds": round(ref_seconds, 2),
                                   "scoring_seconds": round(seconds, 2), "total_seconds": round(ref_seconds + seconds, 2),
                                   "target_seconds": 180, "split": split}
        print(result["check_100x100"])
    save("long_targets", result)


if __name__ == "__main__":
    main()
