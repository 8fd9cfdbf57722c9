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


def test_timings_of_make_targets_are_written_in_one_place_only():
    """`make test` / `make quickstart` times live in the README's rendered suite section, `make bench`
    in the rendered benchmark table: a hand-written time elsewhere would drift from them."""
    import re

    pattern = re.compile(r"`make (test|quickstart|bench)`[^.\n]{0,80}?\b\d+(\.\d+)?\s*(s|min|minutes|seconds)\b")
    for page in ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]:
        text = (REPO_ROOT / page).read_text("utf-8")
        text = re.sub(r"<!-- (suite|bench):start -->.*?<!-- \1:end -->", "", text, flags=re.S)  # rendered
        found = pattern.search(text)
        assert found is None, f"{page}: a hand-written timing {found.group(0)!r}; render it from its measurement file"
