"""Memory growth: does retrieval hold when the memory holds many more edits than are scored?

The evaluated edits are stored first, then the memory is padded with other released edits (in
the order given: for MedVersa test, the rest of test, then valid, then train) up to ``stored``
edits. The evaluated edits' questions are then asked:

* ``prompt_own`` / ``rephrase_own``: the question fires its own edit;
* ``prompt_exact``: the question is verbatim a stored prompt and fires that edit (1.0 with
  ``exact_match``);
* ``locality_fires``: an unrelated question (the record's locality prompt) fires any edit;
* ``locality_fires_distinct``: the same, leaving out the locality prompts that ask the very
  question of another stored edit (hand-labelled pairs, :func:`load_locality_duplicates`: with
  every released edit stored, 30 of the first 200 test records' locality prompts are such
  paraphrases, and a retriever that fires on paraphrases rightly fires there);
* ``neighbour_fires``: a question on the same subject as an edit but asking another fact (see
  :func:`load_neighbours`) fires any edit; ``neighbour_own`` fires the very edit it neighbours.

Everything here works on query and key vectors, so a retrieval-only ladder over cached encoder
features takes seconds; :func:`editor_retrieval_rates` runs the same measurement through an
:class:`~medrek.Editor`.

:func:`run_growth` measures the same with the LM: besides efficacy, generality and locality per
stored size, with ``duplicates`` it scores locality on *distinct* prompts only
(``locality/distinct``, ``fired/distinct``), with ``neighbours`` it asks each evaluated edit's
neighbour question and compares the answer with the unedited LM's (``locality/neighbour``,
``fired/neighbour``), and for both how much of the answer a wrongly fired edit changes
(``changed_when_fired/distinct``, ``changed_when_fired/neighbour``: 1 - locality over the rows
where an edit fired, the share of answer positions whose prediction differs from the unedited
LM's; the mean is the answer-change rate given a misfire).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..data.records import EditRecord, records_sha256
from ..io import read_json_list
from ..memory import EditMemory, MemoryConfig

__all__ = ["Neighbour", "with_unedited_answers", "neighbour_records", "load_neighbours", "load_locality_duplicates", "padded_memory", "RetrievalProbes", "retrieval_rates",
           "probes_for", "vector_memory", "editor_retrieval_rates", "run_growth", "NEIGHBOURS_FILE",
           "VALID_NEIGHBOURS_FILE"]

NEIGHBOURS_FILE = Path(__file__).resolve().parent.parent / "data" / "medversa_test_neighbours.json"
VALID_NEIGHBOURS_FILE = Path(__file__).resolve().parent.parent / "data" / "medversa_valid_neighbours.json"  # calibration
DUPLICATES_FILE = Path(__file__).resolve().parent.parent / "data" / "medversa_test_locality_duplicates.json"


@dataclass(frozen=True)
class Neighbour:
    """A question written for one edit: the same organ, drug, test or eponym, another fact."""

    record_id: str  # the MedVersa test record it neighbours
    prompt: str
    answer: str = ""  # what the unedited LM answers (filled by :func:`with_unedited_answers`)


@torch.no_grad()
def with_unedited_answers(model, neighbours: Sequence[Neighbour], max_new_tokens: int = 12,
                          batch_size: int = 32) -> list[Neighbour]:
    """``neighbours`` with ``answer`` set to the unedited LM's greedy answer (``model``: an
    :class:`~medrek.models.edited_lm.EditedModel`; its chat template, if any): the locality
    reference of a question that has no released answer. An empty answer stays empty (such a
    neighbour is not scored)."""
    out = []
    for start in range(0, len(neighbours), batch_size):
        part = neighbours[start:start + batch_size]
        batch = model.encode_queries([n.prompt for n in part])
        new = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens, do_sample=False)
        texts = model.tokenizer.batch_decode(new, skip_special_tokens=True)
        out += [dataclasses.replace(n, answer=t.strip()) for n, t in zip(part, texts)]
    return out


def neighbour_records(neighbours: Sequence[Neighbour]) -> list[EditRecord]:
    """Records whose one locality probe (``neighbour``) is a neighbour question and its unedited
    answer, for :func:`~medrek.evaluate.protocols.unedited_locality_predictions`."""
    from ..data.records import LocalityProbe

    return [EditRecord(n.record_id, n.prompt, n.answer, "", (n.prompt,), "",
                       {"neighbour": LocalityProbe(n.prompt, n.answer)}) for n in neighbours]


def load_neighbours(path: str | Path = NEIGHBOURS_FILE) -> list[Neighbour]:
    """The kit's hand-written neighbour questions (``medrek/data/medversa_test_neighbours.json``),
    checked field by field. Evaluation only: they are about MedVersa test edits."""
    path = Path(path)
    rows = read_json_list(path, "neighbours", "neighbour questions")
    out = []
    for k, row in enumerate(rows):
        for name in ("record_id", "prompt"):
            if not isinstance(row, dict) or not isinstance(row.get(name), str) or not row[name].strip():
                raise ValueError(f"{path}: neighbour {k}: field '{name}' must be a non-empty string")
        out.append(Neighbour(row["record_id"], row["prompt"]))
    return out


def load_locality_duplicates(path: str | Path = DUPLICATES_FILE) -> dict[str, str]:
    """{test record id: id of the released edit whose prompt asks what its locality prompt asks},
    from the kit's hand labels (``medrek/data/medversa_test_locality_duplicates.json``)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        pairs = raw["pairs"]
        return {str(p["record_id"]): str(p["stored_record_id"]) for p in pairs if p["same_question"] is True}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read the locality duplicate labels ({exc!r})") from None


def padded_memory(evaluated: Sequence[EditRecord], padding: Sequence[EditRecord], stored: int) -> list[EditRecord]:
    """The ``stored`` edits of a memory-growth step: ``evaluated`` first, then ``padding`` in its
    order (records already among the evaluated skipped) up to ``stored``."""
    if stored < len(evaluated):
        raise ValueError(f"stored={stored} is fewer than the {len(evaluated)} evaluated edits")
    seen = {r.record_id for r in evaluated}
    out = list(evaluated)
    for record in padding:
        if len(out) == stored:
            break
        if record.record_id not in seen:
            seen.add(record.record_id)
            out.append(record)
    if len(out) < stored:
        raise ValueError(f"stored={stored} edits asked, but only {len(out)} distinct released edits are available")
    return out


@dataclass
class RetrievalProbes:
    """Query vectors (and their texts, for ``exact_match``) of the evaluated edits.

    ``own`` [n]: the memory row of each evaluated edit; ``neighbour_rows`` [m]: the row of the
    edit each neighbour question was written for."""

    own: torch.Tensor
    prompt: torch.Tensor  # [n, d]
    rephrase: torch.Tensor  # [n, d]
    locality: torch.Tensor  # [n_loc, d]
    prompt_texts: Sequence[str]
    rephrase_texts: Sequence[str]
    locality_texts: Sequence[str]
    neighbour: torch.Tensor | None = None  # [m, d]
    neighbour_texts: Sequence[str] = ()
    neighbour_rows: torch.Tensor | None = None  # [m]
    locality_duplicate: torch.Tensor | None = None  # [n_loc] bool: asks the question of an edit in the memory


def probes_for(evaluated: Sequence[EditRecord], stored: Sequence[EditRecord], embed,
               neighbours: Sequence[Neighbour] = (), duplicates: Mapping[str, str] | None = None) -> RetrievalProbes:
    """The :class:`RetrievalProbes` of ``evaluated`` against a memory holding ``stored`` in order
    (the evaluated first, as :func:`padded_memory` puts them); ``embed(texts)`` gives query
    vectors. Neighbours of edits not stored are left out; ``duplicates`` (see
    :func:`load_locality_duplicates`) marks locality prompts whose twin edit is stored."""
    row = {r.record_id: k for k, r in enumerate(stored)}
    names = sorted({n for r in evaluated for n in r.locality})
    loc = [(r, r.locality[n].prompt) for n in names for r in evaluated if n in r.locality]
    kept = [n for n in neighbours if n.record_id in row]
    prompts, rephrases = [r.prompt for r in evaluated], [r.rephrase for r in evaluated]
    return RetrievalProbes(
        torch.tensor([row[r.record_id] for r in evaluated]), embed(prompts), embed(rephrases),
        embed([t for _, t in loc]), prompts, rephrases, [t for _, t in loc],
        embed([n.prompt for n in kept]) if kept else None, [n.prompt for n in kept],
        torch.tensor([row[n.record_id] for n in kept], dtype=torch.long) if kept else None,
        torch.tensor([duplicates.get(r.record_id) in row for r, _ in loc]) if duplicates is not None else None)


def vector_memory(config: MemoryConfig, keys: torch.Tensor, prototype: torch.Tensor,
                  prompts: Sequence[str], verify=None) -> EditMemory:
    """An :class:`EditMemory` of keys [N, d] with empty prompt tokens (retrieval only)."""
    memory = EditMemory(dataclasses.replace(config, n_tokens=1, lm_hidden=1, prompt_store="vectors"), prototype, verify)
    ids = [f"row-{k}" for k in range(len(keys))]
    memory.add(ids, keys, torch.zeros(len(keys), 1, 1), [{"prompt": p} for p in prompts])
    return memory


def retrieval_rates(memory: EditMemory, probes: RetrievalProbes) -> dict[str, float]:
    """The retrieval rates of the module docstring for ``probes`` against ``memory``."""
    out: dict[str, float] = {}
    for kind in ("prompt", "rephrase"):
        r = memory.retrieve(getattr(probes, kind), list(getattr(probes, f"{kind}_texts")))
        out[f"{kind}_own"] = float((r.rows == probes.own).float().mean())
        out[f"{kind}_top1_own"] = float((r.top_rows == probes.own).float().mean())
        if kind == "prompt":  # of the prompts that are verbatim a stored prompt, those that fire their own edit
            exact = r.exact
            out["prompt_exact"] = float((r.rows[exact] == probes.own[exact]).float().mean()) if bool(exact.any()) else math.nan
    r = memory.retrieve(probes.locality, list(probes.locality_texts))
    out["locality_fires"] = float(r.fired.float().mean())
    if probes.locality_duplicate is not None:
        distinct = ~probes.locality_duplicate
        out["locality_fires_distinct"] = float(r.fired[distinct].float().mean())
        out["locality_duplicates"] = float(probes.locality_duplicate.sum())
    if probes.neighbour is not None and len(probes.neighbour):
        r = memory.retrieve(probes.neighbour, list(probes.neighbour_texts))
        out["neighbour_fires"] = float(r.fired.float().mean())
        out["neighbour_own"] = float((r.rows == probes.neighbour_rows).float().mean())
    out["stored"] = float(len(memory))
    return out


@torch.no_grad()
def editor_retrieval_rates(editor, evaluated: Sequence[EditRecord], padding: Sequence[EditRecord], stored: int,
                           neighbours: Sequence[Neighbour] = ()) -> dict[str, float]:
    """:func:`retrieval_rates` of an :class:`~medrek.Editor` with ``stored`` edits (the
    evaluated first, then ``padding``); the editor's own memory is put back afterwards."""
    records = padded_memory(evaluated, padding, stored)
    saved = editor.memory
    try:
        editor.memory = editor.new_memory()
        editor.edit([_request(r) for r in records], check_retrieval=False)
        probes = probes_for(evaluated, records, editor.encoder.query, neighbours)
        return retrieval_rates(editor.memory, probes)
    finally:
        editor.memory = saved


def _request(record: EditRecord) -> Mapping[str, str]:
    return {"id": record.record_id, "prompt": record.prompt, "target_new": record.target_new}


# ---------------------------------------------------------------------------------------------
# the memory-growth protocol with the LM: efficacy, generality and locality at each size
# ---------------------------------------------------------------------------------------------
def run_growth(method, evaluated: Sequence[EditRecord], padding: Sequence[EditRecord], sizes: Sequence[int],
               reference, path: str | Path, *, seed: int = 0, batch_size: int = 32, resume: bool = True,
               labels: Mapping[str, object] | None = None, max_length: int | None = None, progress: bool = True,
               duplicates: Mapping[str, str] | None = None, neighbours: Sequence[Neighbour] = (),
               neighbour_reference: Mapping[str, list[torch.Tensor]] | None = None,
               state_dir: str | Path | None = None):
    """Score ``evaluated`` with ``stored`` edits in the method's memory for each of ``sizes``:
    the evaluated edits plus ``padding`` (:func:`padded_memory`). One row per request and size
    (``stored`` and ``eval_at`` say the size) goes to ``path`` (CSV) after every size; a rerun
    resumes after the last finished size, and rows made by something else are refused
    (:class:`~medrek.evaluate.protocols.ResumeError`).

    ``duplicates`` (:func:`load_locality_duplicates`) adds the distinct-locality columns;
    ``neighbours`` (with answers, :func:`with_unedited_answers`) and ``neighbour_reference``
    (:func:`~medrek.evaluate.protocols.unedited_locality_predictions` of :func:`neighbour_records`)
    the neighbour columns (see the module docstring).

    A method that edits one request at a time in order (``edits_in_order``: GRACE, WISE) is
    grown, not rebuilt: the sizes are one sequential run, each size adding the next edits to
    those already held (the same result as editing all of them at once, for a fraction of the
    time). With ``state_dir`` it is saved there (``method.save``) after every finished size, and a
    rerun after a kill loads it and goes on from the last finished size instead of editing
    everything again."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..io import read_json, read_rows, write_csv, write_json
    from .protocols import ResumeError, _differences, _score_step

    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < len(evaluated):
        raise ValueError(f"memory sizes {sizes} must each hold the {len(evaluated)} evaluated edits")
    path = Path(path)
    pad_ids = records_sha256(padding)[:16]  # the padding's content, not only its ids
    signature = json.loads(json.dumps({
        "method": method.name, "identity": method.identity(), "protocol": "growth", "seed": seed,
        "evaluated": [r.record_id for r in evaluated][:3] + [len(evaluated)],
        "records_sha256": records_sha256(evaluated), "padding": pad_ids,
        "labels": dict(labels or {}), "max_length": max_length,
        **_probe_signature(evaluated, duplicates, neighbours)}, default=str))
    sig_path = path.with_suffix(".json")
    rows: list[dict] = []
    if resume and path.exists() and sig_path.exists():
        saved = read_json(sig_path)
        if {k: v for k, v in saved.items() if k != "sizes"} != signature:
            raise ResumeError(f"{path}: saved results were made by something else "
                              f"({_differences({k: v for k, v in saved.items() if k != 'sizes'}, signature)}); "
                              "delete the file or evaluate with resume=False")
        rows = read_rows(path).to_dict("records")
    write_json(sig_path, {**signature, "sizes": sizes})
    done = {int(r["stored"]) for r in rows}
    idx = list(range(len(evaluated)))
    in_order = method.edits_in_order
    method.restore()
    held = _resume_state(method, state_dir, padded_memory(evaluated, padding, max(done))) if in_order and done else 0
    try:
        for stored in tqdm([s for s in sizes if s not in done], desc=f"{method.name} growth", disable=not progress):
            if not in_order or held > stored:
                method.restore()
                held = 0
            memory = padded_memory(evaluated, padding, stored)
            method.edit(memory[held:])
            held = stored
            new = _score_step(method, evaluated, idx, reference, batch_size, max_length)
            if duplicates is not None:
                _add_distinct(new, {r.record_id for r in memory}, duplicates)
            if neighbours:
                _add_neighbours(method, new, neighbours, neighbour_reference, batch_size, max_length)
            if in_order and state_dir is not None:
                method.save(state_dir)
            for row in new:
                row.update(stored=stored, eval_at=stored, step=0)
            rows += new
            write_csv(path, pd.DataFrame(rows))
    finally:
        method.restore()
    frame = pd.DataFrame(rows)
    return frame[frame["stored"].isin(sizes)].reset_index(drop=True) if len(frame) else frame  # only the sizes asked


def _resume_state(method, state_dir: str | Path | None, held: Sequence[EditRecord]) -> int:
    """Load the state a grown method saved after its last finished size, if it holds exactly
    ``held`` (in order); the number of edits it holds (0: start again from no edits)."""
    import warnings

    folder = Path(state_dir) if state_dir is not None else None
    if folder is None or not folder.exists():
        return 0
    method.load(folder)  # refused by file and field if other settings saved it
    if [r.record_id for r in method.history] != [r.record_id for r in held]:
        warnings.warn(f"{folder}: the saved state holds {len(method.history)} edits, not the {len(held)} of the last "
                      "finished size; editing again from none", stacklevel=3)
        method.restore()
        return 0
    return len(held)


def _probe_signature(evaluated: Sequence[EditRecord], duplicates: Mapping[str, str] | None,
                     neighbours: Sequence[Neighbour]) -> dict:
    """What the extra probes of a growth run were (absent when not used, so rows saved without
    them keep their signature)."""
    ids = {r.record_id for r in evaluated}
    out: dict = {}
    if duplicates is not None:
        pairs = sorted((k, v) for k, v in duplicates.items() if k in ids)
        out["duplicates"] = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]
    if neighbours:
        rows = sorted((n.record_id, n.prompt, n.answer) for n in neighbours if n.record_id in ids)
        out["neighbours"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    return out


def _changed_when_fired(locality: float, fired: float) -> float:
    """How much of the answer a fired edit changed: 1 - locality, the share of the answer's
    positions whose prediction differs from the unedited LM's (NaN if nothing fired)."""
    return math.nan if not fired else 1.0 - float(locality)


def _add_distinct(rows: list[dict], stored_ids: set[str], duplicates: Mapping[str, str]) -> None:
    """Distinct-locality columns: NaN for a record whose locality prompt asks the question of a
    stored edit (its hand-labelled twin is in the memory)."""
    for row in rows:
        twin = duplicates.get(str(row["record_id"]))
        asks_stored = twin is not None and twin in stored_ids
        row["duplicate/locality"] = float(asks_stored)
        if asks_stored:
            row["locality/distinct"] = row["fired/distinct"] = row["changed_when_fired/distinct"] = math.nan
            continue
        fired = float(row.get("fired/locality", math.nan))
        row["locality/distinct"] = row["locality"]
        row["fired/distinct"] = fired
        row["changed_when_fired/distinct"] = _changed_when_fired(row["locality"], fired) if fired == fired else math.nan


def _add_neighbours(method, rows: list[dict], neighbours: Sequence[Neighbour], reference, batch_size: int,
                    max_length: int | None) -> None:
    """Neighbour columns: each row's neighbour question (one per record at most; none, or an
    empty unedited answer: NaN) scored against the unedited LM's answer."""
    from .metrics import agreement
    from .protocols import reports_fired

    if reference is None:
        raise ValueError("neighbours need their neighbour_reference (unedited_locality_predictions of neighbour_records)")
    position = {n.record_id: k for k, n in enumerate(neighbours)}
    asked = [(row, position[str(row["record_id"])]) for row in rows
             if str(row["record_id"]) in position and neighbours[position[str(row["record_id"])]].answer]
    for row in rows:
        row["locality/neighbour"] = row["fired/neighbour"] = row["changed_when_fired/neighbour"] = math.nan
    if not asked:
        return
    res = method.score([neighbours[k].prompt for _, k in asked], [neighbours[k].answer for _, k in asked],
                       batch_size=batch_size, max_length=max_length)
    for j, (row, k) in enumerate(asked):
        after = reference["neighbour"][k] if method.stateless else res.predictions[j]
        value = float(agreement([reference["neighbour"][k]], [after])[0])
        fired = float(res.fired[j]) if reports_fired(method) else math.nan
        row["locality/neighbour"] = value
        row["fired/neighbour"] = fired
        row["changed_when_fired/neighbour"] = _changed_when_fired(value, fired) if fired == fired else math.nan
