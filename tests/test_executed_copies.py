"""``results/small/notebooks/`` holds a current executed copy of every notebook of the small run:
the quickstart and 01 to 05, each with the source cells of today's notebook (papermill's
injected parameters aside), relative paths only and no progress bars."""

from __future__ import annotations

import json
from pathlib import Path

from medrek.executed import has_machine_path, has_progress_bar
from medrek.pipeline import notebook_paths

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "results" / "small" / "notebooks"
# stage notebooks whose small-run copy is not current yet, with why (each editor's own training
# notebook sits next to it in checkpoints/small/<method>/02_train_medrek.ipynb)
NOT_YET_CURRENT: dict[str, str] = {}  # notebook -> why its executed copy may lag behind (none now)


def source_cells(notebook: dict) -> list[tuple[str, str]]:
    """(cell type, source) of every cell but papermill's injected parameters."""
    return [(c["cell_type"], "".join(c["source"])) for c in notebook["cells"]
            if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def test_every_notebook_of_the_small_run_has_a_current_executed_copy():
    wanted = {"00_quickstart": ROOT / "notebooks" / "00_quickstart.ipynb", **notebook_paths()}
    wanted = {k: v for k, v in wanted.items() if k not in NOT_YET_CURRENT}
    have = {p.stem: p for p in EXECUTED.glob("*.ipynb")}
    assert sorted(have) == sorted(wanted), f"executed copies {sorted(have)}, notebooks {sorted(wanted)}"
    for name, path in wanted.items():
        executed = json.loads(have[name].read_text("utf-8"))
        stale = source_cells(executed) != source_cells(json.loads(path.read_text("utf-8")))
        assert not stale, f"{have[name].relative_to(ROOT)} was executed from another version of {path.name}: run it again"
        assert not has_progress_bar(executed) and not has_machine_path(executed), f"{name}: clean it (medrek.executed)"
        ran = [c for c in executed["cells"] if c["cell_type"] == "code" and c.get("execution_count")]
        assert ran, f"{have[name].relative_to(ROOT)} holds no executed cell"


def test_the_training_notebooks_kept_next_to_the_editors_are_clean():
    kept = sorted((ROOT / "checkpoints" / "small").glob("*/02_train_medrek.ipynb"))
    assert len(kept) >= 3, "the editors' training notebooks are missing from checkpoints/small/<method>/"
    for path in kept:
        executed = json.loads(path.read_text("utf-8"))
        assert not has_progress_bar(executed) and not has_machine_path(executed), path.parent.name
