"""End-to-end wall times: ``make test`` and, from its log, the smoke pipeline per notebook.

    python bench/end_to_end.py

``make test`` runs the unit tests, the smoke pipeline (every notebook, tiny models) and nbval
on the executed notebooks; the venv must already exist (its creation is a one-off, reported in
the README, not here).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from common import save, timed

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    seconds, proc = timed(lambda: subprocess.run(["make", "test"], cwd=ROOT, capture_output=True, text=True))
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"make test failed ({proc.returncode}):\n{log[-3000:]}")
    notebooks = {name: float(s) for name, s in re.findall(r"\[medrek\] (\S+) done in ([\d.]+) s", log)}
    pytest_runs = [float(s) for s in re.findall(r"passed[^\n]* in ([\d.]+)s", log)]
    result = {"make_test_s": seconds, "smoke_notebooks_s": notebooks, "smoke_pipeline_s": sum(notebooks.values()),
              "pytest_runs_s": pytest_runs}
    save("end_to_end", result)


if __name__ == "__main__":
    main()
