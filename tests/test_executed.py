"""Executed notebooks are saved without progress bars or machine paths; every other output stays."""

from __future__ import annotations

import json

import pytest

from medrek.executed import clean_file, has_machine_path, has_progress_bar, relative_paths, strip_progress_bars

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


def test_clean_file_rewrites_only_when_something_changed(tmp_path):
    path = tmp_path / "run.ipynb"
    path.write_text(json.dumps(notebook()), "utf-8")
    assert clean_file(path, tmp_path / 'repo') == 4
    assert not has_progress_bar(json.loads(path.read_text("utf-8")))
    stamp = path.stat().st_mtime_ns
    assert clean_file(path, tmp_path / 'repo') == 0 and path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["run.ipynb"]  # no temporary file left


def test_a_malformed_notebook_is_named(tmp_path):
    path = tmp_path / "broken.ipynb"
    path.write_text("{not json", "utf-8")
    with pytest.raises(ValueError, match="broken.ipynb"):
        clean_file(path)


def test_paths_under_the_repository_become_relative(tmp_path):
    root = tmp_path / "medrek-kit"
    nb = notebook()
    nb["cells"][0]["source"] = f'run_dir = "{root}/runs/small"\n'
    nb["cells"][0]["outputs"].append({"output_type": "stream", "name": "stdout",
                                      "text": [f"medrek: {root}/checkpoints/small/medrek\n", "/elsewhere/data\n"]})
    nb["metadata"]["papermill"] = {"input_path": f"{root}/notebooks/03_single_edit.ipynb"}
    assert has_machine_path(nb, root)
    assert relative_paths(nb, root) == 2  # the cell and the metadata
    assert nb["cells"][0]["source"] == 'run_dir = "runs/small"\n'
    assert nb["cells"][0]["outputs"][-1]["text"] == ["medrek: checkpoints/small/medrek\n", "/elsewhere/data\n"]
    assert nb["metadata"]["papermill"]["input_path"] == "notebooks/03_single_edit.ipynb"
    assert not has_machine_path(nb, root) and relative_paths(nb, root) == 0
