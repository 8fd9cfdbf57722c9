"""Parameter sets (``params/*.yaml``) and dataclass configs, with errors for unknown keys.

A params file looks like::

    name: smoke            # the run directory is runs/<name>/
    data_dir: null         # null: $MEDREK_DATA_DIR, else the download cache
    seed: 42
    notebooks:
      01_build_medversa:   # keys must exist in that notebook's `parameters` cell
        split_sizes: [3000, 2000, 1000]

``data_dir``, ``run_dir`` and ``seed`` are passed to every notebook; each section adds its own.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

__all__ = ["ParamsError", "Params", "load_params", "check_keys", "REPO_ROOT", "repo_path"]

COMMON_KEYS = ("data_dir", "run_dir", "seed")
REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str | os.PathLike[str]) -> Path:
    """A path from params: absolute as given; a relative one is taken from the repository root
    (``checkpoints/small/medrek``), so it means the same from notebooks/, a run's executed
    copy or the shell."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path
TOP_LEVEL_KEYS = ("name", "data_dir", "seed", "notebooks")


class ParamsError(ValueError):
    """A params file or config mapping is malformed or names an unknown key."""


def check_keys(given: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Raise :class:`ParamsError` naming the first unknown key and the closest known one."""
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamsError(f"{where}: unknown parameter '{key}'{hint}; known: {', '.join(sorted(allowed))}")


@dataclass
class Params:
    """A parsed params file."""

    name: str
    path: Path
    data_dir: str | None = None
    seed: int = 42
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_notebook(self, notebook: str, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """The parameters papermill injects into ``notebook`` (common keys first)."""
        section = dict(self.notebooks.get(notebook) or {})
        common = {"data_dir": self.data_dir, "run_dir": str(run_dir), "seed": self.seed}
        return {**common, **section}


def load_params(path: str | os.PathLike[str]) -> Params:
    """Parse a params YAML file; structural errors name the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: no such params file") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: malformed YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    check_keys(raw, TOP_LEVEL_KEYS, str(path))
    notebooks = raw.get("notebooks") or {}
    if not isinstance(notebooks, dict) or not all(isinstance(v, (dict, type(None))) for v in notebooks.values()):
        raise ParamsError(f"{path}: 'notebooks' must map notebook names to parameter mappings")
    for nb, section in notebooks.items():
        if section and "run_dir" in section:
            raise ParamsError(f"{path}: notebooks.{nb}: 'run_dir' is set by the pipeline, not per notebook")
    seed = raw.get("seed", 42)
    if not isinstance(seed, int):
        raise ParamsError(f"{path}: 'seed' must be an integer, got {seed!r}")
    return Params(
        name=str(raw.get("name") or path.stem),
        path=path,
        data_dir=raw.get("data_dir"),
        seed=seed,
        notebooks={k: dict(v or {}) for k, v in notebooks.items()},
    )
