"""The smoke pipeline's checked cells against the committed reference (tools/smoke_reference.py).

``make notebooks`` runs the pipeline once, then this file with ``MEDREK_SMOKE_RUN`` naming the
run: the notebooks are not executed a second time. Numbers may differ by ``TOLERANCE`` (float
rounding across CPUs); every other token must be equal. Without ``MEDREK_SMOKE_RUN`` (the unit
stage) there is no run to check and the test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from smoke_reference import REFERENCE, collect  # noqa: E402

TOLERANCE = 0.02
NUMBER = re.compile(r"[-+]?\d+\.\d+|[-+]?\d+")
TOKEN = re.compile(f"{NUMBER.pattern}|\\S")  # a number, else one non-space character


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def same(expected: str, got: str) -> bool:
    a, b = tokens(expected), tokens(got)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if NUMBER.fullmatch(x) and NUMBER.fullmatch(y):
            if abs(float(x) - float(y)) > TOLERANCE:
                return False
        elif x != y:
            return False
    return True


def test_token_comparison_tolerates_rounding_only():
    assert same("efficacy 0.50  locality 1.00", "efficacy 0.51 locality 1.00")
    assert not same("efficacy 0.50", "efficacy 0.60")
    assert not same("medrek 0.5", "recipe 0.5")


def test_smoke_run_matches_the_reference():
    run = os.environ.get("MEDREK_SMOKE_RUN")
    if not run:
        pytest.skip("no smoke run to check (make notebooks sets MEDREK_SMOKE_RUN)")
    got = collect(Path(run))
    want = json.loads(REFERENCE.read_text("utf-8"))
    assert sorted(got) == sorted(want), "the smoke run executed other notebooks than the reference holds"
    for name in want:
        assert len(got[name]) == len(want[name]), f"{name}: {len(got[name])} checked cells, reference {len(want[name])}"
        for k, (w, g) in enumerate(zip(want[name], got[name])):
            assert same(w, g), (f"{name}, checked cell {k}: output differs from tests/fixtures/smoke_reference.json "
                                f"(regenerate with `make smoke-reference` if on purpose)\n--- reference\n{w}\n--- got\n{g}")


def test_smoke_run_saves_no_progress_bars_or_machine_paths():
    """Bars render live while the pipeline runs; the executed copies leave them out, and name
    paths under the repository relative to it."""
    from medrek.executed import has_machine_path, has_progress_bar

    run = os.environ.get("MEDREK_SMOKE_RUN")
    if not run:
        pytest.skip("no smoke run to check (make notebooks sets MEDREK_SMOKE_RUN)")
    executed = sorted((Path(run) / "notebooks").glob("*.ipynb"))
    assert executed, f"{run}/notebooks holds no executed notebook"
    with_bars = [p.name for p in executed if has_progress_bar(json.loads(p.read_text("utf-8")))]
    assert not with_bars, f"executed notebooks that kept progress bars: {with_bars}"
    with_paths = [p.name for p in executed if has_machine_path(json.loads(p.read_text("utf-8")))]
    assert not with_paths, f"executed notebooks that name the repository's absolute path: {with_paths}"
