"""Progress bars are left out of saved notebooks; every other output stays."""

from __future__ import annotations

import json

import pytest

from medrek.progress_bars import has_progress_bar, strip_file, strip_progress_bars

BAR = "ike single:   0%|          | 0/200 [00:00<?, ?it/s]"


def notebook() -> dict:
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2},
                       "text/plain": [BAR]}}
    stream = {"output_type": "stream", "name": "stderr",
              "text": ["Loading weights:   0%|  | 0/272\rLoading weights: 100%|██| 272/272\n",
                       "a warning that stays\n"]}
    only_bars = {"output_type": "stream", "name": "stderr", "text": "x:  50%|█  | 1/2\rx: 100%|██| 2/2\n"}
    table = {"output_type": "execute_result", "execution_count": 1, "metadata": {},
             "data": {"text/plain": ["   efficacy\n0      0.95"]}}
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"widgets": {"state": {}}},
            "cells": [{"cell_type": "code", "source": "", "metadata": {}, "execution_count": 1,
                       "outputs": [widget, stream, only_bars, table]},
                      {"cell_type": "markdown", "source": "# text", "metadata": {}}]}


def test_bars_go_and_everything_else_stays():
    nb = notebook()
    assert has_progress_bar(nb)
    assert strip_progress_bars(nb) == 4  # the widget, both streams, the widget state
    outputs = nb["cells"][0]["outputs"]
    assert [o["output_type"] for o in outputs] == ["stream", "execute_result"]
    assert outputs[0]["text"] == "a warning that stays\n"
    assert outputs[1] == notebook()["cells"][0]["outputs"][3]
    assert "widgets" not in nb["metadata"] and not has_progress_bar(nb)
    assert strip_progress_bars(nb) == 0  # idempotent


def test_strip_file_rewrites_only_when_something_changed(tmp_path):
    path = tmp_path / "run.ipynb"
    path.write_text(json.dumps(notebook()), "utf-8")
    assert strip_file(path) == 4
    assert not has_progress_bar(json.loads(path.read_text("utf-8")))
    stamp = path.stat().st_mtime_ns
    assert strip_file(path) == 0 and path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["run.ipynb"]  # no temporary file left


def test_a_malformed_notebook_is_named(tmp_path):
    path = tmp_path / "broken.ipynb"
    path.write_text("{not json", "utf-8")
    with pytest.raises(ValueError, match="broken.ipynb"):
        strip_file(path)
