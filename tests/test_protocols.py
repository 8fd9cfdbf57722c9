"""Protocols, the evaluation loop (resume included), summaries and the results table."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from medrek.baselines import RetrievalMethod, UneditedMethod
from medrek.editor import EditedModel
from medrek.evaluate import (Protocol, ResumeError, plan, read_results, run_protocol, summarise,
                             unedited_locality_predictions, upsert_results)
from medrek.evaluate.protocols import RESULT_COLUMNS

from conftest import make_records as records

def test_parse_and_labels():
    assert Protocol.parse("single") == Protocol("single", 1)
    assert Protocol.parse("batch-100") == Protocol("batch", 100)
    assert Protocol.parse({"kind": "sequential", "batch_size": 2, "checkpoints": [2, 4]}).checkpoints == (2, 4)
    assert Protocol.parse("batch-10").label == "batch-10" and Protocol.parse("single").label == "single"
    for bad in ("batchy", "batch-x", "single-3", {"kind": "batch", "size": 3}):
        with pytest.raises(ValueError):
            Protocol.parse(bad)
    with pytest.raises(ValueError, match="increasing"):
        Protocol("sequential", 1, (4, 2))
    with pytest.raises(ValueError, match="only apply"):
        Protocol("batch", 2, (2,))


def test_plans_cover_every_record_once():
    batch = plan(Protocol("batch", 3), 7, seed=1)
    assert [len(s.edit) for s in batch] == [3, 3, 1] and all(s.reset and s.evaluate == s.edit for s in batch)
    assert sorted(i for s in batch for i in s.edit) == list(range(7))
    assert [s.edit for s in plan(Protocol("batch", 3), 7, seed=1)] == [s.edit for s in batch]  # seeded
    assert [s.edit for s in plan(Protocol("batch", 3), 7, seed=2)] != [s.edit for s in batch]
    seq = plan(Protocol("sequential", 1, (2, 5)), 7, seed=1)
    assert [s.reset for s in seq] == [True] + [False] * 6
    assert [len(s.evaluate) for s in seq] == [0, 2, 0, 0, 5, 0, 0]
    order = [s.edit[0] for s in seq]
    assert seq[4].evaluate == order[:5]
    assert [len(s.evaluate) for s in plan(Protocol("sequential", 1), 7, seed=1)][-1] == 7
    with pytest.raises(ValueError, match="multiple"):
        plan(Protocol("sequential", 2, (3,)), 7, seed=1)


def test_run_protocol_unedited_and_retrieval(tmp_path, tiny_lm, make_editor):
    recs = records()
    model = EditedModel(*tiny_lm)
    reference = unedited_locality_predictions(model, recs)
    base = run_protocol(UneditedMethod(model), recs, Protocol("batch", 3), reference, tmp_path / "u.csv",
                        progress=False)
    direct = UneditedMethod(model).score([r.prompt for r in recs], [r.target_new for r in recs])
    by_id = base.set_index("record_id")
    for r, acc in zip(recs, direct.accuracy.tolist()):
        assert by_id.loc[r.record_id, "efficacy"] == pytest.approx(acc, abs=1e-6)
    assert (base["locality"] == 1.0).all()  # the unedited LM agrees with itself
    editor = make_editor("medrek", min_similarity=-1e9)
    editor.memory.prototype_key.zero_()  # prototype score 0: every edit with a positive score fires
    method = RetrievalMethod(editor)
    rows = run_protocol(method, recs, Protocol("single"), reference, tmp_path / "m.csv", progress=False)
    assert len(rows) == len(recs) and len(editor.memory) == 0  # restored at the end
    assert set(rows["retrieved_prompt"]) <= {0.0, 1.0}
    # with one edit stored, whatever fires on a prompt can only be that edit
    fired_prompt = rows["margin/prompt"] > 0
    assert (rows.loc[fired_prompt, "retrieved_prompt"] == 1.0).all()


class Interrupt(RuntimeError):
    pass


class FlakyMethod(RetrievalMethod):
    """Stops after ``fail_after`` edits, as a killed job would (edit by edit, so that rows are
    saved after every block)."""

    block_scoring = False

    def __init__(self, editor, fail_after: int) -> None:
        super().__init__(editor)
        self.calls, self.fail_after = 0, fail_after

    def edit(self, recs):
        self.calls += 1
        if self.calls > self.fail_after:
            raise Interrupt
        super().edit(recs)


@pytest.mark.parametrize("protocol, fail_after", [("batch-2", 2),
                                                  ({"kind": "sequential", "batch_size": 1, "checkpoints": [3, 7]}, 4)])
def test_killed_evaluation_resumes_to_the_same_rows(tmp_path, tiny_lm, make_editor, protocol, fail_after):
    recs = records()
    protocol = Protocol.parse(protocol)
    reference = unedited_locality_predictions(EditedModel(*tiny_lm), recs)
    full = run_protocol(RetrievalMethod(make_editor()), recs, protocol, reference, tmp_path / "full.csv", progress=False)
    path = tmp_path / "resumed.csv"
    flaky = FlakyMethod(make_editor(), fail_after=fail_after)
    with pytest.raises(Interrupt):
        run_protocol(flaky, recs, protocol, reference, path, progress=False)
    partial = pd.read_csv(path)
    assert 0 < len(partial) < len(full)  # the finished blocks were kept
    resumed = run_protocol(RetrievalMethod(make_editor()), recs, protocol, reference, path, progress=False)
    cols = ["record_id", "eval_at", "efficacy", "generality", "locality", "retrieved_prompt"]
    key = ["eval_at", "record_id"]
    pd.testing.assert_frame_equal(resumed[cols].sort_values(key).reset_index(drop=True),
                                  full[cols].sort_values(key).reset_index(drop=True), atol=1e-6)
    with pytest.raises(ResumeError, match="seed"):
        run_protocol(RetrievalMethod(make_editor()), recs, protocol, reference, path, seed=5, progress=False)


def test_fluency_rows_are_seeded(tmp_path, tiny_lm):
    recs = records(4)
    model = EditedModel(*tiny_lm)
    reference = unedited_locality_predictions(model, recs)
    a = run_protocol(UneditedMethod(model), recs, Protocol("single"), reference, tmp_path / "a.csv",
                     fluency_n=2, fluency_tokens=12, progress=False)
    b = run_protocol(UneditedMethod(model), recs, Protocol("single"), reference, tmp_path / "b.csv",
                     fluency_n=2, fluency_tokens=12, progress=False)
    assert a["fluency"].notna().sum() == 2
    assert a["fluency"].fillna(-1).tolist() == b["fluency"].fillna(-1).tolist()


def test_summarise_means_and_avg():
    per_record = pd.DataFrame({"record_id": ["a", "b", "a", "b"], "subject": ["s"] * 4, "eval_at": [1, 1, 2, 2],
                               "step": [0, 1, 1, 1], "efficacy": [1.0, 0.0, 0.5, 0.5],
                               "generality": [0.5, 0.5, 0.0, 1.0], "locality": [1.0, 0.5, 1.0, 1.0],
                               "fluency": [5.0, math.nan, math.nan, math.nan]})
    ctx = {"method": "m", "lm": "l", "encoder": "e", "chat_template": "none", "dataset": "d", "split": "test", "protocol": "batch",
           "batch_size": 2, "seed": 0, "run_id": "r"}
    table = summarise(per_record, ctx)
    assert list(table.columns) == RESULT_COLUMNS
    get = table.set_index(["eval_at", "metric"])
    assert get.loc[(1, "efficacy"), "value"] == 0.5 and get.loc[(1, "locality"), "value"] == 0.75
    assert get.loc[(1, "avg"), "value"] == pytest.approx((0.5 + 0.75) / 2)
    assert get.loc[(1, "fluency"), "n"] == 1 and (2, "fluency") not in get.index
    with pytest.raises(ValueError, match="context"):
        summarise(per_record, {"method": "m"})


def test_upsert_replaces_rows_with_the_same_key(tmp_path):
    ctx = {"method": "m", "lm": "l", "encoder": "e", "chat_template": "none", "dataset": "d", "split": "test", "protocol": "batch",
           "batch_size": 2, "seed": 0, "run_id": "r", "eval_at": 2}
    first = pd.DataFrame([{**ctx, "metric": "efficacy", "value": 0.1, "n": 2},
                          {**ctx, "metric": "locality", "value": 0.9, "n": 2}])
    upsert_results(tmp_path / "metrics" / "results.csv", first)
    again = pd.DataFrame([{**ctx, "metric": "efficacy", "value": 0.3, "n": 2},
                          {**ctx, "method": "other", "metric": "efficacy", "value": 0.2, "n": 2}])
    table = upsert_results(tmp_path / "metrics" / "results.csv", again)
    assert len(table) == 3
    assert table.set_index(["method", "metric"]).loc[("m", "efficacy"), "value"] == 0.3
    assert read_results([tmp_path]).equals(table)
    assert pd.read_json(tmp_path / "metrics" / "results.json").shape == (3, len(RESULT_COLUMNS))
    with pytest.raises(FileNotFoundError, match="no results table"):
        read_results([tmp_path / "missing"])
    with pytest.raises(ValueError, match="lacks column"):
        upsert_results(tmp_path / "x.csv", first.drop(columns=["seed"]))


def test_checkpoints_resolve_from_the_repo_root_or_the_run(tmp_path, make_editor):
    from medrek.config import REPO_ROOT
    from medrek.evaluate.experiment import resolve_checkpoints, split_label

    make_editor("medrek").save(tmp_path / "checkpoints" / "medrek" / "best")
    found = resolve_checkpoints(["unedited", "medrek"], tmp_path, None, retrieval=["medrek", "recipe"])
    assert found == {"medrek": tmp_path / "checkpoints" / "medrek" / "best"}
    with pytest.raises(FileNotFoundError, match="no trained 'recipe' editor.*editor_checkpoints"):
        resolve_checkpoints(["recipe"], tmp_path, None, retrieval=["medrek", "recipe"], fallback=None)
    committed = resolve_checkpoints(["recipe"], tmp_path, None, retrieval=["medrek", "recipe"])  # no run of its own
    assert committed == {"recipe": REPO_ROOT / "checkpoints" / "small" / "recipe"}
    from medrek.evaluate.experiment import describe_checkpoints
    assert describe_checkpoints({**found, **committed}, tmp_path) == [
        f"medrek: {found['medrek']} (trained in this run)", f"recipe: {committed['recipe']} (the committed editor)"]
    with pytest.raises(FileNotFoundError, match=str(REPO_ROOT / "nowhere")):
        resolve_checkpoints(["medrek"], tmp_path, {"medrek": "nowhere"}, retrieval=["medrek"])
    assert split_label("test", None) == "test" and split_label("test", 100) == "test-first100"


def test_block_scoring_equals_edit_score_restore(tiny_lm, make_editor):
    recs = records()
    editor = make_editor("medrek", min_similarity=-1e9)
    editor.memory.prototype_key.zero_()
    method = RetrievalMethod(editor)
    blocks = [recs[0:1], recs[1:4], recs[4:7]]
    jobs = [(b, [r.prompt for r in recs], [r.target_new for r in recs]) for b in blocks]
    together = method.score_blocks(jobs)
    for (block, prompts, targets), got in zip(jobs, together):
        method.edit(block)
        want = method.score(prompts, targets)
        method.restore()
        assert got.retrieved_ids == want.retrieved_ids and torch.equal(got.fired, want.fired)
        torch.testing.assert_close(got.nll, want.nll, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.margins, want.margins)
    assert len(editor.memory) == 0


@pytest.mark.parametrize("protocol", ["batch-2", {"kind": "sequential", "batch_size": 2, "checkpoints": [2, 6]}])
def test_block_scored_protocol_matches_step_by_step(tmp_path, tiny_lm, make_editor, protocol):
    recs = records()
    protocol = Protocol.parse(protocol)
    reference = unedited_locality_predictions(EditedModel(*tiny_lm), recs)

    class StepByStep(RetrievalMethod):
        block_scoring = False

    def firing():  # every stored edit beats the prototype, so what is stored shows in the scores
        editor = make_editor("medrek", min_similarity=-1e9)
        editor.memory.prototype_key.fill_(-1e3)
        return editor

    # fluency on the first block: under sequential it must not disturb the accumulated edits
    fast = run_protocol(RetrievalMethod(firing()), recs, protocol, reference, tmp_path / "a.csv",
                        progress=False, fluency_n=1, fluency_tokens=6)
    slow = run_protocol(StepByStep(firing()), recs, protocol, reference, tmp_path / "b.csv",
                        progress=False, fluency_n=1, fluency_tokens=6)
    cols = ["record_id", "efficacy", "generality", "locality", "retrieved_prompt", "margin/prompt", "fluency"]
    key = ["eval_at", "record_id"]
    pd.testing.assert_frame_equal(fast[cols + ["eval_at"]].sort_values(key).reset_index(drop=True),
                                  slow[cols + ["eval_at"]].sort_values(key).reset_index(drop=True), atol=1e-5)


def test_sequential_fluency_keeps_the_accumulated_edits(tmp_path, tiny_lm, make_editor):
    recs = records()
    reference = unedited_locality_predictions(EditedModel(*tiny_lm), recs)

    class Spy(RetrievalMethod):
        def score(self, prompts, targets, batch_size=32, max_length=None):
            self.sizes.append(len(self.editor.memory))
            return super().score(prompts, targets, batch_size=batch_size, max_length=max_length)

    spy = Spy(make_editor())
    spy.sizes = []
    run_protocol(spy, recs, Protocol("sequential", 2, (2, 6)), reference, tmp_path / "s.csv", progress=False,
                 fluency_n=1, fluency_tokens=4)
    assert spy.sizes == [2, 6]


# ---- no silent truncation --------------------------------------------------------
def test_encode_pairs_cuts_only_when_asked_and_marks_the_rows(tiny_lm):
    from medrek.editor import encode_pairs

    _, tok = tiny_lm
    prompts, targets = ["a much longer question about something", "hi"], ["answer", "y"]
    whole = encode_pairs(tok, prompts, targets)
    assert not whole.truncated.any()
    cut = encode_pairs(tok, prompts, targets, max_length=8)
    assert cut.truncated.tolist() == [True, False] and cut.input_ids.shape[1] == 8
    assert cut.target_mask[0].sum() == whole.target_mask[0].sum()  # the target is kept whole
    with pytest.raises(ValueError, match="max_length must be None"):
        encode_pairs(tok, prompts, targets, max_length=0)


def test_cut_rows_are_counted_in_rows_and_results_and_warned_about(tmp_path, tiny_lm):
    from medrek.evaluate import TruncationWarning

    recs = records()
    model = EditedModel(*tiny_lm)
    longest = max(len(model.encode_pairs([q], [r.target_new]).input_ids[0]) for r in recs for q in (r.prompt, r.rephrase))
    with pytest.warns(TruncationWarning, match="locality reference"):
        reference = unedited_locality_predictions(model, recs, max_length=4)
    with pytest.warns(TruncationWarning, match=r"unedited single: \d+ scored rows .* max_length=4"):
        rows = run_protocol(UneditedMethod(model), recs, Protocol("single"), reference, tmp_path / "cut.csv",
                            progress=False, max_length=4)
    assert (rows["truncated_rows"] > 0).all() and rows["truncated_rows"].max() <= 2  # prompt + rephrase rows
    context = dict.fromkeys(["method", "lm", "encoder", "chat_template", "dataset", "split", "protocol",
                             "batch_size", "seed", "run_id"], "x")
    summary = summarise(rows, context).set_index("metric")
    assert summary.loc["truncated_rows", "value"] == rows["truncated_rows"].sum()  # a total, not a mean
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)  # the default never cuts, so never warns
        whole = run_protocol(UneditedMethod(model), recs, Protocol("single"),
                             unedited_locality_predictions(model, recs), tmp_path / "whole.csv", progress=False)
        roomy = run_protocol(UneditedMethod(model), recs, Protocol("single"), reference, tmp_path / "roomy.csv",
                             progress=False, max_length=longest)
    assert (whole["truncated_rows"] == 0).all() and (roomy["truncated_rows"] == 0).all()
    assert not rows["efficacy"].equals(whole["efficacy"])  # cutting the prompt changes what is measured


def test_unedited_locality_is_the_reference_not_a_second_forward(tmp_path, tiny_lm):
    recs = records()
    model = EditedModel(*tiny_lm)
    reference = unedited_locality_predictions(model, recs)

    class Counting(UneditedMethod):
        scored = 0

        def score(self, prompts, targets, batch_size=32, max_length=None):
            Counting.scored += len(prompts)
            return super().score(prompts, targets, batch_size, max_length)

    rows = run_protocol(Counting(model), recs, Protocol("single"), reference, tmp_path / "u.csv", progress=False)
    assert Counting.scored == 2 * len(recs)  # prompts and rephrases only
    assert (rows["locality"] == 1.0).all()


def test_ids_pandas_would_read_as_missing_resume_as_themselves(tmp_path, tiny_lm, make_editor):
    import dataclasses

    recs = [dataclasses.replace(r, record_id=i) for r, i in zip(records(), ["NA", "null", "nan", "N/A", "7", "8"])]
    reference = unedited_locality_predictions(EditedModel(*tiny_lm), recs)
    path = tmp_path / "m.csv"
    first = run_protocol(RetrievalMethod(make_editor()), recs, Protocol("single"), reference, path, progress=False)
    again = run_protocol(RetrievalMethod(make_editor()), recs, Protocol("single"), reference, path, progress=False)
    assert len(first) == len(again) == len(recs)  # nothing rescored, no blank ids
    assert sorted(again["record_id"]) == sorted(r.record_id for r in recs)
