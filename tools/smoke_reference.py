"""Reference outputs of the smoke pipeline's checked cells (those marked ``# NBVAL_CHECK_OUTPUT``).

    python tools/smoke_reference.py [runs/smoke-test]     (or: make smoke-reference)

Reads the executed notebooks of a smoke run and writes ``tests/fixtures/smoke_reference.json``:
per notebook, the text each checked cell printed, with times, paths, devices and addresses
replaced as ``tests/nbval_sanitize.cfg`` says. ``tests/test_smoke_outputs.py`` compares a new
smoke run with it (numbers within a tolerance), so the notebooks run once per ``make test``;
regenerate it when a notebook's checked output changes on purpose, and review the diff.
"""

from __future__ import annotations

import configparser
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "smoke_reference.json"
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
MARKER = "NBVAL_CHECK_OUTPUT"


def sanitizers() -> list[tuple[re.Pattern, str]]:
    parser = configparser.ConfigParser()
    parser.read(SANITIZE)
    return [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]


def cell_text(cell: dict) -> str:
    """What a cell printed: its streams and plain-text results, in order."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append("".join(out.get("text", "")))
        elif "data" in out and "text/plain" in out["data"]:
            parts.append("".join(out["data"]["text/plain"]))
    return "".join(parts)


def checked_outputs(notebook: Path) -> list[str]:
    """The sanitised text of every checked cell of an executed notebook."""
    cells = json.loads(notebook.read_text("utf-8"))["cells"]
    subs = sanitizers()
    texts = []
    for cell in cells:
        if cell.get("cell_type") == "code" and MARKER in "".join(cell.get("source", "")):
            text = cell_text(cell)
            for pattern, replace in subs:
                text = pattern.sub(replace, text)
            texts.append(text)
    return texts


def collect(run: Path) -> dict[str, list[str]]:
    notebooks = sorted((run / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SystemExit(f"{run}/notebooks: no executed notebooks (run the smoke pipeline first)")
    return {nb.stem: checked_outputs(nb) for nb in notebooks}


def main(argv: list[str]) -> int:
    run = Path(argv[0]) if argv else ROOT / "runs" / "smoke-test"
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(collect(run), indent=1, sort_keys=True) + "\n", "utf-8")
    print(f"wrote {REFERENCE.relative_to(ROOT)}; review its diff")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
