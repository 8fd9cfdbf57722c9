"""Long edits and memories of token ids: the working preset's prompt is built from the edit's LM
tokens when it fires, carries the whole edit text when its slots allow, and never cuts one
without counting and warning."""

import json
import warnings

import pytest
import torch

from conftest import make_records
from medrek import Editor
from medrek.baselines.base import RetrievalMethod
from medrek.editor import EditedModel, EditTextCutWarning, pad_prompts
from medrek.evaluate import unedited_locality_predictions
from medrek.evaluate.protocols import Protocol, run_protocol
from medrek.io import CheckpointError
from medrek.memory import EditMemory, MemoryConfig, TokenRows

LONG_FACT = "Adiponectin " + " ".join(f"word{i}" for i in range(60))  # far more LM tokens than any slot count


def working(make_editor, **overrides) -> Editor:
    """A tiny medrek-lm-embedding editor whose every edit fires (prototype score 0), its own edit
    on its own prompt (exact match: the untrained retriever would pick any)."""
    editor = make_editor("medrek-lm-embedding", **{"n_tokens": 40, "n_prefix_tokens": 2, "n_suffix_tokens": 1,
                                                   "min_similarity": -1e9, "exact_match": True, **overrides})
    editor.memory.prototype_key.zero_()
    return editor


def test_a_long_fact_is_counted_and_warned_about_then_carried_whole_with_more_slots(make_editor):
    request = {"id": "long", "prompt": "Which hormone falls in obesity?", "target_new": LONG_FACT}
    short = working(make_editor, n_tokens=12)  # 9 text slots
    n = len(short.model.token_ids([f"{request['prompt']} {LONG_FACT}"])[0])
    assert n >= 200
    assert short.edit_tokens_dropped([request["prompt"]], [LONG_FACT]) == [n - 9]
    with pytest.warns(EditTextCutWarning, match=r"1 of 1 edit texts are longer than the 9 LM-token slots.*'long'"):
        short.edit(request)
    assert len(short.memory.token_rows.row(0)) == 9  # the last 9 tokens: the end of the target
    whole = working(make_editor, n_tokens=n + 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EditTextCutWarning)
        whole.edit(request)
    assert whole.edit_tokens_dropped([request["prompt"]], [LONG_FACT]) == [0]
    prompts = whole.memory.stored_prompts([0])  # [1, 2 + n + 1, H]
    table = whole.model.lm.get_input_embeddings().weight
    ids = whole.model.token_ids([f"{request['prompt']} {LONG_FACT}"])[0]
    assert prompts.shape[1] == 2 + n + 1
    torch.testing.assert_close(prompts[0, 2:-1], table[ids])  # every token of the edit, zero-initialised residual


def test_a_token_id_memory_builds_the_prompts_encode_edits_makes(make_editor):
    editor = working(make_editor)
    records = make_records(5)
    editor.edit(records)
    assert editor.memory.config.prompt_store == "token_ids" and editor.memory.prompts.numel() == 0
    _, want = editor.encode_edits([r.prompt for r in records], [r.target_new for r in records])  # [5, T, H]
    found = editor.lookup([r.prompt for r in records])
    assert found.ids == [r.record_id for r in records]
    torch.testing.assert_close(pad_prompts([found.prompts]), pad_prompts([want, found.prompts])[:5])
    # the bytes held per edit: its key and its token ids (and an offset), not T x H floats
    per_edit = editor.memory.nbytes() / len(editor.memory)
    mean_tokens = len(editor.memory.token_rows.ids) / len(editor.memory)
    assert per_edit == pytest.approx(4 * editor.config.key_dim + 4 * mean_tokens + 8, abs=8)


def test_padding_slots_of_every_row_are_not_computed_and_change_nothing(make_editor):
    editor = working(make_editor)
    records = make_records(3)
    editor.edit(records)
    plain = editor.score([r.prompt for r in records], [r.target_new for r in records])
    wide = editor.row_prompts([r.prompt for r in records])
    padded = pad_prompts([torch.zeros(3, wide.prompts.shape[1] + 5, wide.prompts.shape[2]), wide.prompts.cpu()])[3:]
    model: EditedModel = editor.model
    batch = model.encode_pairs([r.prompt for r in records], [r.target_new for r in records])
    inputs, skip = model._inputs(batch.input_ids, batch.attention_mask, padded, wide.fired)
    assert skip == wide.prompts.shape[1]  # the five all-zero columns were dropped before the LM
    scores = editor.score([r.prompt for r in records], [r.target_new for r in records])
    torch.testing.assert_close(scores.nll, plain.nll)


def test_a_token_id_memory_saves_loads_and_refuses_broken_offsets(make_editor, tmp_path, tiny_lm):
    editor = working(make_editor)
    records = make_records(4)
    editor.edit(records)
    editor.save(tmp_path / "ed", with_memory=True)
    again = Editor.load(tmp_path / "ed", lm=tiny_lm, with_memory=True)
    assert again.memory.ids == editor.memory.ids
    assert torch.equal(again.memory.token_rows.ids, editor.memory.token_rows.ids)
    prompts = [r.prompt for r in records]
    torch.testing.assert_close(again.score(prompts, [r.target_new for r in records]).nll,
                               editor.score(prompts, [r.target_new for r in records]).nll)
    bad = TokenRows(torch.arange(5, dtype=torch.int32), torch.tensor([0, 3, 2, 5]))
    with pytest.raises(CheckpointError, match="offsets do not describe"):
        bad.check("memory.safetensors")


def test_a_vector_memory_saved_before_token_ids_still_serves_the_working_editor(make_editor, tmp_path, tiny_lm):
    editor = working(make_editor)
    records = make_records(4)
    keys, prompts = editor.encode_edits([r.prompt for r in records], [r.target_new for r in records])
    prompts = pad_prompts([torch.zeros(0, 40, prompts.shape[2]), prompts])  # as saved then: n_tokens wide
    config = editor.new_memory().config
    config.prompt_store = "vectors"
    old = EditMemory(config, editor.encoder.prototype_key().detach())
    old.add([r.record_id for r in records], keys, prompts, [{"prompt": r.prompt, "target_new": r.target_new}
                                                               for r in records])
    old.owner = editor.fingerprint()
    editor.save(tmp_path / "ed")
    old.save(tmp_path / "ed" / "memory")
    meta = json.loads((tmp_path / "ed" / "editor.json").read_text())
    del meta["memory_sha256"]  # as an editor.json of that time: it named no memory
    (tmp_path / "ed" / "editor.json").write_text(json.dumps(meta))
    again = Editor.load(tmp_path / "ed", lm=tiny_lm, with_memory=True)
    assert again.memory.config.prompt_store == "vectors" and again.memory.prompts.shape[1] == 40
    fresh = working(make_editor)  # the same editor with a token-id memory
    fresh.edit(records)
    questions, targets = [r.prompt for r in records], [r.target_new for r in records]
    torch.testing.assert_close(again.score(questions, targets).nll, fresh.score(questions, targets).nll)
    more = make_records(6)[4:]
    again.edit(more)  # new edits go into the old memory as n_tokens-wide vectors, like the stored ones
    assert len(again.memory) == 6 and again.memory.prompts.shape[1] == 40


def test_results_rows_count_the_edit_tokens_a_prompt_could_not_carry(make_editor, tiny_lm, tmp_path):
    records = make_records(3)
    editor = working(make_editor, n_tokens=8)  # 5 text slots: every edit text is longer
    want = editor.edit_tokens_dropped([r.prompt for r in records], [r.target_new for r in records])
    assert all(want)
    reference = unedited_locality_predictions(EditedModel(*tiny_lm), records)
    with pytest.warns(EditTextCutWarning):
        rows = run_protocol(RetrievalMethod(editor), records, Protocol("single"), reference, tmp_path / "m.csv",
                            progress=False)
    assert rows.set_index("record_id").loc[[r.record_id for r in records], "edit_tokens_dropped"].tolist() == want


def test_memory_config_refuses_an_unknown_prompt_store():
    with pytest.raises(ValueError, match="unknown prompt_store 'ids'"):
        MemoryConfig(4, 2, 4, prompt_store="ids")


def test_query_prefix_is_left_out_of_what_retrieval_reads(make_editor):
    prefix = "Please explain this fact:"
    editor = working(make_editor, exact_match=False, query_prefix=prefix)
    plain = working(make_editor, exact_match=False)
    assert editor.question_part("  please EXPLAIN this fact: \n Which hormone? ") == "Which hormone?"
    assert editor.question_part(prefix) == prefix  # nothing would be left: the text as it is
    torch.testing.assert_close(editor.query_vectors([f"{prefix}\n Which hormone?"]), plain.query_vectors(["Which hormone?"]))
    assert editor.fingerprint() != plain.fingerprint()  # a result made with it says so


def test_rows_that_did_not_fire_score_as_the_plain_lm_beside_rows_that_did(make_editor):
    editor = working(make_editor, min_similarity=1e9)  # only exact matches fire
    records = make_records(4)
    editor.edit(records[:2])  # the first two fire, the others do not
    prompts, targets = [r.prompt for r in records], [r.target_new for r in records]
    mixed = editor.score(prompts, targets)
    assert mixed.fired.tolist() == [True, True, False, False]
    alone = [editor.score([p], [t]) for p, t in zip(prompts, targets)]
    torch.testing.assert_close(mixed.nll, torch.cat([a.nll for a in alone]), atol=1e-5, rtol=1e-5)
    assert [p.tolist() for p in mixed.predictions] == [a.predictions[0].tolist() for a in alone]


def test_generation_of_rows_that_did_not_fire_is_the_plain_lms_beside_rows_that_did(make_editor):
    """Masked prompt slots change nothing: a mixed batch generates what each row generates alone."""
    editor = working(make_editor, min_similarity=1e9)  # only exact matches fire
    records = make_records(4)
    editor.edit(records[:2])
    questions = [r.prompt for r in records]
    together = editor.generate(questions, max_new_tokens=6)
    assert together == [editor.generate([q], max_new_tokens=6)[0] for q in questions]
    assert together[2:] == editor.generate(questions[2:], max_new_tokens=6, use_memory=False)


def test_the_committed_long_edit_editor_keeps_the_working_retriever():
    """The long-edit fine-tune trains the prompt encoder only: its knowledge encoder is the working
    editor's, bit for bit, but for the query head that the working editor's retrieval stage
    retrained after the long-edit editor was made (so it has no cross-encoder either), and it is
    saved to carry MedFE's edits whole."""
    from pathlib import Path

    import yaml

    from medrek.editor import read_editor_config
    from medrek.io import read_tensors

    root = Path(__file__).resolve().parents[1] / "checkpoints" / "small"
    long, working = root / "medrek-lm-embedding-long", root / "medrek-lm-embedding"
    a, b = read_tensors(long / "editor.safetensors"), read_tensors(working / "editor.safetensors")
    assert set(a) == {k for k in b if not k.startswith("verifier.")}
    encoder = [k for k in a if k.startswith("encoder.") and not k.startswith("encoder.query_head.")]
    assert encoder and all(torch.equal(a[k], b[k]) for k in encoder)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("prompt_encoder."))
    _, config = read_editor_config(long)
    assert config.n_tokens == 518 and config.exact_match
    params = yaml.safe_load((long / "params.yaml").read_text())["notebooks"]["02_train_medrek"]
    assert params["init_from"] == {"medrek-lm-embedding": "checkpoints/small/medrek-lm-embedding"}
