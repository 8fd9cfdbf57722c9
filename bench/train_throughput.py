"""Training throughput (samples per second) and peak memory of the trainer, as ratios in one run.

    python bench/train_throughput.py [--config small|smoke] [--steps 12] [--compare-ref REF]

For the chosen config it times the same steps with and without the length-bucketed LM forward
(one padded forward for all rows vs. length-sorted chunks of ``rows_per_chunk`` rows), after a
warm-up that fills the feature and locality caches, and splits the bucketed step's time into
data (batch assembly), forward, backward and optimizer (the trainer's own log columns).
``--compare-ref REF`` also times the trainer of git revision REF (a temporary worktree) and this
tree's, alternately, each in a fresh process, ``--repeat`` times (best of): the before / after
ratio of one run on one machine. Writes bench/results/train_throughput_<config>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save, timing_into

from medrek import load_split
from medrek.models.registry import load_causal_lm
from medrek.train import Trainer, TrainConfig

CONFIGS = {
    "smoke": dict(lm="tiny-llama", encoder="tiny-bert", key_dim=16, n_tokens=2, n_heads=4, n_prototype_tokens=2,
                  batch_size=4),
    "small": dict(lm="smollm2-135m", encoder="minilm-l6", key_dim=512, n_tokens=3, n_heads=8, batch_size=8),
}


PHASES = ("data", "forward", "backward", "optimizer")


class PerStepWork:
    """Wall time inside ``EditedModel.encode_pairs`` (tokenisation) and ``EditedModel.final_hidden``
    (unedited locality states) while active: the per-step CPU work the pre-tokenised rows moved out of the step."""

    def __init__(self) -> None:
        self.seconds = {"tokenise": 0.0, "locality_reference": 0.0}

    def __enter__(self) -> "PerStepWork":
        from medrek.editor import EditedModel

        self._saved = {name: getattr(EditedModel, name) for name in ("encode_pairs", "final_hidden")}
        for name, stage in (("encode_pairs", "tokenise"), ("final_hidden", "locality_reference")):
            setattr(EditedModel, name, timing_into(self._saved[name], self.seconds, stage))
        return self

    def __exit__(self, *exc) -> None:
        from medrek.editor import EditedModel

        for name, fn in self._saved.items():
            setattr(EditedModel, name, fn)


def time_steps(config: TrainConfig, records, lm, steps: int) -> tuple[float, dict[str, float | None]]:
    """Seconds for ``steps`` steps after a 2-step warm-up, the mean share of each logged phase
    (None before the trainer logged them) and of the per-step tokenisation and locality forwards."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, records, records[:8], tmp, lm=lm)
        for _ in range(2):  # warm-up: caches and allocator
            trainer.train_step()
        trainer.generator.manual_seed(config.seed)
        with PerStepWork() as work:
            start = time.perf_counter()
            rows = [trainer.train_step() for _ in range(steps)]
            seconds = time.perf_counter() - start
    shares: dict[str, float | None] = {
        p: round(sum(r[f"seconds_{p}"] for r in rows) / seconds, 4) if f"seconds_{p}" in rows[0] else None
        for p in PHASES}
    shares.update({f"in_step_{k}": round(v / seconds, 4) for k, v in work.seconds.items()})
    return seconds, shares


def measure_here(config_name: str, steps: int, data_dir: str | None) -> dict:
    """One bucketed measurement with whatever ``medrek`` this process imports."""
    import medrek

    base = CONFIGS[config_name]
    records = load_split("medversa", "train", data_dir, limit=base["batch_size"] * (steps + 2))
    lm = load_causal_lm(base["lm"])
    config = TrainConfig(**base, steps=steps, eval_every=0, eval_size=8, progress=False, lr_encoder=1e-4,
                         lr_prompt=1e-4, rows_per_chunk=8)
    seconds, phases = time_steps(config, records, lm, steps)
    return {"samples_per_second": round(base["batch_size"] * steps / seconds, 3), "phases": phases,
            "medrek": str(Path(medrek.__file__).parent)}


def compare_with(ref: str, config_name: str, steps: int, repeat: int, data_dir: str | None) -> dict:
    """Samples/s of revision ``ref`` and of this tree, alternately in fresh processes (best of ``repeat``)."""
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=repo, check=True, capture_output=True,
                            text=True).stdout.strip()
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), commit], cwd=repo, check=True,
                       capture_output=True)
        try:
            for _ in range(repeat):
                for label, tree in (("before", old_tree), ("after", repo)):
                    out = Path(tmp) / f"{label}.json"
                    cmd = [sys.executable, __file__, "--config", config_name, "--steps", str(steps), "--measure", str(out)]
                    if data_dir:
                        cmd += ["--data-dir", data_dir]
                    subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
                    got = json.loads(out.read_text())
                    if label not in best or got["samples_per_second"] > best[label]["samples_per_second"]:
                        best[label] = got
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=repo, capture_output=True)
    for label, tree in (("before", old_tree), ("after", repo)):
        if not best[label]["medrek"].startswith(str(tree)):
            raise RuntimeError(f"the {label} run imported medrek from {best[label]['medrek']}, not {tree}")
        best[label].pop("medrek")
    return {"ref": commit, "repeat": repeat, **best,
            "after_over_before": round(best["after"]["samples_per_second"] / best["before"]["samples_per_second"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--compare-ref", default=None, help="also time git revision REF against this tree")
    parser.add_argument("--repeat", type=int, default=2, help="alternating before/after runs (--compare-ref)")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one measurement -> JSON
    args = parser.parse_args()
    if args.measure:
        Path(args.measure).write_text(json.dumps(measure_here(args.config, args.steps, args.data_dir)))
        return
    base = CONFIGS[args.config]
    records = load_split("medversa", "train", args.data_dir, limit=base["batch_size"] * (args.steps + 2))
    lm = load_causal_lm(base["lm"])
    common = dict(**base, steps=args.steps, eval_every=0, eval_size=8, progress=False, lr_encoder=1e-4, lr_prompt=1e-4)
    bucketed, phases = time_steps(TrainConfig(**common, rows_per_chunk=8), records, lm, args.steps)
    padded, _ = time_steps(TrainConfig(**common, rows_per_chunk=10**6), records, lm, args.steps)
    samples = base["batch_size"] * args.steps
    result = {
        "config": args.config,
        "steps": args.steps,
        "batch_size": base["batch_size"],
        "samples_per_second_bucketed": round(samples / bucketed, 3),
        "samples_per_second_one_padded_forward": round(samples / padded, 3),
        "speedup_ratio": round(padded / bucketed, 3),
        "seconds_per_step_bucketed": round(bucketed / args.steps, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "step_share_bucketed": phases,
    }
    if args.compare_ref:
        result["compare"] = compare_with(args.compare_ref, args.config, args.steps, args.repeat, args.data_dir)
    print(json.dumps(result, indent=1))
    save(f"train_throughput_{args.config}", result)


if __name__ == "__main__":
    main()
