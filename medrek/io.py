"""Atomic file writes: every output of the kit goes through these helpers.

A file is written to a temporary sibling and renamed into place, so a killed process never
leaves a half-written output and never destroys the previous version.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["CheckpointError", "atomic_path", "read_checkpoint_meta", "read_json", "read_tensors", "write_bytes", "write_csv",
           "write_text", "write_json"]


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
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON with sorted keys and a trailing newline (byte-stable across reruns)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path: str | os.PathLike[str], frame: Any, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV, atomically."""
    return write_text(path, frame.to_csv(index=index, lineterminator="\n"))


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
