"""Run every benchmark, then render the benchmark table (docs/benchmarks.md); the time it took is
the table's last line (bench/results/run.json). ``studies/long_edits.py`` (about 40 minutes) and
``studies/retrieval_ladder.py`` are run on their own.

    python bench/run.py [--full] [--only memory_scale edit_insertion ...]

``--full`` adds the 1e6 size to the memory benchmark (more minutes and GBs of RAM). Each script
writes bench/results/<name>.json; bench/render.py turns them into bench/results/TABLE.md and the
section of docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import save

HERE = Path(__file__).resolve().parent
STEPS = {
    "memory_scale": ["memory_scale.py"],
    "edit_insertion": ["edit_insertion.py"],
    "inference_overhead": ["inference_overhead.py"],
    "working_memory": ["working_memory.py"],
    "train_throughput": ["train_throughput.py", "--config", "smoke"],
    "train_throughput_small": ["train_throughput.py", "--config", "small", "--steps", "6"],
    "long_targets": ["long_targets.py"],
    "lifelong_cost": ["lifelong_cost.py"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="memory benchmark up to 1e6 stored edits")
    parser.add_argument("--only", nargs="+", choices=sorted(STEPS), default=list(STEPS))
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    for name in args.only:
        cmd = [sys.executable, str(HERE / STEPS[name][0]), *STEPS[name][1:]]
        if name == "memory_scale" and args.full:
            cmd.append("--full")
        start = time.perf_counter()
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True, cwd=HERE.parent)
        seconds[name] = time.perf_counter() - start
        print(f"== {name} took {seconds[name]:.0f} s", flush=True)
    if set(args.only) == set(STEPS):  # the whole suite: its wall time is itself a target (< 15 min)
        save("run" + ("_full" if args.full else ""), {"seconds": seconds, "total_s": sum(seconds.values()),
                                                       "full": args.full})
    subprocess.run([sys.executable, str(HERE / "render.py")], check=True, cwd=HERE.parent)


if __name__ == "__main__":
    main()
