"""Atomic file writes: every output of the kit goes through these helpers.

A file is written to a temporary sibling and renamed into place, so a killed process never
leaves a half-written output and never destroys the previous version.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["CheckpointError", "FolderInUseError", "atomic_folder", "resolve_link", "atomic_path", "file_sha256", "read_checkpoint_meta", "read_json",
           "read_tensors", "recover_folder", "write_bytes", "write_csv", "write_text", "write_json", "read_rows",
           "folder_lock", "staged_name", "check_replaceable", "commit_staged", "finish_staged", "writable"]


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise a full disk or quota while writing ``path`` with the path in the message (the
    error from deep inside a writer names a temporary file, or nothing)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(exc.errno, f"{path}: {exc.strerror} while writing it; the previous version, if any, is "
                                     "untouched") from exc
        raise


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
    try:
        with _naming(path):
            yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _old_folder(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_folder(path: str | os.PathLike[str]) -> Path:
    """Finish or undo a folder swap that :func:`atomic_folder` did not complete.

    The swap is ``path -> .path.old``, ``temp -> path``, delete ``.path.old``. A crash after
    the first rename leaves no ``path``: the previous version is moved back. A crash after the
    second leaves a stale ``.path.old``: it is deleted. Unfinished temporary folders
    (``.path.*.tmp``) are deleted too. Returns ``path``.
    """
    path = resolve_link(path)
    old = _old_folder(path)
    if (old.exists() or old.is_symlink()) and not writable(path.parent):  # a load never writes
        if path.exists():
            return path  # the stale copy cannot be removed here, and the folder itself is whole
        raise OSError(f"{path}: a save was interrupted after moving the previous version to {old.name}, and "
                      f"{path.parent} is read-only, so it cannot be moved back; copy the folder somewhere writable "
                      "and load it there")
    if old.is_symlink():  # left by an older kit that swapped the link itself: the link goes, never its target
        old.unlink()
    elif old.exists():
        if path.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, path)
    if path.parent.exists() and writable(path.parent):
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    return path


class FolderInUseError(FileExistsError):
    """A save would replace a folder holding files the kit would not write there."""


def resolve_link(path: str | os.PathLike[str]) -> Path:
    """``path``, or the folder it links to: a save through a symbolic link writes at the link's
    target (the link stays), so that a load through the same link finds it."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_replaceable(path: Path, writing: set[str]) -> None:
    """``path`` may be replaced only if it is absent, empty, or holds nothing but names this
    save writes (what the kit wrote there before): a user's files are never deleted."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FolderInUseError(f"{path}: is a file, not a folder; nothing was written (save to another path)")
    foreign = sorted(set(os.listdir(path)) - writing)
    if foreign:
        raise FolderInUseError(f"{path}: holds files this save does not write ({', '.join(foreign[:5])}"
                               f"{', ...' if len(foreign) > 5 else ''}); replacing the folder would delete them, so "
                               "nothing was written. Save to a new or empty folder")


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; if the block succeeds, swap it in for
    ``path`` (which may exist) by renames, so that ``path`` always holds one complete version.
    A crash at any point is undone or finished by :func:`recover_folder` (called here first).

    An existing ``path`` is replaced only if it holds nothing but names the block wrote (a
    previous save of the same kind); otherwise :class:`FolderInUseError` names what is there
    and nothing changes. A symbolic link is followed: the swap happens at its target."""
    path = recover_folder(resolve_link(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700
    try:
        with _naming(path):
            yield tmp
        check_replaceable(path, set(os.listdir(tmp)))
        old = _old_folder(path)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a malformed file is reported with its path, line and column."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def read_json_list(path: str | os.PathLike[str], key: str, what: str, non_empty: bool = False) -> list[Any]:
    """The list under ``key`` of a JSON object file (the kit's hand-written probe files), with an
    error naming the file and ``what`` it holds when it is unreadable or not of that shape."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc})") from None
    rows = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(rows, list) or (non_empty and not rows):
        raise ValueError(f"{path}: expected an object with a {'non-empty ' if non_empty else ''}list '{key}'")
    return rows


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON with sorted keys and a trailing newline (byte-stable across reruns)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path: str | os.PathLike[str], frame: Any, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV, atomically."""
    return write_text(path, frame.to_csv(index=index, lineterminator="\n"))


# ---- saves of several files that land together --------------------------------------------
# A save writes each new file (or folder) under a staged name, then writes a journal naming the
# moves: the journal is the commit point. The moves are then made and the journal removed. A kill
# before the journal leaves the previous version whole (the staged parts are removed by the next
# save or load); a kill after it is rolled forward by :func:`finish_staged`. Saves and recoveries
# of one folder are serialised by an OS lock (filelock, as Hugging Face uses), across threads and
# processes, so a recovery never touches another live writer's staged parts.
JOURNAL = ".save-journal.json"
LOCK_NAME = ".save.lock"
_STAGED = ".staged-"  # staged names: .staged-<tag>-<final name>


def writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


@contextmanager
def folder_lock(folder: str | os.PathLike[str], name: str = LOCK_NAME, timeout: float = 600.0) -> Iterator[None]:
    """Hold ``folder/<name>`` (an OS file lock: threads and processes wait their turn)."""
    from filelock import FileLock, Timeout

    path = Path(folder) / name
    try:
        with FileLock(str(path), timeout=timeout):
            yield
    except Timeout:
        raise TimeoutError(f"{path}: another save of this folder has held its lock for {timeout:.0f} s") from None


def staged_name(tag: str, name: str) -> str:
    return f"{_STAGED}{tag}-{name}"


def commit_staged(folder: Path, moves: dict[str, str]) -> None:
    """Write the journal (``{final name: staged name}``, in the order to move them) and make the
    moves. The caller holds :func:`folder_lock` and has written every staged part."""
    write_json(folder / JOURNAL, {"moves": [[final, staged] for final, staged in moves.items()]})
    finish_staged(folder)


def finish_staged(folder: Path) -> bool:
    """Finish a save a kill interrupted (roll its journal forward) and remove staged parts of a
    save killed before its journal. Call under :func:`folder_lock`. Returns whether anything was
    found to do."""
    journal = folder / JOURNAL
    found = False
    if journal.exists():
        found = True
        for final, staged in read_json(journal)["moves"]:
            src, dst = folder / staged, folder / final
            if not (src.exists() or src.is_symlink()):
                continue  # moved before the kill
            if src.is_dir() and dst.exists():  # a folder: the old one out of the way first
                old = _old_folder(dst)
                if old.exists():
                    shutil.rmtree(old)
                os.replace(dst, old)
                os.replace(src, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(src, dst)
        journal.unlink()
    for stale in folder.glob(f"{_STAGED}*"):
        found = True
        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
    for stale in folder.glob(f".{_STAGED}*.tmp"):  # the temporary folder of a staged memory's own save
        found = True
        shutil.rmtree(stale, ignore_errors=True)
    return found


def read_rows(path: str | os.PathLike[str]):
    """A per-request CSV the kit wrote, as a DataFrame: ids and subjects read as strings, and only
    an empty cell is missing (pandas' default would read ids such as ``NA``, ``null``, ``nan`` or
    ``N/A`` as missing)."""
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"record_id": str, "subject": str})


class CheckpointError(ValueError):
    """A saved file is not a kit checkpoint, or does not fit the model it is loaded for."""


def read_checkpoint_meta(path: str | os.PathLike[str], expected_format: str, what: str) -> dict[str, Any]:
    """The JSON half of a checkpoint; refuses unreadable files and foreign formats by name."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable {what} ({exc})") from exc
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != expected_format:
        raise CheckpointError(f"{path}: not a medrek {what} (format {found!r}, expected {expected_format!r})")
    return meta


def read_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tensor half of a checkpoint: safetensors only, never a pickle."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from exc
