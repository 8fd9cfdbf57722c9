"""The run directory: one folder per run holding everything needed to trace a result.

::

    runs/<name>/
      params.yaml      copy of the params that made the run
      notebooks/       executed notebooks
      metrics/         tidy CSV / JSON
      figures/         PNG and PDF
      checkpoints/     safetensors + JSON
      .lock            pid of the process using it (one run at a time)

A relative run directory is taken from the repository root, whatever the current directory.
One process at a time may use a run directory: :meth:`RunDir.create` takes ``.lock`` and a
second process is refused with the holder's pid; a lock left by a dead process is taken over.
The pipeline passes its lock to the notebooks it runs through ``MEDREK_RUN_LOCK_OWNER``.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .config import repo_path
from .io import write_text

__all__ = ["RunDir", "RunDirBusy", "LOCK_OWNER_ENV"]

LOCK_OWNER_ENV = "MEDREK_RUN_LOCK_OWNER"  # pid whose lock this process may share (set by the pipeline)


class RunDirBusy(RuntimeError):
    """Another live process is using the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def _release(path: Path, pid: int) -> None:
    if _read_lock(path).get("pid") == pid:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def create(cls, root: str | os.PathLike[str], lock: bool = True) -> "RunDir":
        """Make the folders (a relative ``root`` is taken from the repository root) and, unless
        ``lock=False`` (readers), take the run directory's lock for this process."""
        run = cls(repo_path(root))
        for sub in (run.notebooks, run.metrics, run.figures, run.checkpoints):
            sub.mkdir(parents=True, exist_ok=True)
        if lock:
            run.acquire()
        return run

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def acquire(self) -> None:
        """Take ``.lock`` for this process (released at exit); refuse if a live process holds it."""
        pid, host = os.getpid(), socket.gethostname()
        shared = os.environ.get(LOCK_OWNER_ENV, "")
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = _read_lock(self.lock_path)
                holder = held.get("pid")
                if holder == pid or (shared and str(holder) == shared):
                    return  # ours, or our pipeline's
                if isinstance(holder, int) and held.get("host") == host and _alive(holder):
                    raise RunDirBusy(f"{self.root}: in use by process {holder} (since {held.get('since', '?')}); wait "
                                     f"for it to finish or use another run_dir (its lock: {self.lock_path})") from None
                # a lock from a dead process (or unreadable): take it over
                write_text(self.lock_path, json.dumps({"pid": pid, "host": host, "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                       "took_over_from": holder}))
                if _read_lock(self.lock_path).get("pid") == pid:
                    break
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps({"pid": pid, "host": host, "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
            break
        else:
            raise RunDirBusy(f"{self.root}: could not take {self.lock_path} (another process keeps taking it)")
        atexit.register(_release, self.lock_path, pid)

    def release(self) -> None:
        """Give the lock back now (it is also given back when the process exits)."""
        _release(self.lock_path, os.getpid())

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
