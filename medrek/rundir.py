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

__all__ = ["RunDir", "RunDirBusy", "NotARunDir", "LOCK_OWNER_ENV", "check_run_root", "mark"]

LOCK_OWNER_ENV = "MEDREK_RUN_LOCK_OWNER"  # pid whose lock this process may share (set by the pipeline)


class RunDirBusy(RuntimeError):
    """Another live process is using the run directory."""


class NotARunDir(ValueError):
    """A run directory would be a folder the kit did not make (the user's, or the repository's)."""


MARKER = ".medrek-run"  # written into every run directory the kit makes
RUN_ENTRIES = frozenset({"notebooks", "metrics", "figures", "checkpoints", "tables", "data", "params.yaml", ".lock",
                         MARKER, "README.md"})  # what a run directory may hold (plus datasheet_*.md)


def check_run_root(root: Path) -> None:
    """A run directory is absent, empty, one the kit made (its ``.medrek-run`` marker) or a new one
    that holds only papermill's executed notebook under ``notebooks/``; anything else, the repository and its ``notebooks/`` included, is refused by name: the pipeline would
    overwrite files there. A run directory made before the marker existed is marked once, on
    purpose: ``python -m medrek.rundir mark runs/<name>``. Run entries that are symlinks are
    refused too: the kit writes only inside its run directory."""
    if root.exists() and not root.is_dir():
        raise NotARunDir(f"run_dir {root}: is a file, not a folder; choose a new or empty folder")
    if not root.exists():
        return
    entries = sorted(os.listdir(root))
    marker = root / MARKER
    if entries and not (marker.is_file() and not marker.is_symlink()) and not _papermill_output_only(root, entries):
        unmarked_run = all(e in RUN_ENTRIES or (e.startswith("datasheet_") and e.endswith(".md")) for e in entries)
        hint = (f"if it is a run directory made by an older medrek-kit, mark it once with `python -m medrek.rundir "
                f"mark {root}`" if unmarked_run else "choose a new or empty folder, e.g. runs/<name>")
        raise NotARunDir(f"run_dir {root}: not a medrek run directory (it holds {', '.join(entries[:5])}"
                         f"{', ...' if len(entries) > 5 else ''}; no {MARKER} marker); its files could be overwritten, "
                         f"so nothing was written: {hint}")
    linked = [e for e in entries if e in RUN_ENTRIES and (root / e).is_symlink()]
    if linked:
        raise NotARunDir(f"run_dir {root}: {linked[0]} is a symlink (to {os.readlink(root / linked[0])}); the kit "
                         "writes only inside its run directory, so nothing was written")


def _papermill_output_only(root: Path, entries: list[str]) -> bool:
    """A new run dir that holds nothing but ``notebooks/`` with executed notebooks in it: what
    ``papermill NB <run_dir>/notebooks/NB.ipynb -p run_dir <run_dir>`` has written when the
    notebook's first cell checks its run dir (the kit writes no notebook there itself)."""
    if entries != ["notebooks"] or (root / "notebooks").is_symlink() or not (root / "notebooks").is_dir():
        return False
    inside = os.listdir(root / "notebooks")
    return all(name.endswith(".ipynb") and (root / "notebooks" / name).is_file()
               and not (root / "notebooks" / name).is_symlink() for name in inside)


def mark(root: str | os.PathLike[str]) -> Path:
    """Mark a run directory made by an older medrek-kit (nothing but run entries) as the kit's."""
    path = repo_path(root).resolve()
    if not path.is_dir():
        raise NotARunDir(f"{path}: no such folder")
    foreign = [e for e in os.listdir(path) if e not in RUN_ENTRIES and not (e.startswith("datasheet_") and e.endswith(".md"))]
    if foreign:
        raise NotARunDir(f"{path}: holds {', '.join(sorted(foreign)[:5])}, which no run directory holds; not marked")
    write_text(path / MARKER, "a medrek-kit run directory (see medrek/rundir.py)\n")
    return path


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
        run = cls(repo_path(root).resolve())  # '..' and symlinks resolved before any check
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
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"


def main(argv: list[str] | None = None) -> int:
    """``python -m medrek.rundir mark FOLDER``: mark a run directory of an older kit."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m medrek.rundir", description=main.__doc__)
    ap.add_argument("command", choices=["mark"])
    ap.add_argument("folder")
    args = ap.parse_args(argv)
    try:
        print(f"marked {mark(args.folder)}")
    except NotARunDir as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
