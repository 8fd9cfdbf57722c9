"""The released MedREK data files: pinned URLs, checksums and where to find them.

Resolution order for the folder holding the files:

1. an explicit ``data_dir`` (a notebook parameter),
2. the ``MEDREK_DATA_DIR`` environment variable,
3. a user cache (``$MEDREK_CACHE_DIR/data`` or ``~/.cache/medrek/data``), filled by downloading
   each file from the pinned commit of the official repository.

Every file is checked against its sha256 before use; a mismatch is an error, never a warning.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_path

__all__ = [
    "COMMIT",
    "RELEASED_FILES",
    "ReleasedFile",
    "DataSourceError",
    "cache_dir",
    "resolve_data_dir",
    "released_path",
    "sha256_of",
]

COMMIT = "3f3f9c81e3169bb3841d40f09cfce853e46728b1"
_URL = "https://raw.githubusercontent.com/mylittleriver/MedREK/{commit}/{path}"
ENV_DATA_DIR = "MEDREK_DATA_DIR"
ENV_CACHE_DIR = "MEDREK_CACHE_DIR"


class DataSourceError(RuntimeError):
    """A released file is missing, corrupted, or cannot be downloaded."""


@dataclass(frozen=True)
class ReleasedFile:
    """One file of the release: its name in the kit, its path upstream, size and checksum."""

    name: str
    repo_path: str
    records: int
    sha256: str

    @property
    def url(self) -> str:
        return _URL.format(commit=COMMIT, path=self.repo_path)


_TABLE = [
    ("medversa/pool.json", "RECIPE/data/medmcqa_edit_gemini_2.0_flash_6000.json", 6000,
     "265ae3f24ec32a6788f0a2c5db5c2fcdbd8bb2ab142d8e263bb5cc808f21db9e"),
    ("medversa/train.json", "medversa/train.json", 3000,
     "4d1e53cab2717d7c4e1f47c79612c3278ebd65a859fc2e595e3ef40aa708d48b"),
    ("medversa/valid.json", "medversa/valid.json", 2000,
     "c171939a4c851a40256a6237d85d3dc97cf1ae2fe101de345edcd93a607c694f"),
    ("medversa/test.json", "medversa/test.json", 1000,
     "5a552e56082aa6968eb49a8078747eeeb09c658f5aa5d52eeb28256eb5d9eaed"),
    ("medcf/train.json", "medrek/data/meta-train/medcf/train.json", 2408,
     "55a780c14d7709b39ea73548ebff434062165b66df5bcd554a6013237da2336c"),
    ("medcf/train_single.json", "medrek/data/meta-train/medcf/train_single.json", 2247,
     "cf356745334cb09ff5e5d9fe91dbcc180911776ce4457669db0b18352420ae75"),
    ("medcf/valid.json", "medrek/data/meta-train/medcf/valid.json", 818,
     "5f86243108eb3406144ef898c7b299b132b749d1720bafd296b627ba8a3245fc"),
    ("medcf/test.json", "medrek/data/evaluation/medcf/test.json", 802,
     "6c14f471352dab5af72322e12652580904f1ccc9327d6fba62338bf23c40a243"),
    ("medcf/test_single.json", "medrek/data/evaluation/medcf/test_single.json", 755,
     "c976028383bf805235bfa75835b59112c547674ffce73bc447488ad4e5f882e4"),
    ("medcf/test_new.json", "medrek/data/evaluation/medcf/test_new.json", 802,
     "85873c6ccb08639d7138d41561f28d72d2688f92a4db771eff9249f0636ce44b"),
    # MedFE (long explanation targets); the release's meta-train copy has the same bytes
    ("medfe/test.json", "medrek/data/evaluation/medfe/test.json", 842,
     "01d452821c7e1e7a4461a10edf6f27393ada22f7469a7268ca0cadd85bb3389f"),
]
RELEASED_FILES: dict[str, ReleasedFile] = {row[0]: ReleasedFile(*row) for row in _TABLE}

# (path, size, mtime_ns) -> sha256, so a file is hashed once per process.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


def cache_dir() -> Path:
    """The kit's user cache (converted models, downloaded data)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medrek"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """Return ``(folder, may_download)``: explicit arg, then ``MEDREK_DATA_DIR``, then the cache."""
    if data_dir not in (None, ""):
        return _folder(Path(data_dir).expanduser(), "data_dir"), False
    if os.environ.get(ENV_DATA_DIR):
        return _folder(Path(os.environ[ENV_DATA_DIR]).expanduser(), ENV_DATA_DIR), False
    return cache_dir() / "data" / COMMIT[:12], True


def _folder(path: Path, source: str) -> Path:
    if path.exists() and not path.is_dir():
        raise DataSourceError(f"{source} points at {path}, which is a file: it must be the data folder that holds "
                              "medversa/ and medcf/ (e.g. the folder of SOURCES.md)")
    return path


def _download(spec: ReleasedFile, dest: Path) -> None:
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as resp:
            payload = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DataSourceError(
            f"could not download {spec.name} from {spec.url} ({exc}). Without network access, "
            f"point the kit at a folder holding the released files: pass data_dir=... "
            f"or set {ENV_DATA_DIR}=/path/to/data."
        ) from exc
    actual = hashlib.sha256(payload).hexdigest()
    if actual != spec.sha256:  # never cache a bad download
        raise DataSourceError(
            f"{spec.url}: downloaded {spec.name} has sha256 {actual}, expected {spec.sha256}"
        )
    with atomic_path(dest) as tmp:
        tmp.write_bytes(payload)


def released_path(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of a verified copy of the released file ``name`` (e.g. ``"medversa/train.json"``)."""
    if name not in RELEASED_FILES:
        known = ", ".join(sorted(RELEASED_FILES))
        raise DataSourceError(f"unknown released file {name!r}; known files: {known}")
    spec = RELEASED_FILES[name]
    folder, may_download = resolve_data_dir(data_dir)
    path = folder / name
    if not path.is_file():
        if not may_download:
            raise DataSourceError(
                f"{path}: missing. The data folder {folder} must hold the released file {name} "
                f"(upstream: {spec.url}). Set data_dir or {ENV_DATA_DIR} to the right folder, "
                f"or unset both to download into {cache_dir() / 'data'}."
            )
        _download(spec, path)
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise DataSourceError(
            f"{path}: sha256 mismatch for {name}: expected {spec.sha256}, got {actual}. "
            f"The file is corrupted or not the release at commit {COMMIT[:12]}; "
            f"replace it with a fresh copy from {spec.url}."
        )
    return path
