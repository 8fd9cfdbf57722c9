"""The documented editing example (docs/method.md), run verbatim on the committed editor: the
edited question gets the new answer, and after ``remove`` the LM answers exactly as before."""

import contextlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (REPO / "docs" / "method.md").read_text("utf-8")
    section = text.split("## Editing", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/method.md: no python block in the Editing section"
    return match.group(1)


@pytest.mark.slow
def test_readme_editing_example_shows_the_new_answer_and_forgets_it(monkeypatch):
    code = readme_example()
    assert "checkpoints/small/medrek-lm-embedding" in code  # the committed editor, not a run's
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = dict(line.split(": ", 1) for line in out.getvalue().splitlines() if ": " in line)
    target = re.search(r'"target_new": "([^"]+)"', code).group(1).lower()
    assert target in lines["edited"].lower(), out.getvalue()
    assert target in lines["rephrased"].lower(), out.getvalue()
    assert target not in lines["before"].lower(), out.getvalue()
    assert lines["removed"] == lines["before"]  # remove restores the unedited answer exactly
