"""Shared helpers of the benchmark scripts: machine facts, timing, JSON out."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from medrek.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (they are only comparable within one file)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timing_into(fn: Callable[..., Any], seconds: dict[str, float], stage: str) -> Callable[..., Any]:
    """``fn`` that adds its wall time to ``seconds[stage]`` on every call (stage splits)."""
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start

    return timed


def latencies(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> dict[str, float]:
    """p50 / p99 / mean seconds of ``fn`` over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = sorted(timed(fn)[0] for _ in range(repeat))
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    return {"p50_s": statistics.median(times), "p99_s": p99, "mean_s": statistics.fmean(times), "repeat": repeat}


def editor_or_untrained(checkpoint: str, **config: Any):
    """The trained editor at ``checkpoint``, else an untrained one of ``config`` (the same cost
    for a speed benchmark), saying which."""
    from medrek import Editor, EditorConfig

    if Path(checkpoint, "editor.json").exists():
        return Editor.load(checkpoint)
    print(f"no checkpoint at {checkpoint}: an untrained {config.get('method', 'medrek')} editor (same cost)")
    return Editor.build(EditorConfig(**config))


def save(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (with the machine facts) atomically."""
    path = write_json(RESULTS / f"{name}.json", {"benchmark": name, "machine": machine(), **result})
    print(f"wrote {path}")
    return path
