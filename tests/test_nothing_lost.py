"""Nothing lost, nothing silently wrong: saves that never delete a user's files, run dirs that
never overwrite the kit, requests and memories that cannot be half-believed. Each test breaks
one promise on purpose."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import REQUESTS
from medrek import Editor
from medrek.config import ParamsError, check_value
from medrek.data.loaders import DataError, records_from_json
from medrek.editor import EditedModel
from medrek.io import CheckpointError, FolderInUseError, atomic_path, write_text
from medrek.memory import EditMemory, MemoryConfig
from medrek.pipeline import main as pipeline_main
from medrek.rundir import NotARunDir, RunDir

REPO = Path(__file__).resolve().parents[1]


def small_memory(n: int = 3) -> EditMemory:
    memory = EditMemory(MemoryConfig(4, 2, 3), torch.zeros(4))
    memory.add([f"e{i}" for i in range(n)], torch.eye(4)[:n], torch.ones(n, 2, 3),
               [{"prompt": f"q{i}", "target_new": f"a{i}"} for i in range(n)])
    return memory


# ---- 1. a save never deletes what it did not write ---------------------------------------------
def test_saving_a_memory_into_a_users_folder_is_refused_and_deletes_nothing(tmp_path):
    folder = tmp_path / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("chapter 1")
    (folder / "sub" / "data.csv").write_text("a,b")
    with pytest.raises(FolderInUseError, match=r"thesis: holds files this save does not write \(sub, thesis.tex\)"):
        small_memory().save(folder)
    assert (folder / "thesis.tex").read_text() == "chapter 1" and (folder / "sub" / "data.csv").exists()
    assert [e for e in sorted(os.listdir(tmp_path)) if not e.endswith(".lock")] == ["thesis"]  # no temporary folder left
    small_memory().save(tmp_path / "mem")  # a new folder, then the kit's own folder again: fine
    small_memory(2).save(tmp_path / "mem")
    assert len(EditMemory.load(tmp_path / "mem")) == 2


def test_editor_save_keeps_the_users_notes_in_its_memory_folder(make_editor, tmp_path):
    editor = make_editor()
    editor.edit(REQUESTS)
    (tmp_path / "proj" / "memory").mkdir(parents=True)
    (tmp_path / "proj" / "memory" / "notes.md").write_text("keep me")
    with pytest.raises(FolderInUseError, match="notes.md"):
        editor.save(tmp_path / "proj", with_memory=True)
    assert (tmp_path / "proj" / "memory" / "notes.md").read_text() == "keep me"
    assert not (tmp_path / "proj" / "editor.json").exists()  # the memory is saved first: nothing was written


def test_a_memory_saved_through_a_symlink_loads_through_it_every_time(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for n in (3, 2, 1):
        small_memory(n).save(tmp_path / "link")
        assert (tmp_path / "link").is_symlink() and len(EditMemory.load(tmp_path / "link")) == n
    assert (tmp_path / "real" / "memory.json").exists()
    # a stale link left by an older kit's swap is removed, never followed into its target
    (tmp_path / ".real.old").symlink_to(tmp_path / "real")
    small_memory(3).save(tmp_path / "link")
    assert not (tmp_path / ".real.old").exists() and len(EditMemory.load(tmp_path / "real")) == 3


# ---- 2. run dirs never overwrite the kit or a user's folder ------------------------------------
def test_a_run_dir_must_be_new_empty_or_the_kits(tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "params.yaml").write_text("mine")
    (users / "paper.docx").write_text("draft")
    with pytest.raises(NotARunDir, match="not a medrek run directory.*paper.docx"):
        RunDir.create(users, lock=False)
    assert (users / "params.yaml").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotARunDir, match="is a file"):
        RunDir.create(tmp_path / "file", lock=False)
    run = RunDir.create(tmp_path / "run", lock=False)
    assert (run.root / ".medrek-run").exists()
    RunDir.create(tmp_path / "run", lock=False)  # its own run dir again


def test_the_pipeline_refuses_the_repository_as_run_dir(capsys):
    before = (REPO / "notebooks" / "00_quickstart.ipynb").read_bytes()
    assert pipeline_main(["params/smoke.yaml", "--run-dir", ".", "--only", "00_quickstart"]) == 2
    assert "not a medrek run directory" in capsys.readouterr().err
    assert pipeline_main(["params/smoke.yaml", "--run-dir", "notebooks/..", "--only", "00_quickstart"]) == 2
    assert (REPO / "notebooks" / "00_quickstart.ipynb").read_bytes() == before
    assert not (REPO / "params.yaml").exists()


# ---- 4. text that cannot be encoded is refused where it enters --------------------------------
def test_lone_surrogates_are_refused_at_edit_and_in_data_files(make_editor):
    editor = make_editor()
    with pytest.raises(ValueError, match=r"edit request 1: 'id' is not valid text \(a lone surrogate at character 3"):
        editor.edit([REQUESTS[0], {**REQUESTS[1], "id": "sur\ud800"}])
    with pytest.raises(ValueError, match="edit request 0: 'target_new' is not valid text"):
        editor.edit({"prompt": "q?", "target_new": "x\udc80"})
    assert len(editor.memory) == 0
    raw = [{"id": "0", "prompt": "q\ud800?", "target_new": "a", "ground_truth": "b", "rephrase_prompt": "r",
            "subject_name": "s", "locality_prompt": "l", "locality_ground_truth": "g"}]
    with pytest.raises(DataError, match=r"f.json: record 0: field 'prompt' is not valid text"):
        records_from_json(raw, "medversa", "f.json")


# ---- 5 / 6. a memory that is stale or changed is refused ---------------------------------------
def test_a_memory_left_by_an_earlier_save_is_refused(make_editor, tmp_path, tiny_lm):
    editor = make_editor()
    editor.edit(REQUESTS[:2])
    editor.save(tmp_path / "ed", with_memory=True)
    editor.edit(REQUESTS[2])
    editor.save(tmp_path / "ed")  # weights only: the memory folder is the old one
    with pytest.raises(CheckpointError, match="last saved without its memory"):
        Editor.load(tmp_path / "ed", lm=tiny_lm, with_memory=True)
    editor.save(tmp_path / "ed", with_memory=True)
    assert len(Editor.load(tmp_path / "ed", lm=tiny_lm, with_memory=True).memory) == 3


@pytest.mark.parametrize("tamper, message", [
    (lambda m: m["ids"].reverse(), "content differs from its checksum"),
    (lambda m: m.update(ids=[m["ids"][0]] * len(m["ids"]), content_sha256=None), "stored more than once"),
    (lambda m: m.update(requests=m["requests"][:1], content_sha256=None), "3 ids but 1 requests"),
    (lambda m: m["config"].update(key_dim="4") or m.pop("content_sha256"), "'key_dim' must be int"),
    (lambda m: m.update(requests=5, content_sha256=None), "field 'requests' must be a JSON list"),
    (lambda m: m.update(ids=[1, 2, 3], content_sha256=None), r"ids\[0\] must be a string"),
])
def test_a_changed_or_malformed_memory_json_is_refused_by_field(tmp_path, tamper, message):
    small_memory().save(tmp_path / "mem")
    path = tmp_path / "mem" / "memory.json"
    meta = json.loads(path.read_text())
    tamper(meta)
    if meta.get("content_sha256", "") is None:
        del meta["content_sha256"]  # an older file: no checksum, so only the schema can catch it
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        EditMemory.load(tmp_path / "mem")


# ---- 7. duplicate record ids -----------------------------------------------------------------
def test_duplicate_record_ids_in_a_data_file_are_refused_naming_both():
    rec = {"id": "7", "prompt": "q?", "target_new": "a", "ground_truth": "b", "rephrase_prompt": "r",
           "subject_name": "s", "locality_prompt": "l", "locality_ground_truth": "g"}
    with pytest.raises(DataError, match=r"mine.json: records 0 and 2 share the id '7'"):
        records_from_json([rec, {**rec, "id": "8"}, rec], "medversa", "mine.json")


# ---- 8. the context window --------------------------------------------------------------------
def test_rows_past_the_context_window_are_refused_not_scored(tiny_lm, make_editor):
    model = EditedModel(*tiny_lm)
    long = "word " * (model.context_window + 10)
    with pytest.raises(ValueError, match=r"scored row 1: \d+ positions .* exceed the LM's context window of 2048"):
        from medrek.editor import score_pairs
        score_pairs(model, ["short?", long], ["a", "b"])
    editor = make_editor()
    with pytest.raises(ValueError, match="generated text 0: .* context window"):
        editor.generate(["word " * 500], max_new_tokens=20)


# ---- 9. the minor ones ------------------------------------------------------------------------
def test_minor_refusals_name_what_is_wrong(make_editor, tmp_path, monkeypatch):
    with pytest.raises(ParamsError, match="'lr_encoder' must be a finite number"):
        check_value("lr_encoder", float("inf"), "float", "params")
    with pytest.raises(ParamsError, match="'grad_clip' must be a finite number"):
        check_value("grad_clip", float("inf"), "float", "params")
    editor = make_editor()
    with pytest.raises(TypeError, match=r"remove takes an edit id \(a string\) or a list of them, got 5"):
        editor.remove(5)

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"out.json: No space left on device while writing it"):
        with atomic_path(tmp_path / "out.json") as tmp:
            full(tmp)
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match="notes.txt: No space left"):
        write_text(tmp_path / "notes.txt", "x")


def test_explanation_names_the_gate_that_blocked_the_top_edit():
    memory = EditMemory(MemoryConfig(2, 1, 1, min_margin=2.05), torch.zeros(2))
    memory.add(["e"], torch.tensor([[1.0, 0.0]]), torch.ones(1, 1, 1), [{"prompt": "q"}])
    why = memory.explain(torch.tensor([1.0, 0.0]))  # score 1 / sqrt(2), prototype 0: lead 0.7071 < 2.05
    assert not why.fired and why.blocked_by == ("min_margin (lead over the prototype 0.7071 < 2.05)",)
    memory.config.min_margin = None
    assert memory.explain(torch.tensor([1.0, 0.0])).blocked_by == ()


@pytest.mark.parametrize("asked", ["Who discovered insulin?",  # the stored form: NFC, plain ASCII
                                   "\ufeffWho discovered\u200b insulin?",  # a BOM and a zero-width space
                                   "Ｗｈｏ ｄｉｓｃｏｖｅｒｅｄ ｉｎｓｕｌｉｎ？"])  # full-width letters
def test_exact_match_folds_unicode_forms_of_a_stored_question(asked):
    from medrek.data.records import fold_question

    assert fold_question(asked) == fold_question("Who discovered insulin?")
    assert fold_question("Cafe\u0301 au lait spots?") == fold_question("Caf\u00e9 au lait spots?")  # NFD vs NFC
    memory = EditMemory(MemoryConfig(2, 1, 1, score="cosine", exact_match=True, min_similarity=0.999), torch.zeros(2))
    memory.add(["e"], torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1, 1), [{"prompt": "Who discovered insulin?"}])
    assert memory.lookup(torch.tensor([[0.0, 1.0]]), [asked]).ids == ["e"]


def test_a_prompt_or_target_of_invisible_characters_only_is_empty(make_editor):
    editor = make_editor("medrek-lm-embedding", n_tokens=12)
    for request in ({"prompt": "\u200b\u200d", "target_new": "x"}, {"prompt": "Who?", "target_new": "\ufeff"}):
        with pytest.raises(ValueError, match="must be a non-empty string"):
            editor.edit([request])
    assert len(editor.memory) == 0


def test_ids_that_pandas_reads_as_missing_stay_strings(tmp_path):
    import pandas as pd

    from medrek.io import read_rows

    ids = ["NA", "null", "nan", "N/A", "None", "", "7"]
    pd.DataFrame({"record_id": ids, "efficacy": [1.0] * 7}).to_csv(tmp_path / "r.csv", index=False)
    back = read_rows(tmp_path / "r.csv")
    assert back["record_id"].tolist()[:5] == ["NA", "null", "nan", "N/A", "None"] and back["record_id"][6] == "7"
    assert pd.isna(back["record_id"][5])  # only an empty cell is missing


def test_a_key_given_twice_in_a_params_file_is_refused(tmp_path):
    from medrek.config import load_params

    path = tmp_path / "p.yaml"
    path.write_text("name: x\nnotebooks:\n  02_train_medrek:\n    steps: 10\n    steps: 100000\n")
    with pytest.raises(ParamsError, match=r"(?s)p\.yaml.*'steps' is given twice \(lines 4 and 5\)"):
        load_params(path)
    path.write_text("name: x\nnotebooks:\n  02_train_medrek: {steps: 10}\n  03_single_edit: {steps: 10}\n")
    assert load_params(path).notebooks["02_train_medrek"] == {"steps": 10}  # the same key in two mappings is fine


@pytest.mark.parametrize("section, message", [
    ({"batch_size": 1}, "'batch_size' must be at least 2"),
    ({"long_edits": {"n": -5, "target_words": 60, "seed": 1}}, "long_edits.n must be an integer >= 1"),
    ({"long_edits": {"n": 5, "words": 60}}, "long_edits"),
    ({"gate_max_false_fire": {"medrek-lm-embedding": 7.5}}, "gate_max_false_fire.medrek-lm-embedding.*probability"),
    ({"retrieval_stage": {"medrek-lm-embedding": {"verify_k": 2, "max_false_fire": 3.0}}}, "max_false_fire"),
    ({"key_dim": 10**12}, "'key_dim' must be at most 65,536"),
])
def test_nested_and_out_of_range_training_params_are_refused_before_anything_runs(tmp_path, section, message):
    from medrek.pipeline import NOTEBOOKS_DIR, notebook_paths, validate_params
    from medrek.config import load_params

    path = tmp_path / "p.yaml"
    import yaml
    path.write_text(yaml.safe_dump({"name": "x", "notebooks": {"02_train_medrek": section}}))
    with pytest.raises(ParamsError, match=message):
        validate_params(load_params(path), notebook_paths(NOTEBOOKS_DIR))
    path.write_text("name: x\nseed: 1180591620717411303424\n")
    with pytest.raises(ParamsError, match="'seed' must be at most"):
        validate_params(load_params(path), notebook_paths(NOTEBOOKS_DIR))


def _results_copy(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "results-smoke", run)
    csv = sorted((run / "metrics" / "records").glob("*single.csv"))[0]
    return run, csv


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[:len(lines) // 2], r"of the \d+ requests the run evaluated"),  # a killed evaluation
    (lambda lines: lines[:-1] + [",".join(lines[-1].split(",")[:2])], "half-written row"),
    (lambda lines: [lines[0], lines[1].replace(lines[1].split(",")[2], "7.0", 1), *lines[2:]], r"outside \[0, 1\]"),
    (lambda lines: [lines[0], lines[1].replace(lines[1].split(",")[2], "0.5abc", 1), *lines[2:]], "is not a number"),
    (lambda lines: lines + [lines[1]], "scored twice"),
])
def test_claims_and_figures_refuse_partial_or_corrupt_results_naming_file_and_row(tmp_path, damage, message):
    from medrek.evaluate.results import IncompleteResults, read_per_record

    run, csv = _results_copy(tmp_path)
    header = csv.read_text().splitlines()[0].split(",")
    assert header[2] == "efficacy"
    csv.write_text("\n".join(damage(csv.read_text().splitlines())) + "\n")
    with pytest.raises(IncompleteResults, match=f"{csv.name}.*{message}"):
        read_per_record([run])


def test_a_partial_run_is_shown_only_when_asked_and_then_marked(tmp_path):
    from medrek.evaluate.results import read_per_record

    run, csv = _results_copy(tmp_path)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    rows = read_per_record([run], allow_partial=True)
    assert rows["partial"].any() and not rows["partial"].all()  # only the damaged file's rows
    assert read_per_record([_results_copy(tmp_path / "whole")[0]])["partial"].eq(False).all()


def test_run_dirs_resolve_dotdot_refuse_unmarked_folders_and_symlinked_entries(tmp_path):
    from medrek.rundir import main as rundir_main

    users = tmp_path / "user"
    users.mkdir()
    (users / "params.yaml").write_text("mine")
    for tricky in (tmp_path / "nothere" / ".." / "user", users):  # '..' walks to the user's folder
        with pytest.raises(NotARunDir, match="not a medrek run directory"):
            RunDir.create(tricky, lock=False)
    common = tmp_path / "common"  # only names a run holds, but the user's: refused, with the way to mark a real one
    (common / "figures").mkdir(parents=True)
    (common / "README.md").write_text("notes")
    with pytest.raises(NotARunDir, match="python -m medrek.rundir mark"):
        RunDir.create(common, lock=False)
    assert (users / "params.yaml").read_text() == "mine" and (common / "README.md").read_text() == "notes"
    assert rundir_main(["mark", str(common)]) == 0 and RunDir.create(common, lock=False).root == common.resolve()
    assert rundir_main(["mark", str(users / "..")]) == 2  # a folder holding foreign entries is never marked
    run = RunDir.create(tmp_path / "run", lock=False)
    (tmp_path / "elsewhere").mkdir()
    (run.root / "tables").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(NotARunDir, match="tables is a symlink"):
        RunDir.create(run.root, lock=False)


def test_a_new_run_dir_holding_only_papermills_output_notebook_is_accepted(tmp_path):
    run = tmp_path / "try"
    (run / "notebooks").mkdir(parents=True)
    (run / "notebooks" / "03.ipynb").write_text("{}")  # papermill writes its output before the first cell runs
    assert (RunDir.create(run, lock=False).root / ".medrek-run").exists()
    other = tmp_path / "other"
    (other / "notebooks").mkdir(parents=True)
    (other / "notebooks" / "draft.docx").write_text("mine")
    with pytest.raises(NotARunDir):
        RunDir.create(other, lock=False)


def _two_versions(make_editor):
    editor = make_editor("medrek-lm-embedding", n_tokens=12)
    editor.edit(REQUESTS[:1])
    versions = [list(editor.memory.ids)]
    editor.edit(REQUESTS[1:])
    versions.append(list(editor.memory.ids))
    return editor, versions


def test_a_kill_at_any_point_of_an_editor_save_leaves_the_old_or_the_new_editor(make_editor, tiny_lm, tmp_path):
    import random
    import signal
    import time

    editor, versions = _two_versions(make_editor)
    folder = tmp_path / "e"
    editor.memory.remove(versions[1][len(versions[0]):])  # version 0 on disk first
    editor.save(folder, with_memory=True)
    editor.edit(REQUESTS[1:])  # then version 1 in memory: each child saves it
    torch.set_num_threads(1)
    rng = random.Random(0)
    seen = set()
    for kill in range(20):
        pid = os.fork()
        if pid == 0:  # the child saves over and over until it is killed
            try:
                while True:
                    editor.save(folder, with_memory=True)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        loaded = Editor.load(folder, lm=tiny_lm, with_memory=True)  # finishes or clears what the kill left
        assert loaded.memory.ids in versions
        seen.add(len(loaded.memory.ids))
        assert not list(folder.glob(".staged-*")) and not (folder / ".save-journal.json").exists()
    assert Editor.load(folder, lm=tiny_lm, with_memory=True).fingerprint() == editor.fingerprint()


def test_a_failure_at_any_write_of_an_editor_save_leaves_the_previous_editor(make_editor, tiny_lm, tmp_path, monkeypatch):
    import medrek.editor_checkpoint as editor_module  # where an editor is written

    editor, versions = _two_versions(make_editor)
    folder = tmp_path / "e"
    editor.save(folder, with_memory=True)
    editor.edit([{"id": "late", "prompt": "Which organ makes bile?", "target_new": "the spleen"}])
    for target, name in ((editor_module, "save_file"), (editor_module, "write_json")):
        def disk_full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(target, name, disk_full)
        with pytest.raises(OSError, match="No space left|could not be saved"):
            editor.save(folder, with_memory=True)
        monkeypatch.undo()
        loaded = Editor.load(folder, lm=tiny_lm, with_memory=True)
        assert loaded.memory.ids == versions[1]  # the previous save, whole
        assert not list(folder.glob(".staged-*"))


def test_saves_of_one_folder_from_threads_wait_for_each_other(make_editor, tiny_lm, tmp_path):
    import threading

    editor, versions = _two_versions(make_editor)
    errors = []

    def save_many():
        try:
            for _ in range(5):
                editor.save(tmp_path / "e", with_memory=True)
        except Exception as exc:  # noqa: BLE001 (the test reports every failure)
            errors.append(exc)

    threads = [threading.Thread(target=save_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Editor.load(tmp_path / "e", lm=tiny_lm, with_memory=True).memory.ids == versions[1]


def test_an_editor_or_memory_saved_over_another_lm_of_the_same_size_is_refused(make_editor, tiny_lm, tmp_path):
    from medrek.models.registry import load_causal_lm

    editor, _ = _two_versions(make_editor)
    editor.save(tmp_path / "e", with_memory=True)
    other = load_causal_lm("tiny-llama", seed=7)  # same name and hidden size, other weights
    with pytest.raises(CheckpointError, match="another LM"):
        Editor.load(tmp_path / "e", lm=other, with_memory=True)
    assert Editor.load(tmp_path / "e", lm=tiny_lm, with_memory=True).memory.ids == editor.memory.ids


def test_a_load_from_a_read_only_folder_never_writes(make_editor, tiny_lm, tmp_path, monkeypatch):
    import medrek.editor_checkpoint as editor_module  # where an editor is written
    import medrek.io as io_module

    editor, versions = _two_versions(make_editor)
    folder = tmp_path / "e"
    editor.save(folder, with_memory=True)
    (folder / ".memory.old").mkdir()  # what an older kit's interrupted memory swap could leave
    (folder / ".staged-1-x-editor.json").write_text("{}")  # and a save killed before its commit
    before = sorted(p.name for p in folder.iterdir())
    import medrek.memory as memory_module

    for module in (editor_module, io_module, memory_module):  # a read-only mount (root can write anywhere: simulated)
        monkeypatch.setattr(module, "writable", lambda path: False)
    loaded = Editor.load(folder, lm=tiny_lm, with_memory=True)
    assert loaded.memory.ids == versions[1] and sorted(p.name for p in folder.iterdir()) == before  # nothing written
    (folder / ".save-journal.json").write_text('{"moves": []}')  # a save that committed but did not finish
    with pytest.raises(CheckpointError, match="read-only.*copy the folder"):
        Editor.load(folder, lm=tiny_lm, with_memory=True)


def test_a_symlink_loop_as_save_folder_is_named(make_editor, tmp_path):
    editor, _ = _two_versions(make_editor)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(FileNotFoundError, match="loop.*leads nowhere"):
        editor.save(loop)


def test_a_truncated_results_table_is_named_not_read_as_nan(tmp_path):
    from medrek.evaluate import read_results
    from medrek.evaluate.results import IncompleteResults

    run, _ = _results_copy(tmp_path)
    table = run / "metrics" / "results.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 3]]) + "\n")  # a write cut short
    with pytest.raises(IncompleteResults, match=r"results\.csv: row \d+ is not whole"):
        read_results([run])
