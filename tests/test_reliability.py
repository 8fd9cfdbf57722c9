"""Nothing silently wrong: result identity, training-resume identity, thread safety, crash-safe
saves, all-or-nothing edits, the run-dir lock and typed parameters.

Every test here failed on the code before these guarantees existed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from medrek import CheckpointError, Editor
from medrek.baselines import RetrievalMethod
from medrek.config import ParamsError, check_value, load_params
from medrek.data import DataError, load_split
from medrek.data.sources import DataSourceError, resolve_data_dir
from medrek.editor import EditedModel
from medrek.evaluate import Protocol, ResumeError, run_protocol, unedited_locality_predictions
from medrek.memory import EditMemory, MemoryConfig
from medrek.pipeline import NOTEBOOKS_DIR, notebook_paths, validate_params
from medrek.rundir import LOCK_OWNER_ENV, RunDir, RunDirBusy
from medrek.train import Trainer
from medrek.train.checkpoint import load_training_state, save_training_checkpoint

from conftest import make_records
from test_trainer import _config, _records


# ---- 1. evaluation resume knows which editor made the rows --------------------------------------
def test_resume_refuses_rows_made_by_another_editor(tmp_path, tiny_lm, make_editor):
    recs = make_records()
    reference = unedited_locality_predictions(EditedModel(*tiny_lm), recs)
    path = tmp_path / "records.csv"
    run_protocol(RetrievalMethod(make_editor(seed=0)), recs, Protocol("batch", 3), reference, path, progress=False)
    other = make_editor(seed=1)  # same method, same sizes, other weights
    with pytest.raises(ResumeError, match=r"identity\.editor: saved [0-9a-f]+\.\.\. vs now [0-9a-f]+"):
        run_protocol(RetrievalMethod(other), recs, Protocol("batch", 3), reference, path, progress=False)
    # the same editor resumes (nothing to recompute), and other record texts are refused
    again = run_protocol(RetrievalMethod(make_editor(seed=0)), recs, Protocol("batch", 3), reference, path, progress=False)
    assert len(again) == len(recs)
    changed = [recs[0].__class__(**{**recs[0].__dict__, "target_new": "something else"}), *recs[1:]]
    with pytest.raises(ResumeError, match="records_sha256"):
        run_protocol(RetrievalMethod(make_editor(seed=0)), changed, Protocol("batch", 3), reference, path, progress=False)


# ---- 2. training resume knows the data ---------------------------------------------------------
def test_training_resume_refuses_other_data(tmp_path, tiny_lm):
    Trainer(_config(steps=2), _records(), _records(8, 100), tmp_path, lm=tiny_lm,
            data={"dataset": "medcf", "train_limit": None}).train()
    other = Trainer(_config(steps=4), _records(), _records(8, 100), tmp_path, lm=tiny_lm,
                    data={"dataset": "medversa", "train_limit": None})
    with pytest.raises(CheckpointError, match="other data \\(dataset: checkpoint 'medcf' vs now 'medversa'\\)"):
        other.train(resume=True)
    fewer = Trainer(_config(steps=4), _records(12), _records(8, 100), tmp_path, lm=tiny_lm,
                    data={"dataset": "medcf", "train_limit": 12})
    with pytest.raises(CheckpointError, match="train_limit: checkpoint None vs now 12"):
        fewer.train(resume=True)
    same = Trainer(_config(steps=4), _records(), _records(8, 100), tmp_path, lm=tiny_lm,
                   data={"dataset": "medcf", "train_limit": None})
    assert same.train(resume=True)["steps"] == 4


# ---- 3. concurrent use of one memory / one editor -------------------------------------------------
def _key(i: int, d: int = 16) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(i))


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_memory_under_concurrent_writers_readers_and_removes(index):
    config = MemoryConfig(key_dim=16, n_tokens=2, lm_hidden=4, min_similarity=-1e9, index=index)
    memory = EditMemory(config, torch.zeros(16))  # fires whenever the top-1 score is positive
    errors: list[BaseException] = []
    reads: list[tuple[int, str | None, torch.Tensor, dict | None]] = []

    def writer(w: int) -> None:
        rng = random.Random(w)
        mine: list[str] = []
        for step in range(60):
            ids = [w * 10_000 + step * 4 + j for j in range(rng.randint(1, 4))]
            memory.add([str(i) for i in ids], torch.stack([_key(i) for i in ids]),
                       torch.stack([torch.full((2, 4), float(i)) for i in ids]), [{"n": i} for i in ids])
            mine += map(str, ids)
            if step % 3 == 2:
                gone = rng.sample(mine, k=min(len(mine), rng.randint(1, 3)))
                memory.remove(gone)
                mine = [i for i in mine if i not in gone]

    def reader(r: int) -> None:
        rng = random.Random(100 + r)
        for _ in range(150):
            i = rng.choice([w * 10_000 + s for w in range(3) for s in range(0, 240, 3)])
            found = memory.lookup((_key(i) * 5).reshape(1, -1))
            reads.append((i, found.ids[0], found.prompts[0], found.requests[0]))

    def guard(fn, arg):
        try:
            fn(arg)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(writer, w)) for w in range(3)]
    threads += [threading.Thread(target=guard, args=(reader, r)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    # the stored rows agree: every id with its own key, prompt and request, and the index with them
    assert len(memory.ids) == len(memory.requests) == memory.keys.shape[0] == memory.prompts.shape[0]
    assert memory._index is None if index == "flat" else memory._index.ntotal == len(memory.ids)
    for row, edit_id in enumerate(memory.ids):
        i = int(edit_id)
        assert torch.equal(memory.keys[row], _key(i)) and bool((memory.prompts[row] == i).all())
        assert memory.requests[row] == {"n": i} and memory._rows[edit_id] == row
    # every read was consistent: what fired came with that edit's own prompt tokens and request
    assert reads
    for _, edit_id, prompt, request in reads:
        if edit_id is not None:
            assert bool((prompt == int(edit_id)).all()) and request == {"n": int(edit_id)}
        else:
            assert bool((prompt == 0).all()) and request is None
    # and a lookup equals one in a memory built single-threaded from the surviving edits
    reference = EditMemory(config, torch.zeros(16))
    reference.add(list(memory.ids), torch.stack([_key(int(i)) for i in memory.ids]),
                  torch.stack([torch.full((2, 4), float(i)) for i in memory.ids]), [{"n": int(i)} for i in memory.ids])
    probe = torch.stack([_key(i) * 5 for i in range(0, 30_000, 97)])
    got, want = memory.lookup(probe), reference.lookup(probe)
    assert got.ids == want.ids and torch.equal(got.prompts, want.prompts)


def test_editor_is_safe_for_concurrent_edits_and_reads(make_editor):
    editor = make_editor(min_similarity=-1e9)
    editor.memory.prototype_key.zero_()  # shared q/k: a stored question scores q.q > 0 and fires
    questions = [f"Which drug treats disease number {i}?" for i in range(40)]
    errors: list[BaseException] = []
    seen: list[tuple[str, torch.Tensor]] = []

    editor.edit([{"id": f"q{k}", "prompt": questions[k], "target_new": f"drug{k}"} for k in range(2)])

    def writer(w: int) -> None:
        for k in range(2 + w, 40, 2):
            editor.edit({"id": f"q{k}", "prompt": questions[k], "target_new": f"drug{k}"})
            if k % 5 == 4:
                editor.remove(f"q{k - 2}")

    def reader(r: int) -> None:
        for k in range(400):  # bounded; stops early once the writers are done
            if k > 20 and not any(t.is_alive() for t in threads[:2]):
                break
            found = editor.lookup([questions[(k * 7 + r) % 40]])
            if found is not None and found.ids[0] is not None:
                seen.append((found.ids[0], found.prompts[0].clone()))

    def guard(fn, arg):
        try:
            fn(arg)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(f, i)) for f in (writer, reader) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    memory = editor.memory
    assert len(memory.ids) == memory.keys.shape[0] == memory.prompts.shape[0]
    # reference, single-threaded: each id's key and prompt tokens as encode_edits makes them
    with torch.no_grad():
        keys, prompts = editor.encode_edits([questions[int(i[1:])] for i in memory.ids],
                                            [f"drug{int(i[1:])}" for i in memory.ids])
    torch.testing.assert_close(memory.keys, keys)
    torch.testing.assert_close(memory.prompts, prompts)
    with torch.no_grad():
        all_prompts = editor.encode_edits(questions, [f"drug{k}" for k in range(40)])[1]
    assert len(seen) > 10, len(seen)
    for edit_id, prompt in seen:
        torch.testing.assert_close(prompt, all_prompts[int(edit_id[1:])])


# ---- 4. memory saves are one folder swap, with checksums --------------------------------------
def _small_memory(n: int, offset: int = 0) -> EditMemory:
    memory = EditMemory(MemoryConfig(key_dim=16, n_tokens=2, lm_hidden=4), torch.zeros(16))
    ids = [str(offset + i) for i in range(n)]
    memory.add(ids, torch.stack([_key(offset + i) for i in range(n)]), torch.ones(n, 2, 4), [{"i": i} for i in ids])
    return memory


def _failing(original, n):
    """``original`` that raises on its n-th call: a crash at that point of a save."""
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(f"injected failure at call {n}")
        return original(*args, **kwargs)

    return failing


def _inject(monkeypatch, module, name, n):
    monkeypatch.setattr(module, name, _failing(getattr(module, name), n))


# the save sequence: tensors file, JSON (a rename), folder -> .old, temp -> folder, delete .old
@pytest.mark.parametrize("fail", [("save_file", 1), ("replace", 1), ("replace", 2), ("replace", 3), ("rmtree", 1)])
def test_a_crash_at_any_point_of_a_memory_save_loses_nothing(tmp_path, monkeypatch, fail):
    import medrek.memory as memory_module

    old, new = _small_memory(3), _small_memory(5, offset=100)
    old.save(tmp_path / "memory")
    name, n = fail
    _inject(monkeypatch, {"save_file": memory_module, "replace": os, "rmtree": shutil}[name], name, n)
    with pytest.raises(OSError, match="injected"):
        new.save(tmp_path / "memory")
    monkeypatch.undo()
    loaded = EditMemory.load(tmp_path / "memory")  # the next start: the old or the new memory, whole
    assert loaded.ids in (old.ids, new.ids)
    assert torch.equal(loaded.keys, (old if loaded.ids == old.ids else new).keys)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["memory"]  # load cleaned up
    new.save(tmp_path / "memory")  # and later saves work
    assert EditMemory.load(tmp_path / "memory").ids == new.ids


def test_unsaveable_request_leaves_the_saved_memory_whole(tmp_path):
    good = _small_memory(3)
    good.save(tmp_path / "memory")
    bad = _small_memory(2, offset=50)
    bad.add(["x"], _key(7).reshape(1, -1), torch.ones(1, 2, 4), [{"target_new": b"bytes"}])
    with pytest.raises(ValueError, match="cannot be saved as JSON.*nothing was written"):
        bad.save(tmp_path / "memory")
    assert EditMemory.load(tmp_path / "memory").ids == good.ids


def test_mixed_memory_files_are_refused(tmp_path):
    _small_memory(3).save(tmp_path / "a")
    _small_memory(3, offset=10).save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "memory.safetensors", tmp_path / "a" / "memory.safetensors")
    with pytest.raises(CheckpointError, match="sha256 differs.*not one saved memory"):
        EditMemory.load(tmp_path / "a")


# ---- 5. training checkpoint saves: every crash window ------------------------------------------
# the save sequence: editor weights, editor.json, trainer tensors, trainer.json (renames 1-3 inside
# the temporary folder), last -> .last.old (4), temp -> last (5), delete .last.old
@pytest.mark.parametrize("fail", [("save_file", 1), ("replace", 1), ("replace", 3), ("replace", 4), ("replace", 5),
                                  ("rmtree", 1)])
def test_a_crash_at_any_point_of_a_checkpoint_save_loses_nothing(tmp_path, make_editor, monkeypatch, fail):
    import medrek.train.checkpoint as checkpoint_module

    editor = make_editor()
    opt = torch.optim.Adam(editor.prompt_encoder.parameters())
    folder = tmp_path / "last"
    save_training_checkpoint(folder, editor, opt, {}, {"step": 1})
    name, n = fail
    _inject(monkeypatch, {"save_file": checkpoint_module, "replace": os, "rmtree": shutil}[name], name, n)
    with pytest.raises(OSError, match="injected"):
        save_training_checkpoint(folder, editor, opt, {}, {"step": 2})
    monkeypatch.undo()
    assert load_training_state(folder)[1]["step"] in (1, 2)  # the next start recovers a whole one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    save_training_checkpoint(folder, editor, opt, {}, {"step": 3})
    assert load_training_state(folder)[1]["step"] == 3


def test_training_resumes_after_a_crash_between_the_renames(tmp_path, tiny_lm):
    Trainer(_config(steps=2), _records(), _records(8, 100), tmp_path, lm=tiny_lm).train()
    last = tmp_path / "checkpoints" / "medrek" / "last"
    os.replace(last, last.with_name(".last.old"))  # the crash window that used to restart from step 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "training from step 0"
        assert Trainer(_config(steps=4), _records(), _records(8, 100), tmp_path, lm=tiny_lm).train(resume=True)["steps"] == 4
    log = pd.read_csv(tmp_path / "metrics" / "train_log_medrek.csv")
    assert log["step"].tolist() == [1, 2, 3, 4]


def test_checkpoint_save_recovers_a_missing_last_and_a_stale_old(tmp_path, make_editor):
    editor = make_editor()
    opt = torch.optim.Adam(editor.prompt_encoder.parameters())
    folder = tmp_path / "last"
    save_training_checkpoint(folder, editor, opt, {}, {"step": 1})
    os.replace(folder, tmp_path / ".last.old")  # crash after the first rename: no "last"
    assert load_training_state(folder)[1]["step"] == 1 and not (tmp_path / ".last.old").exists()
    shutil.copytree(folder, tmp_path / ".last.old")  # crash after the second rename: a stale ".last.old"
    (tmp_path / ".last.abc123.tmp").mkdir()  # and an unfinished temporary folder
    save_training_checkpoint(folder, editor, opt, {}, {"step": 2})  # once failed with "Directory not empty"
    assert load_training_state(folder)[1]["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_resume_without_checkpoint_says_it_restarts(tmp_path, tiny_lm):
    Trainer(_config(steps=2), _records(), _records(8, 100), tmp_path, lm=tiny_lm).train()
    shutil.rmtree(tmp_path / "checkpoints" / "medrek" / "last")
    with pytest.warns(UserWarning, match="no checkpoint at .*from step 0"):
        Trainer(_config(steps=2), _records(), _records(8, 100), tmp_path, lm=tiny_lm).train(resume=True)


# ---- 6. bad values are refused by name -----------------------------------------------------------
@pytest.mark.parametrize("target", [5, None, ["a"], float("nan"), b"bytes", "  "])
def test_edit_refuses_non_string_targets(make_editor, target):
    editor = make_editor()
    with pytest.raises(ValueError, match=r"edit request 0: 'target_new' must be a non-empty string"):
        editor.edit({"prompt": "Which drug?", "target_new": target})
    assert len(editor.memory) == 0


def test_limits_must_be_positive(data_dir):
    with pytest.raises(DataError, match="limit must be a positive number"):
        load_split("medversa", "test", data_dir, limit=-1)
    with pytest.raises(DataError, match="limit must be a positive number"):
        load_split("medversa", "train", data_dir, limit=0)


def test_memory_of_another_editor_is_refused(tmp_path, tiny_lm, make_editor):
    from conftest import REQUESTS

    a, b = make_editor(seed=0), make_editor(seed=1, min_similarity=0.5)
    a.save(tmp_path / "a")
    b.edit(REQUESTS)
    b.save(tmp_path / "b", with_memory=True)
    shutil.copytree(tmp_path / "b" / "memory", tmp_path / "a" / "memory")
    with pytest.raises(CheckpointError, match="min_similarity: memory 0.5 vs editor None"):
        Editor.load(tmp_path / "a", lm=tiny_lm, with_memory=True)
    c = make_editor(seed=1)  # same settings as a, other weights
    c.edit(REQUESTS)
    c.save(tmp_path / "c", with_memory=True)
    shutil.rmtree(tmp_path / "a" / "memory")
    shutil.copytree(tmp_path / "c" / "memory", tmp_path / "a" / "memory")
    with pytest.raises(CheckpointError, match="made by another editor"):
        Editor.load(tmp_path / "a", lm=tiny_lm, with_memory=True)
    assert Editor.load(tmp_path / "c", lm=tiny_lm, with_memory=True).memory.ids == c.memory.ids


@pytest.mark.parametrize("field,value,message", [
    ("key_dim", "16", "parameter 'key_dim' must be int, got '16'"),
    ("key_dim", -1, "parameter 'key_dim' must be positive, got -1"),
    ("n_tokens", 2.5, "parameter 'n_tokens' must be int"),
    ("colour", "blue", "unknown parameter 'colour'"),
])
def test_bad_editor_json_fields_are_refused_by_name(tmp_path, tiny_lm, make_editor, field, value, message):
    make_editor().save(tmp_path)
    meta = json.loads((tmp_path / "editor.json").read_text())
    meta["config"][field] = value
    (tmp_path / "editor.json").write_text(json.dumps(meta))
    with pytest.raises((CheckpointError, ParamsError), match=message):
        Editor.load(tmp_path, lm=tiny_lm)


# ---- 7. one run at a time per run directory ------------------------------------------------------
def test_a_second_process_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from medrek.rundir import RunDir
        RunDir.create({str(tmp_path / 'run')!r})
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, LOCK_OWNER_ENV: ""})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusy, match=f"in use by process {holder.pid}"):
            RunDir.create(tmp_path / "run")
        os.environ[LOCK_OWNER_ENV] = str(holder.pid)  # a notebook kernel started by that pipeline
        try:
            RunDir.create(tmp_path / "run")
        finally:
            del os.environ[LOCK_OWNER_ENV]
    finally:
        holder.kill()
        holder.wait()
    run = RunDir.create(tmp_path / "run")  # the holder died: its lock is stale
    assert json.loads(run.lock_path.read_text())["pid"] == os.getpid()
    run.release()
    assert not run.lock_path.exists()


def test_a_log_written_twice_is_named(tmp_path, tiny_lm):
    from medrek.train import read_training_logs

    Trainer(_config(steps=2), _records(), _records(8, 100), tmp_path, lm=tiny_lm).train()
    log = tmp_path / "metrics" / "train_log_medrek.csv"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([*lines, *lines[1:]]) + "\n")  # what two concurrent trainings left
    with pytest.raises(ValueError, match=r"train_log_medrek.csv: step\(s\) \[1, 2\] logged more than once"):
        read_training_logs(tmp_path, ["medrek"])


def test_relative_run_dirs_resolve_from_the_repository_root(tmp_path, monkeypatch):
    from medrek.config import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    run = RunDir.create(Path("runs") / "pytest-relative", lock=False)
    try:
        assert run.root == REPO_ROOT / "runs" / "pytest-relative" and not (tmp_path / "runs").exists()
    finally:
        shutil.rmtree(run.root)


# ---- 8. edit is all or nothing ------------------------------------------------------------------
def test_edit_stores_nothing_when_any_request_is_bad(make_editor):
    editor = make_editor()
    many = [{"id": f"r{i}", "prompt": f"Question {i}?", "target_new": f"answer {i}"} for i in range(70)]
    with pytest.raises(ValueError, match=r"repeated in this call: \['r3'\]; nothing was stored"):
        editor.edit([*many, {"id": "r3", "prompt": "again?", "target_new": "x"}])
    assert len(editor.memory) == 0
    with pytest.raises(ValueError, match="edit request 70: 'prompt'"):
        editor.edit([*many, {"id": "z", "prompt": None, "target_new": "x"}])
    assert len(editor.memory) == 0
    editor.edit(many[:2])
    with pytest.raises(ValueError, match=r"already stored: \['r1'\]"):
        editor.edit(many[1:])
    assert editor.memory.ids == ["r0", "r1"]


# ---- typed parameters: refused before anything runs, naming the parameter ----------------------
def _params(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return load_params(path)


@pytest.mark.parametrize("section,key,value,message", [
    ("02_train_medrek", "steps", '"ten"', "parameter 'steps' must be int, got 'ten'"),
    ("02_train_medrek", "steps", "-5", "parameter 'steps' must be positive, got -5"),
    ("02_train_medrek", "checkpoint_every", "0", "parameter 'checkpoint_every' must be positive"),
    ("02_train_medrek", "train_limit", "-60", "parameter 'train_limit' must be positive, got -60"),
    ("02_train_medrek", "lr_encoder", '"3e-4"', "parameter 'lr_encoder' must be float, got '3e-4' \\(a number in quotes"),
    ("03_single_edit", "batch_size", "0", "parameter 'batch_size' must be positive, got 0"),
    ("03_single_edit", "limit", "-1", "parameter 'limit' must be positive, got -1"),
    ("03_single_edit", "methods", "medrek", "parameter 'methods' must be list\\[str\\]"),
    ("04_batch_edit", "batch_sizes", "[1, ten]", "parameter 'batch_sizes' must be list\\[int\\]"),
])
def test_wrong_types_and_ranges_are_refused_before_anything_runs(tmp_path, section, key, value, message):
    params = _params(tmp_path, f"""
        name: t
        notebooks:
          {section}:
            {key}: {value}
    """)
    with pytest.raises(ParamsError, match=f"notebooks.{section}: {message}"):
        validate_params(params, notebook_paths())


def test_yaml_exponent_floats_and_valid_small_params_pass(tmp_path):
    params = _params(tmp_path, """
        name: t
        notebooks:
          02_train_medrek: {lr_encoder: 1e-4, lr_prompt: 3.0e-4, grad_clip: null, steps: 10}
    """)
    assert params.notebooks["02_train_medrek"]["lr_encoder"] == pytest.approx(1e-4)
    validate_params(params, notebook_paths())
    for name in ("small", "smoke", "paper"):
        validate_params(load_params(NOTEBOOKS_DIR.parent / "params" / f"{name}.yaml"), notebook_paths())


def test_unreadable_inputs_are_named(tmp_path, monkeypatch):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ParamsError, match=f"{bad}: not UTF-8 text"):
        load_params(bad)
    data = tmp_path / "data"
    (data / "medversa").mkdir(parents=True)
    (data / "medversa" / "test.json").write_bytes(b'[{"prompt": "caf\xe9"}]')
    from medrek.data import load_records

    with pytest.raises(DataError, match="test.json: not UTF-8 text"):
        load_records(data / "medversa" / "test.json", "medversa")
    monkeypatch.setenv("MEDREK_DATA_DIR", str(bad))
    with pytest.raises(DataSourceError, match="MEDREK_DATA_DIR points at .*which is a file"):
        resolve_data_dir(None)
    assert check_value("x", 1, "float", "w") is None  # an int is a valid float
