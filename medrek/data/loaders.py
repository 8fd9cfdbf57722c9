"""Benchmark files -> :class:`EditRecord`, with validation that names file, record and field.

Three schemas are understood:

* **MedVersa**: one locality probe (``locality_prompt`` / ``locality_ground_truth``);
* **MedCF** (MedLaSA): four probes ``locality_{target,mapping,struc,tokenSem}_{prompt,ground_truth}``;
  ``test_new.json`` instead has ``locality_{relation,head,head_relation}_prompt`` with answers in
  ``..._prompt_ground_truth``;
* **MedFE**-style: long explanation targets with probes ``locality_topic_*`` and
  ``locality_tokenSem_*``.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .records import EditRecord, LocalityProbe, unencodable_at
from .sources import released_path

__all__ = [
    "DataError",
    "Schema",
    "SCHEMAS",
    "load_records",
    "load_medversa",
    "load_medcf",
    "load_medfe",
    "load_split",
    "load_requests",
    "load_named_split",
    "select_requests",
    "SUBSETS",
    "records_from_json",
]


class DataError(ValueError):
    """A data file is malformed; the message names the file, the record index and the field."""


@dataclass(frozen=True)
class Schema:
    """How one benchmark's JSON fields map onto :class:`EditRecord`."""

    name: str
    subject_field: str
    id_field: str | None
    # probe name -> (prompt field, answer field); the first alternative whose fields exist wins
    probe_sets: tuple[dict[str, tuple[str, str]], ...]
    ground_truth_required: bool = True


MEDVERSA = Schema(
    name="medversa",
    subject_field="subject_name",
    id_field="id",
    probe_sets=({"locality": ("locality_prompt", "locality_ground_truth")},),
)
MEDCF = Schema(
    name="medcf",
    subject_field="subject",
    id_field=None,
    probe_sets=(
        {
            name: (f"locality_{name}_prompt", f"locality_{name}_ground_truth")
            for name in ("target", "mapping", "struc", "tokenSem")
        },
        {
            name: (f"locality_{name}_prompt", f"locality_{name}_prompt_ground_truth")
            for name in ("relation", "head", "head_relation")
        },
    ),
)
MEDFE = Schema(
    name="medfe",
    subject_field="subject",
    id_field=None,
    probe_sets=(
        {name: (f"locality_{name}_prompt", f"locality_{name}_ground_truth") for name in ("topic", "tokenSem")},
    ),
    ground_truth_required=False,
)
SCHEMAS: dict[str, Schema] = {s.name: s for s in (MEDVERSA, MEDCF, MEDFE)}


def _text(raw: dict[str, Any], field: str, where: str, *, required: bool = True) -> str:
    if field not in raw:
        if not required:
            return ""
        raise DataError(f"{where}: missing field '{field}'")
    value = raw[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")
    _check_encodable(value, where, field)
    return value


def _check_encodable(value: str, where: str, field: str) -> None:
    at = unencodable_at(value)
    if at is not None:
        raise DataError(f"{where}: field '{field}' is not valid text (a lone surrogate at character {at}, which "
                        "cannot be encoded as UTF-8)")


def _rephrases(raw: dict[str, Any], where: str) -> tuple[str, ...]:
    value = raw.get("rephrase_prompt")
    if value is None:
        raise DataError(f"{where}: missing field 'rephrase_prompt'")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise DataError(f"{where}: field 'rephrase_prompt' must be a non-empty string or list of strings")
    for item in items:
        _check_encodable(item, where, "rephrase_prompt")
    return tuple(items)


def _record(raw: Any, index: int, schema: Schema, source: str) -> EditRecord:
    where = f"{source}: record {index}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    probe_fields = next(
        (ps for ps in schema.probe_sets if all(p in raw for p, _ in ps.values())), schema.probe_sets[0]
    )
    locality = {
        name: LocalityProbe(_text(raw, p, where), _text(raw, a, where))
        for name, (p, a) in probe_fields.items()
    }
    used = {"prompt", "target_new", "ground_truth", "rephrase_prompt", schema.subject_field}
    used |= {f for pair in probe_fields.values() for f in pair} | {schema.id_field}
    record_id = raw.get(schema.id_field, index) if schema.id_field else index
    return EditRecord(
        record_id=str(record_id),
        prompt=_text(raw, "prompt", where),
        target_new=_text(raw, "target_new", where),
        ground_truth=_text(raw, "ground_truth", where, required=schema.ground_truth_required),
        rephrase_prompts=_rephrases(raw, where),
        subject=_text(raw, schema.subject_field, where),
        locality=locality,
        meta={k: v for k, v in raw.items() if k not in used},
    )


def records_from_json(items: Any, schema: Schema | str, source: str = "<memory>") -> list[EditRecord]:
    """Validate already-parsed JSON (a list of objects) into records."""
    schema = SCHEMAS[schema] if isinstance(schema, str) else schema
    if not isinstance(items, list):
        raise DataError(f"{source}: expected a JSON list of records, got {type(items).__name__}")
    if not items:
        raise DataError(f"{source}: the file holds no records")
    records = [_record(raw, i, schema, source) for i, raw in enumerate(items)]
    first: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.record_id in first:
            raise DataError(f"{source}: records {first[record.record_id]} and {i} share the id "
                            f"{record.record_id!r}; ids must be unique")
        first[record.record_id] = i
    return records


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file, turning syntax errors into a :class:`DataError` naming the position."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def load_records(path: str | os.PathLike[str], schema: Schema | str) -> list[EditRecord]:
    """Load and validate any file in one of the known schemas."""
    return records_from_json(read_json(path), schema, str(path))


def load_medversa(path: str | os.PathLike[str]) -> list[EditRecord]:
    return load_records(path, MEDVERSA)


def load_medcf(path: str | os.PathLike[str]) -> list[EditRecord]:
    return load_records(path, MEDCF)


def load_medfe(path: str | os.PathLike[str]) -> list[EditRecord]:
    return load_records(path, MEDFE)


_LOADERS: dict[str, Callable[[str | os.PathLike[str]], list[EditRecord]]] = {
    "medversa": load_medversa,
    "medcf": load_medcf,
    "medfe": load_medfe,
}


def _check_dataset(dataset: str) -> None:
    if dataset not in _LOADERS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(_LOADERS)}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise DataError(f"limit must be a positive number of records or None, got {limit!r}")


def load_split(
    dataset: str, split: str, data_dir: str | os.PathLike[str] | None = None, limit: int | None = None
) -> list[EditRecord]:
    """Load a released split by name, e.g. ``load_split("medfe", "test")``, checksum verified.

    Datasets: ``medversa`` (train / valid / test), ``medcf`` (train, train_single, valid, test,
    test_single, test_new) and ``medfe`` (test)."""
    _check_dataset(dataset)
    _check_limit(limit)
    records = _LOADERS[dataset](released_path(f"{dataset}/{split}.json", data_dir))
    return records if limit is None else records[:limit]


SUBSETS = ("first", "shuffled")


def select_requests(records: Sequence[EditRecord], limit: int | None = None, subset: str = "first",
                    seed: int = 0) -> list[EditRecord]:
    """The ``limit`` requests a run evaluates (all when None).

    ``first`` takes the first ``limit`` in file order (the kit's default: the same requests for
    every seed). ``shuffled`` takes the first ``limit`` after a shuffle seeded with ``seed``, as
    the official evaluation does (with Python's ``random``; the official RNG stream is not
    reproduced, so the same idea, not the same requests).
    """
    if subset not in SUBSETS:
        raise DataError(f"subset must be one of {SUBSETS}, got {subset!r}")
    _check_limit(limit)
    records = list(records)
    if limit is None:
        return records
    if subset == "shuffled":
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        records = [records[i] for i in order]
    return records[:limit]


def load_requests(dataset: str, split: str, data_dir: str | os.PathLike[str] | None = None, *,
                  limit: int | None = None, subset: str = "first", seed: int = 0,
                  file: str | os.PathLike[str] | None = None) -> list[EditRecord]:
    """What a notebook evaluates: the released ``dataset/split`` (checksum verified), or ``file``
    (a JSON file in ``dataset``'s schema: your own data, read as it is, no checksum; relative
    paths from the repository root), then :func:`select_requests`."""
    _check_dataset(dataset)
    if file is None:
        records = load_split(dataset, split, data_dir)
    else:
        from ..config import repo_path

        records = load_records(repo_path(file), SCHEMAS[dataset])
    return select_requests(records, limit, subset, seed)


def subjects(records: Sequence[EditRecord]) -> list[str]:
    return sorted({r.subject for r in records})


def load_named_split(spec: str, dataset: str, data_dir: str | os.PathLike[str] | None = None) -> list[EditRecord]:
    """``spec`` is a split of ``dataset`` (``"train"``) or ``"dataset/split"`` (``"medversa/train"``:
    e.g. MEMIT's statistics for MedFE, which releases only a test split)."""
    name, _, split = spec.rpartition("/")
    return load_split(name or dataset, split, data_dir)
