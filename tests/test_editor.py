import json

import pytest
import torch

from conftest import REQUESTS
from medrek import Editor
from medrek.editor import EditedModel, auto_edit_id, encode_pairs
from medrek import CheckpointError

PROMPTS = [r["prompt"] for r in REQUESTS]
TARGETS = [r["target_new"] for r in REQUESTS]


def _never_fire(editor):
    editor.memory.config.min_similarity = float("inf")


def _always_fire(editor):
    editor.memory.config.min_similarity = None
    editor.memory.prototype_key = torch.zeros_like(editor.memory.prototype_key) - 1e6 * editor.memory.keys.mean(0)


def test_encode_pairs_marks_target_positions(tiny_lm):
    _, tok = tiny_lm
    batch = encode_pairs(tok, ["ab", "abcd"], ["x", "yz"])
    assert batch.input_ids.shape == (2, 8)  # <s> a b c d ' ' y z
    assert batch.target_mask[0].nonzero().flatten().tolist() == [3, 4]  # " x"
    assert batch.target_mask[1].nonzero().flatten().tolist() == [5, 6, 7]  # " yz"
    assert batch.attention_mask[0].tolist() == [1] * 5 + [0] * 3
    with pytest.raises(ValueError, match="target 0 is empty"):
        encode_pairs(tok, ["a"], [""])


def test_no_edit_logits_are_exactly_the_base_model(tiny_lm, make_editor):
    lm, tok = tiny_lm
    editor = make_editor()
    batch = encode_pairs(tok, PROMPTS, TARGETS)
    base = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    prompts = torch.randn(3, 3, lm.config.hidden_size)
    none = torch.zeros(3, dtype=torch.bool)
    assert torch.equal(editor.model(batch.input_ids, batch.attention_mask, prompts, none), base)
    editor.edit(REQUESTS)
    _never_fire(editor)
    scored, unedited = editor.score(PROMPTS, TARGETS), editor.score(PROMPTS, TARGETS, use_memory=False)
    assert not scored.fired.any()
    assert torch.equal(scored.nll, unedited.nll) and torch.equal(scored.accuracy, unedited.accuracy)


def test_mixed_batch_rows_match_their_single_row_forward(tiny_lm):
    lm, tok = tiny_lm
    model = EditedModel(lm, tok)
    batch = encode_pairs(tok, PROMPTS, TARGETS)
    prompts = torch.randn(3, 3, lm.config.hidden_size)
    fired = torch.tensor([True, False, True])
    mixed = model(batch.input_ids, batch.attention_mask, prompts, fired)
    for i in range(3):
        L = int(batch.attention_mask[i].sum())
        single = model(batch.input_ids[i:i + 1, :L], batch.attention_mask[i:i + 1, :L], prompts[i:i + 1], fired[i:i + 1])
        torch.testing.assert_close(mixed[i, :L], single[0], atol=1e-4, rtol=1e-4)
    base = lm(input_ids=batch.input_ids[1:2], attention_mask=batch.attention_mask[1:2]).logits
    L = int(batch.attention_mask[1].sum())
    torch.testing.assert_close(mixed[1, :L], base[0, :L], atol=1e-4, rtol=1e-4)
    assert (mixed[0] - base[0]).abs().max() > 1e-2  # the prompt changes an edited row


def test_edit_changes_scores_and_remove_restores_them(make_editor):
    editor = make_editor()
    before = editor.score(PROMPTS, TARGETS, use_memory=False)
    editor.edit(REQUESTS)
    _always_fire(editor)
    edited = editor.score(PROMPTS, TARGETS)
    assert edited.fired.all() and not torch.equal(edited.nll, before.nll)
    editor.remove([r["id"] for r in REQUESTS])
    after = editor.score(PROMPTS, TARGETS)
    assert not after.fired.any() and torch.equal(after.nll, before.nll)


def test_row_prompts_carry_the_retrieved_edit(make_editor):
    editor = make_editor()
    assert editor.row_prompts(PROMPTS).prompts is None  # empty memory: the plain LM
    editor.edit(REQUESTS)
    _always_fire(editor)
    rows = editor.row_prompts(PROMPTS)
    r = editor.retrieve(PROMPTS)
    assert rows.ids == [editor.memory.ids[int(k)] for k in r.rows]
    torch.testing.assert_close(rows.prompts, editor.memory.prompts[r.rows])
    torch.testing.assert_close(rows.margins, r.scores - r.prototype_scores)
    _never_fire(editor)
    rows = editor.row_prompts(PROMPTS)
    assert rows.ids == [None] * len(PROMPTS) and not rows.fired.any() and not rows.prompts.any()


def test_batched_generation_with_mixed_retrieval_equals_one_by_one(make_editor):
    editor = make_editor()
    editor.edit(REQUESTS[:2])
    texts = PROMPTS[:2] + ["Completely unrelated question about bones?", "Hi"]
    top = editor.retrieve(texts).scores
    # a similarity gate between the lowest and highest top-1 score: some rows fire, some do not
    editor.memory.prototype_key = torch.zeros_like(editor.memory.prototype_key)
    editor.memory.config.min_similarity = float(top.sort().values[1:3].mean())
    fired = editor.retrieve(texts).fired
    assert fired.any() and not fired.all()
    batched = editor.generate(texts, max_new_tokens=12)
    single = [editor.generate([t], max_new_tokens=12)[0] for t in texts]
    assert batched == single
    unedited = editor.generate(texts, max_new_tokens=12, use_memory=False)
    assert [b != u for b, u in zip(batched, unedited)] == fired.tolist()


def test_keys_follow_the_method(make_editor):
    medrek, recipe = make_editor("medrek"), make_editor("recipe")
    for editor in (medrek, recipe):
        editor.edit(REQUESTS)
    with torch.no_grad():
        q = medrek.encoder.query(PROMPTS)
        k = recipe.encoder.knowledge([f"{p} {t}" for p, t in zip(PROMPTS, TARGETS)])
    torch.testing.assert_close(medrek.memory.keys, q)
    torch.testing.assert_close(recipe.memory.keys, k)


def test_explain_reports_scores(make_editor):
    editor = make_editor()
    editor.edit(REQUESTS)
    _always_fire(editor)
    why = editor.explain(PROMPTS[1])
    assert why.fired and why.edit_id == why.top_edit_id and why.request["target_new"] == TARGETS[why_index(why)]
    assert why.score >= why.runner_up_score and why.score > why.prototype_score


def why_index(why):
    return [r["id"] for r in REQUESTS].index(why.edit_id)


def test_edit_requests_are_validated(make_editor):
    editor = make_editor()
    with pytest.raises(ValueError, match="edit request 0: 'target_new' must be a non-empty string"):
        editor.edit({"prompt": "x", "target_new": " "})
    assert editor.edit({"prompt": "x?", "target_new": "y"}) == [auto_edit_id("x?", "y")]


@pytest.mark.parametrize("method", ["medrek", "recipe", "medrek-no-shared-qk", "medrek-no-attention", "token_attention"])
def test_save_load_round_trip_for_every_method(make_editor, tiny_lm, tmp_path, method):
    editor = make_editor(method)
    editor.edit(REQUESTS)
    editor.save(tmp_path, with_memory=True)
    loaded = Editor.load(tmp_path, lm=tiny_lm, with_memory=True)
    assert loaded.config == editor.config
    a, b = editor.score(PROMPTS, TARGETS), loaded.score(PROMPTS, TARGETS)
    assert torch.equal(a.nll, b.nll) and a.retrieved_ids == b.retrieved_ids


def test_incompatible_checkpoints_are_refused(make_editor, tiny_lm, tmp_path):
    make_editor(key_dim=32).save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "editor.json").read_text())
    meta["config"]["key_dim"] = 48  # claims another size than its tensors
    (tmp_path / "a" / "editor.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"tensor encoder\.\S+ has shape \(\d+, ?\d*\), this editor needs"):
        Editor.load(tmp_path / "a", lm=tiny_lm)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "editor.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not a medrek editor checkpoint"):
        Editor.load(tmp_path / "b", lm=tiny_lm)
    make_editor().save(tmp_path / "c")
    (tmp_path / "c" / "editor.safetensors").write_bytes(b"\x80\x04\x95pickled")
    with pytest.raises(CheckpointError, match="sha256 differs from the one recorded"):
        Editor.load(tmp_path / "c", lm=tiny_lm)
    meta = json.loads((tmp_path / "c" / "editor.json").read_text())
    del meta["weights_sha256"]  # as editors saved before the checksum existed
    (tmp_path / "c" / "editor.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        Editor.load(tmp_path / "c", lm=tiny_lm)


def test_automatic_ids_never_clash_after_removal_or_with_user_ids(make_editor):
    editor = make_editor()
    a, c = auto_edit_id("a?", "b"), auto_edit_id("c?", "d")
    assert editor.edit([{"prompt": "a?", "target_new": "b"}, {"prompt": "c?", "target_new": "d"}]) == [a, c]
    editor.remove(a)
    assert editor.edit({"prompt": "e?", "target_new": "f"}) == [auto_edit_id("e?", "f")]
    assert editor.edit({"id": "edit-0", "prompt": "g?", "target_new": "h"}) == ["edit-0"]  # a user's own id
    assert editor.edit({"prompt": "g?", "target_new": "h"}) == [auto_edit_id("g?", "h")]
    assert editor.memory.ids == [c, auto_edit_id("e?", "f"), "edit-0", auto_edit_id("g?", "h")]
    with pytest.raises(ValueError, match="already stored"):
        editor.edit({"prompt": "c?", "target_new": "d"})  # the same request again


def test_an_edit_its_own_prompt_does_not_fire_is_named(make_editor):
    import warnings

    from medrek import EditNotRetrievedWarning

    blocked = make_editor(min_similarity=1e9)  # no score reaches this gate
    with pytest.warns(EditNotRetrievedWarning, match=r"3 of 3 edits do not fire on their own prompt: .*"
                                                     r"min_similarity \(-?\d+\.\d{4} < 1e\+09\)"):
        blocked.edit(REQUESTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EditNotRetrievedWarning)
        make_editor(min_similarity=1e9).edit(REQUESTS, check_retrieval=False)  # evaluations measure it instead
        make_editor(min_similarity=1e9, exact_match=True).edit(REQUESTS)  # exact match fires them
        fires = make_editor()
        fires.memory.config.min_similarity = None
        fires.memory.config.prototype_gate = False
        fires.edit(REQUESTS)  # every edit fires on its own prompt: nothing to say
