"""Notebook 02 of the small run retrains the committed editors: results/small/metrics/retrain_check.json
(tools/retrain_check.py) says how close, and is recomputed here from the committed logs."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest

from medrek.config import REPO_ROOT


def _check_tool():
    spec = importlib.util.spec_from_file_location("retrain_check", REPO_ROOT / "tools" / "retrain_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _check_tool()
RECORDED = json.loads(TOOL.OUTPUT.read_text("utf-8")) if TOOL.OUTPUT.exists() else {}
# a retrain from scratch is the same editor up to the noise of 100 validation edits (a binomial
# standard deviation is at most 0.05); larger gaps mean training no longer makes what is committed.
# The paper presets' retrieval is still moving at step 300 (the committed MedREK's locality misfires
# went 0.07, 0.24, 0.19 over its three validations; the retrain's last one is 0.35), so theirs is wider.
TOLERANCE = {"medrek-lm-embedding": 0.10, "recipe-lm-embedding": 0.10, "medrek": 0.20, "recipe": 0.20}


def test_every_committed_editor_was_retrained():
    assert sorted(RECORDED) == sorted(TOOL.TRAINED)


@pytest.mark.parametrize("method", TOOL.TRAINED)
def test_the_recorded_check_is_what_the_logs_say(method):
    recomputed = TOOL.compare(method)
    for part in ("log", "validation", "minutes_of_steps"):
        assert recomputed[part] == RECORDED[method][part], f"{TOOL.OUTPUT.name}: {method}.{part} is stale; run tools/retrain_check.py"


@pytest.mark.parametrize("method", TOOL.TRAINED)
def test_a_retrain_reaches_the_committed_editor(method):
    old, new = RECORDED[method]["validation"]["committed"], RECORDED[method]["validation"]["retrained"]
    assert old["step"] == new["step"]
    gaps = {k: abs(old[k] - new[k]) for k in TOOL.VALIDATION}
    assert max(gaps.values()) <= TOLERANCE[method], f"{method}: retrain differs from the committed editor by {gaps}"


@pytest.mark.parametrize("method", TOOL.TRAINED)
def test_an_identical_trajectory_gives_identical_validation_and_weights(method):
    check = RECORDED[method]
    if check["log"]["first_different_step"] is not None:
        pytest.skip(f"{method}: its trajectory differs from step {check['log']['first_different_step']}")
    assert check["validation"]["committed"] == check["validation"]["retrained"]
    assert check["editor"]["identical_weights"] is not False, f"{method}: equal logs, different weights"


def test_the_log_comparison_finds_a_difference():
    log = pd.DataFrame({"step": [1, 2, 3], **{c: [1.0, 2.0, 3.0] for c in TOOL.LOSS_COLUMNS}})
    changed = log.copy()
    changed.loc[1, "q2"] = 2.0000001
    assert TOOL.compare_logs(log, log)["first_different_step"] is None
    found = TOOL.compare_logs(log, changed)
    assert found["first_different_step"] == 2 and found["steps_identical"] == 2
