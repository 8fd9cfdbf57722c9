"""Render the README's numbers from the files that hold them, so they cannot drift.

Each section sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in README.md:

- ``suite``: what ``make test`` runs (tests collected now, notebook cells nbval re-executes) and
  how long it took when last timed (``bench/results/test_suite.json``, by
  ``tools/time_test_suite.py``);
- ``train-table``: validation of the small run's editors during training
  (``results/small/metrics/train_valid_*.csv``, ``gate_calibration.csv``);
- ``eval-table``: the small evaluation (``results/small/metrics/results.csv``);
- ``growth-table``: memory growth of the committed editors (``results/small/metrics/growth.csv``);
- ``ladder``: the retrieval ladder (``bench/results/retrieval_ladder.json``).

    python tools/render_readme.py           # rewrite README.md in place
    python tools/render_readme.py --check   # exit 1 if README.md differs (tests/test_readme.py)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "results" / "small" / "metrics"
SUITE = ROOT / "bench" / "results" / "test_suite.json"
TRAINED = ["medrek-lm-embedding", "medrek", "recipe"]
EVAL_SPLIT = "test-first200"
EVAL_METHODS = ["unedited", "medrek-lm-embedding", "medrek", "recipe", "ike", "ft-l"]


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def collected_tests() -> tuple[int, int]:
    """(all tests, slow tests) as pytest collects them now."""
    def count(*extra: str) -> int:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *extra,
                              "tests"], cwd=ROOT, capture_output=True, text=True)
        found = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", out.stdout)
        if not found:
            raise RuntimeError(f"pytest --collect-only gave no count:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        return int(found.group(1))
    return count(), count("-m", "slow")


def notebook_cells() -> int:
    """Code cells nbval re-executes in the smoke run: each notebook's own, plus papermill's injected one."""
    cells = 0
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text("utf-8"))
        cells += 1 + sum(c["cell_type"] == "code" for c in nb["cells"])
    return cells


def suite() -> str:
    tests, slow = collected_tests()
    lines = [f"`make test` runs **{tests} tests** (`pytest tests`; {slow} of them `slow`, on the real offline "
             f"weights), then the smoke pipeline (every notebook on tiny random models) and **{notebook_cells()} "
             "notebook cells** re-executed under nbval."]
    if SUITE.exists():
        t = json.loads(SUITE.read_text())
        lines.append(f"Last timed from a clean clone on {t['machine']} ({t['date']}, {t['tests']} tests passed then): "
                     f"set-up {t['setup_s'] / 60:.1f} min, unit tests {t['unit_s']:.0f} s, smoke pipeline "
                     f"{t['smoke_s']:.0f} s, nbval {t['nbval_s']:.0f} s; `make quickstart` "
                     f"{t['quickstart_s'] / 60:.1f} min with the venv in place.")
    return "\n".join(lines)


def train_table() -> str:
    rows = ["| method | step | gate | efficacy | generality | locality | retrieval (prompt) | retrieval (rephrase) "
            "| false retrieval (locality) |", "|---|---|---|---|---|---|---|---|---|"]
    calibration = pd.read_csv(SMALL / "gate_calibration.csv") if (SMALL / "gate_calibration.csv").exists() else None
    for method in TRAINED:
        path = SMALL / f"train_valid_{method}.csv"
        if not path.exists():
            continue
        grid = pd.read_csv(path).pivot_table(index="step", columns="metric", values="value")
        for step, v in grid.iterrows():
            rows.append(f"| {method} | {step} | prototype (paper) | {fmt(v['efficacy'])} | {fmt(v['generality'])} "
                        f"| {fmt(v['locality'])} | {fmt(v['retrieval_prompt'], 2)} | {fmt(v['retrieval_rephrase'], 2)} "
                        f"| {fmt(v['false_retrieval_locality'], 2)} |")
        if calibration is not None and method in set(calibration["method"]):
            c = calibration.set_index("method").loc[method]
            rows.append(f"| {method} | {grid.index.max()} | calibrated (margin {c['min_margin']:.2f}) "
                        f"| {fmt(c['valid_efficacy_after'])} | {fmt(c['valid_generality_after'])} "
                        f"| {fmt(c['valid_locality_after'])} | | | |")
    return "\n".join(rows)


def eval_table() -> str:
    results = pd.read_csv(SMALL / "results.csv")
    part = results[results["split"] == EVAL_SPLIT]
    rows = ["| method | protocol | efficacy | generality | locality | Avg | fluency | retr. prompt | retr. rephrase "
            "| fires on locality |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method in EVAL_METHODS:
        for protocol, batch in (("single", 1), ("batch", 100)):
            sel = part[(part["method"] == method) & (part["protocol"] == protocol) & (part["batch_size"] == batch)]
            if sel.empty:
                continue
            v = sel.set_index("metric")["value"]
            label = "single" if protocol == "single" else f"batch-{batch}"
            rows.append(f"| {method} | {label} | {fmt(v.get('efficacy'))} | {fmt(v.get('generality'))} "
                        f"| {fmt(v.get('locality'))} | {fmt(v.get('avg'))} | {fmt(v.get('fluency'), 2)} "
                        f"| {fmt(v.get('retrieved_prompt'))} | {fmt(v.get('retrieved_rephrase'))} "
                        f"| {fmt(v.get('fired/locality'))} |")
    return "\n".join(rows)


GROWTH_METHODS = ["medrek-lm-embedding", "ike", "medrek", "recipe"]


def growth_table() -> str:
    path = SMALL / "growth.csv"
    rows = ["| method | edits stored | efficacy | generality | locality | own edit fires (prompt) "
            "| own edit fires (rephrase) | unrelated question fires an edit |", "|---|---:|---|---|---|---|---|---|"]
    if not path.exists():
        return "\n".join(rows + ["| (not measured yet) | | | | | | | |"])
    results = pd.read_csv(path)
    for method in [m for m in GROWTH_METHODS if m in set(results["method"])]:
        grid = results[results["method"] == method].pivot_table(index="eval_at", columns="metric", values="value")
        for stored, v in grid.iterrows():
            rows.append(f"| {method} | {stored:,} | {fmt(v.get('efficacy'))} | {fmt(v.get('generality'))} "
                        f"| {fmt(v.get('locality'))} | {fmt(v.get('retrieved_prompt'))} "
                        f"| {fmt(v.get('retrieved_rephrase'))} | {fmt(v.get('fired/locality'))} |")
    return "\n".join(rows)


def ladder() -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    from render_retrieval_ladder import RESULTS, changes_table, ladder_table

    data = json.loads(RESULTS.read_text())
    return f"{ladder_table(data)}\n\n{changes_table(data)}"


SECTIONS = {"suite": suite, "train-table": train_table, "eval-table": eval_table, "growth-table": growth_table,
            "ladder": ladder}


def render(text: str) -> str:
    """``text`` with every known section replaced by what the files say now."""
    for name, make in SECTIONS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in text or end not in text:
            raise ValueError(f"README.md lacks the markers {start} ... {end}")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{make()}\n{end}{tail}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not what the files say")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text("utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print("README.md differs from what tools/render_readme.py renders; run it and commit", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
