"""End-to-end wall times: the smoke pipeline (all notebooks, tiny models) and ``make test``.

    python bench/end_to_end.py [--skip-make-test]

Both run as subprocesses from the repository root with the current environment; the venv
must already exist (its creation is a one-off, reported in the README, not here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save, timed

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str]) -> float:
    seconds, proc = timed(lambda: subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True))
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-make-test", action="store_true")
    args = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        result["smoke_pipeline_s"] = run([sys.executable, "-m", "medrek.pipeline", "params/smoke.yaml",
                                          "--run-dir", str(Path(tmp) / "smoke")])
    if not args.skip_make_test:
        result["make_test_s"] = run(["make", "test"])
    save("end_to_end", result)


if __name__ == "__main__":
    main()
