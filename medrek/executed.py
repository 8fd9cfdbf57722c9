"""What the kit saves of an executed notebook: no progress bars, no machine paths.

Progress bars (tqdm's and transformers') render live while a notebook runs, in JupyterLab and
in a terminal; in a saved notebook they are frozen residue such as ``0%|          | 0/200``.
Paths under the repository print as ``/home/someone/medrek-kit/checkpoints/...`` on the machine
that ran it. The kit's pipeline and Make targets pass every executed notebook through
:func:`clean_file`; anyone else's papermill output can be cleaned the same way::

    python -m medrek.executed runs/try/notebooks/03_single_edit.ipynb

What goes: ``display_data`` outputs of Jupyter widgets (tqdm.auto's bars), the widget state
saved in the notebook's metadata, the bar lines of ``stream`` outputs (tqdm's text bars on
stderr, carriage-return updates included), and the repository root's prefix wherever a path
under it appears (outputs, injected parameters, papermill's metadata): ``checkpoints/...``.
Every other output stays as it was.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import REPO_ROOT
from .io import write_text

__all__ = ["strip_progress_bars", "relative_paths", "clean_file", "has_progress_bar", "has_machine_path",
           "PROGRESS_BAR"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# tqdm's text bar: "desc:  45%|████▌     | 9/20 [00:01<00:01,  8.1it/s]"
PROGRESS_BAR = re.compile(r"\d{1,3}%\|")


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _without_bars(text: str) -> str:
    """``text`` (a stream's) without its progress-bar lines; a line updated in place by carriage
    returns keeps its last segment that is not a bar."""
    lines = []
    for line in text.split("\n"):
        segments = [s for s in line.split("\r") if s and not PROGRESS_BAR.search(s)]
        if segments or not line:
            lines.append(segments[-1] if segments else "")
    out = "\n".join(lines)
    return "" if not out.strip() else out


def _keep(output: dict) -> dict | None:
    """``output`` without progress bars, or None if nothing else is in it."""
    kind = output.get("output_type")
    if kind in ("display_data", "update_display_data") and WIDGET_VIEW in output.get("data", {}):
        return None
    if kind == "stream":
        before = _text(output.get("text"))
        text = _without_bars(before)
        if text == before:
            return output
        return {**output, "text": text} if text else None
    return output


def strip_progress_bars(notebook: dict) -> int:
    """Remove progress bars from ``notebook`` (nbformat 4 JSON, in place); returns how many
    outputs were removed or changed."""
    changed = 0
    for cell in notebook.get("cells", []):
        if "outputs" not in cell:
            continue
        kept = []
        for output in cell["outputs"]:
            new = _keep(output)
            changed += new is not output
            if new is not None:
                kept.append(new)
        cell["outputs"] = kept
    if notebook.get("metadata", {}).pop("widgets", None) is not None:
        changed += 1
    return changed


def has_progress_bar(notebook: dict) -> bool:
    """Whether any saved output of ``notebook`` still shows a progress bar."""
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            texts = [_text(output.get("text"))] + [_text(v) for v in output.get("data", {}).values()
                                                    if isinstance(v, (str, list))]
            if WIDGET_VIEW in output.get("data", {}) or any(PROGRESS_BAR.search(t) for t in texts):
                return True
    return False


def _relative(value: Any, prefix: str) -> Any:
    if isinstance(value, str):
        return value.replace(prefix, "")
    if isinstance(value, list):
        return [_relative(v, prefix) for v in value]
    if isinstance(value, dict):
        return {k: _relative(v, prefix) for k, v in value.items()}
    return value


def relative_paths(notebook: dict, root: str | Path = REPO_ROOT) -> int:
    """Write every path under ``root`` in ``notebook`` (sources, outputs, metadata; in place)
    relative to it; returns how many cells (and the metadata) changed."""
    prefix = f"{Path(root).resolve()}/"
    changed = 0
    for cell in notebook.get("cells", []):
        new = _relative(cell, prefix)
        if new != cell:
            cell.clear()
            cell.update(new)
            changed += 1
    metadata = _relative(notebook.get("metadata", {}), prefix)
    if metadata != notebook.get("metadata", {}):
        notebook["metadata"] = metadata
        changed += 1
    return changed


def has_machine_path(notebook: dict, root: str | Path = REPO_ROOT) -> bool:
    """Whether ``notebook`` still names a path under ``root`` absolutely."""
    return f"{Path(root).resolve()}/" in json.dumps(notebook, ensure_ascii=False)


def clean_file(path: str | Path, root: str | Path = REPO_ROOT) -> int:
    """Strip the progress bars of the notebook at ``path`` and write the paths under ``root``
    relative to it, rewriting the file atomically only if something changed; returns the number
    of outputs and cells changed."""
    path = Path(path)
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a notebook (invalid JSON at line {exc.lineno}: {exc.msg})") from None
    changed = strip_progress_bars(notebook) + relative_paths(notebook, root)
    if changed:
        write_text(path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m medrek.executed NOTEBOOK.ipynb [...]", file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path}: {clean_file(path)} output(s) or cell(s) cleaned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
