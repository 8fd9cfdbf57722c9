"""The run directory: one folder per run holding everything needed to trace a result.

::

    runs/<name>/
      params.yaml      copy of the params that made the run
      notebooks/       executed notebooks
      metrics/         tidy CSV / JSON
      figures/         PNG and PDF
      checkpoints/     safetensors + JSON
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunDir"]


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def create(cls, root: str | os.PathLike[str]) -> "RunDir":
        run = cls(Path(root))
        for sub in (run.notebooks, run.metrics, run.figures, run.checkpoints):
            sub.mkdir(parents=True, exist_ok=True)
        return run

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"
