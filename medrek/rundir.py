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

__all__ = ["RunDir", "RunDirBusy", "NotARunDir", "LOCK_OWNER_ENV", "check_run_root"]

LOCK_OWNER_ENV = "MEDREK_RUN_LOCK_OWNER"  # pid whose lock this process may share (set by the pipeline)


class RunDirBusy(RuntimeError):
    """Another live process is using the run directory."""


class NotARunDir(ValueError):
    """A run directory would be a folder the kit did not make (the user's, or the repository's)."""


MARKER = ".medrek-run"  # written into every run directory the kit makes
RUN_ENTRIES = frozenset({"notebooks", "metrics", "figures", "checkpoints", "tables", "data", "params.yaml", ".lock",
                         MARKER, "README.md"})  # what a run directory may hold (plus datasheet_*.md)


def check_run_root(root: Path) -> None:
    """A run directory is absent, empty, or one the kit made (its marker, or nothing but run
    entries, as run directories made before the marker); anything else, the repository and its
    ``notebooks/`` included, is refused by name: the pipeline would overwrite files there."""
    if root.exists() and not root.is_dir():
        raise NotARunDir(f"run_dir {root}: is a file, not a folder; choose a new or empty folder")
    if not root.exists() or (root / MARKER).exists():
        return
    foreign = sorted(e for e in os.listdir(root) if e not in RUN_ENTRIES
                     and not (e.startswith("datasheet_") and e.endswith(".md")))
    if foreign:
        raise NotARunDir(f"run_dir {root}: not a medrek run directory (it holds {', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); its files could be overwritten, so nothing was "
                         "written. Choose a new or empty folder, e.g. runs/<name>")


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
        check_run_root(run.root)
        for sub in (run.notebooks, run.metrics, run.figures, run.checkpoints):
            sub.mkdir(parents=True, exist_ok=True)
        if not (run.root / MARKER).exists():
            write_text(run.root / MARKER, "a medrek-kit run directory (see medrek/rundir.py)\n")
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
