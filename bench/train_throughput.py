"""Training throughput (samples per second) and peak memory of the trainer, as ratios in one run.

    python bench/train_throughput.py [--config small|smoke] [--steps 12]

For the chosen config it times the same steps with and without the length-bucketed LM forward
(one padded forward for all rows vs. length-sorted chunks of ``rows_per_chunk`` rows), after a
warm-up that fills the feature and locality caches. Writes bench/results/train_throughput_<config>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from common import save

from medrek import load_split
from medrek.models.registry import load_causal_lm
from medrek.train import Trainer, TrainConfig

CONFIGS = {
    "smoke": dict(lm="tiny-llama", encoder="tiny-bert", key_dim=16, n_tokens=2, n_heads=4, n_prototype_tokens=2,
                  batch_size=4),
    "small": dict(lm="smollm2-135m", encoder="minilm-l6", key_dim=512, n_tokens=3, n_heads=8, batch_size=8),
}


def time_steps(config: TrainConfig, records, lm, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, records, records[:8], tmp, lm=lm)
        for _ in range(2):  # warm-up: caches and allocator
            trainer.train_step()
        trainer.generator.manual_seed(config.seed)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    base = CONFIGS[args.config]
    records = load_split("medversa", "train", args.data_dir, limit=base["batch_size"] * (args.steps + 2))
    lm = load_causal_lm(base["lm"])
    common = dict(**base, steps=args.steps, eval_every=0, eval_size=8, progress=False, lr_encoder=1e-4, lr_prompt=1e-4)
    bucketed = time_steps(TrainConfig(**common, rows_per_chunk=8), records, lm, args.steps)
    padded = time_steps(TrainConfig(**common, rows_per_chunk=10**6), records, lm, args.steps)
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
    }
    print(json.dumps(result, indent=1))
    save(f"train_throughput_{args.config}", result)


if __name__ == "__main__":
    main()
