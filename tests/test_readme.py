"""The README's numbers are rendered from the files that hold them (tools/render_readme.py)."""

from __future__ import annotations

import importlib.util

from medrek.config import REPO_ROOT


def _renderer():
    spec = importlib.util.spec_from_file_location("render_readme", REPO_ROOT / "tools" / "render_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_numbers_are_what_the_files_say():
    renderer = _renderer()
    for page in sorted(set(renderer.PAGES.values())):
        text = (REPO_ROOT / page).read_text("utf-8")
        rendered = renderer.render_page(page, text)
        if rendered != text:
            diff = [(a, b) for a, b in zip(text.splitlines(), rendered.splitlines()) if a != b][:3]
            raise AssertionError(f"{page} is stale; run `python tools/render_readme.py`. First differences: {diff}")


def test_a_changed_result_changes_the_render(tmp_path, monkeypatch):
    renderer = _renderer()
    results = tmp_path / "results.csv"
    table = (renderer.SMALL / "results.csv").read_text()
    results.write_text(table)
    monkeypatch.setattr(renderer, "SMALL", tmp_path)
    for name in ("gate_calibration.csv",):
        (tmp_path / name).write_text((REPO_ROOT / "results" / "small" / "metrics" / name).read_text())
    before = renderer.eval_table()
    import pandas as pd

    frame = pd.read_csv(results)
    frame.loc[(frame["method"] == "unedited") & (frame["metric"] == "efficacy"), "value"] = 0.5
    frame.to_csv(results, index=False)
    after = renderer.eval_table()
    assert before != after and "| unedited | single | 0.500 |" in after
