"""Training throughput on a GPU: samples/s, peak memory, step-time breakdown and GPU utilisation.

    python bench/train_gpu.py [--batch-sizes 16 64 256] [--precisions fp32 bf16] [--steps 20]
    python bench/train_gpu.py --device cpu --config smoke --batch-sizes 4 --steps 2   # a dry run

The small config (SmolLM2-135M-Instruct + all-MiniLM-L6-v2, the paper's ``medrek`` preset,
``rows_per_chunk`` 64) on MedVersa train records, for every batch size and precision: a warm-up
(features, the locality reference, CUDA kernels), then ``--steps`` steps timed as a user's run
goes (no synchronisation inside the step; GPU utilisation sampled every 50 ms by NVML or
nvidia-smi meanwhile), then ``--steps`` more with the trainer synchronising at each phase
boundary for the data / forward / backward / optimizer split. Writes
bench/results/train_gpu.json with the device's name (the goal: >= 600 samples/s at batch
16 in fp32 on one H100-class GPU).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time

import torch

from common import save

from medrek import load_split
from medrek.models.registry import load_causal_lm
from medrek.train import Trainer, TrainConfig

CONFIGS = {
    "small": dict(method="medrek", lm="smollm2-135m", encoder="minilm-l6", key_dim=512, n_tokens=3, n_heads=8,
                  chat_template="auto", rows_per_chunk=64),
    "smoke": dict(method="medrek", lm="tiny-llama", encoder="tiny-bert", key_dim=16, n_tokens=2, n_heads=4,
                  n_prototype_tokens=2, rows_per_chunk=64),
}
PHASES = ("data", "forward", "backward", "optimizer")


class Utilisation:
    """Mean GPU utilisation (%) over a block, sampled in a thread (None without NVML / nvidia-smi)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # no pynvml: ask nvidia-smi
            index = self.device.index or 0
            out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            time.sleep(0.05)

    def __enter__(self) -> "Utilisation":
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.device.type == "cuda":
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 1) if self.samples else None


def measure(base: dict, batch_size: int, precision: str, records, lm, device: str, steps: int) -> dict:
    config = TrainConfig(**base, batch_size=batch_size, precision=precision, steps=10**6, eval_every=0,
                         eval_size=8, progress=False, lr_encoder=1e-4, lr_prompt=1e-4, device=device)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, records, records[:8], tmp, lm=lm)
        for _ in range(3):  # features, the locality reference, kernels, allocator
            trainer.train_step()
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with Utilisation(dev) as util:
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            sync()
            seconds = time.perf_counter() - start
        trainer.synchronize_timings = True
        rows = [trainer.train_step() for _ in range(steps)]
    total = sum(r["seconds_" + p] for r in rows for p in PHASES)
    return {"batch_size": batch_size, "precision": precision, "steps": steps,
            "samples_per_second": round(batch_size * steps / seconds, 1),
            "seconds_per_step": round(seconds / steps, 4),
            "peak_memory_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None,
            "gpu_utilisation_percent": util.mean,
            "step_share": {p: round(sum(r["seconds_" + p] for r in rows) / total, 4) for p in PHASES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --device cpu for a dry run")
    base = CONFIGS[args.config]
    records = load_split("medversa", "train", args.data_dir)
    lm = load_causal_lm(base["lm"], device=args.device)
    rows = []
    for precision in args.precisions:
        for batch_size in args.batch_sizes:
            rows.append(measure(base, batch_size, precision, records, lm, args.device, args.steps))
            print(rows[-1], flush=True)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    save("train_gpu" if device.type == "cuda" else "train_gpu_dry_run",
         {"config": args.config, "device": name, "settings": base, "rows": rows})


if __name__ == "__main__":
    main()
