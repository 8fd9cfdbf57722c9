"""Time what the README promises, in a clean clone: set-up, each part of `make test`, and
`make quickstart`; writes bench/results/test_suite.json (rendered into the README by
tools/render_readme.py).

    git clone . /tmp/clean && cd /tmp/clean && python3 tools/time_test_suite.py
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(*command: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return seconds, out.stdout


def main() -> int:
    setup, _ = timed("make", "venv")
    unit, log = timed("make", "unit")
    passed = re.search(r"(\d+) passed", log)
    # `make notebooks`, its two commands timed apart
    subprocess.run(["rm", "-rf", "runs/smoke-test"], cwd=ROOT, check=True)
    pipeline, _ = timed(".venv/bin/python", "-m", "medrek.pipeline", "params/smoke.yaml", "--run-dir", "runs/smoke-test")
    load_during = os.getloadavg()[0]  # 1-minute load average after the unit tests and the smoke pipeline
    check, _ = timed("env", "MEDREK_SMOKE_RUN=runs/smoke-test", ".venv/bin/python", "-m", "pytest", "-p",
                     "no:cacheprovider", "tests/test_smoke_outputs.py")
    quickstart, _ = timed("make", "quickstart")
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "load_1min": round(load_during, 2),  # the machine's load while the suite ran (its own work included)
        "tests": int(passed.group(1)) if passed else None,
        "setup_s": round(setup, 1), "unit_s": round(unit, 1), "smoke_s": round(pipeline, 1),
        "smoke_check_s": round(check, 1), "make_test_s": round(unit + pipeline + check, 1),
        "quickstart_s": round(quickstart, 1),
    }
    path = ROOT / "bench" / "results" / "test_suite.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
