"""The pieces behind editors that edit: chat-template questions, the LM-embedding prompt
encoder, masked padding slots, per-method training settings and the generation check."""

import copy

import pandas as pd
import pytest
import torch

from conftest import REQUESTS, make_records
from medrek.baselines import build_method
from medrek.config import ParamsError
from medrek.editor import EditedModel, encode_pairs, resolve_chat_template
from medrek.evaluate.generation import contains_target, generation_check
from medrek.evaluate.results import read_results
from medrek.models.prompt import PromptEncoderConfig
from medrek.train import TrainConfig, method_configs

PROMPTS = [r["prompt"] for r in REQUESTS]
TARGETS = [r["target_new"] for r in REQUESTS]
TEMPLATE = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[a]{% endif %}"


@pytest.fixture
def templated_lm(tiny_lm):
    """The tiny LM with a (copied) tokenizer that has a chat template."""
    lm, tok = tiny_lm
    tok = copy.deepcopy(tok)
    tok.chat_template = TEMPLATE
    return lm, tok


def test_chat_template_setting_resolves_and_refuses_unknown_values(tiny_lm, templated_lm):
    assert resolve_chat_template(templated_lm[1], "auto") is True
    assert resolve_chat_template(templated_lm[1], "none") is False
    assert resolve_chat_template(tiny_lm[1], "auto") is False  # no template: plain text
    with pytest.raises(ValueError, match="chat_template must be one of"):
        resolve_chat_template(tiny_lm[1], "yes")
    with pytest.raises(ValueError, match="no chat template"):
        EditedModel(*tiny_lm, chat_template=True)


def test_templated_questions_are_scored_and_generated_inside_the_template(templated_lm):
    lm, tok = templated_lm
    model = EditedModel(lm, tok, chat_template=True)
    assert model.format(["ab"]) == ["[user]ab[a]"]
    batch = model.encode_pairs(["ab"], ["x"])
    plain = encode_pairs(tok, ["[user]ab[a]"], ["x"], add_special_tokens=False)
    assert torch.equal(batch.input_ids, plain.input_ids) and torch.equal(batch.target_mask, plain.target_mask)
    assert tok.decode(batch.input_ids[0][batch.target_mask[0]]) == " x"
    queries = model.encode_queries(["ab", "abcd"])
    assert tok.decode(queries["input_ids"][0][queries["attention_mask"][0].bool()]) == "[user]ab[a]"
    # the plain model reads the bare question (with the tokenizer's <s>)
    assert EditedModel(lm, tok).encode_pairs(["ab"], ["x"]).input_ids.shape[1] == 5  # <s> a b " " x


def test_all_zero_prompt_slots_are_masked_like_padding(tiny_lm):
    lm, tok = tiny_lm
    model = EditedModel(lm, tok)
    batch = encode_pairs(tok, PROMPTS[:1], TARGETS[:1])
    H = lm.config.hidden_size
    prompt = torch.randn(1, 2, H)
    padded = torch.cat([torch.zeros(1, 3, H), prompt], 1)  # three padding slots in front
    fired = torch.ones(1, dtype=torch.bool)
    torch.testing.assert_close(model(batch.input_ids, batch.attention_mask, padded, fired),
                               model(batch.input_ids, batch.attention_mask, prompt, fired), atol=1e-5, rtol=1e-5)


def test_lm_embedding_prompt_starts_as_the_edit_text_in_a_frame(make_editor):
    editor = make_editor("medrek-lm-embedding", n_tokens=12, n_prefix_tokens=2, n_suffix_tokens=1)
    cfg = editor.prompt_encoder.config
    assert (cfg.kind, cfg.text_slots) == ("lm_embedding", 9)
    _, prompts = editor.encode_edits(["ab"], ["xy"])  # "ab xy": 5 characters, 5 tokens
    table = editor.model.lm.get_input_embeddings()
    ids = editor.model.tokenizer("ab xy", add_special_tokens=False)["input_ids"]
    assert prompts.shape == (1, 2 + 5 + 1, table.embedding_dim)  # sized to the edit: frame + its 5 tokens
    torch.testing.assert_close(prompts[0, 2:7], table.weight[ids])  # zero-initialised residual: the text itself
    frame = editor.model.embed_texts(["New fact:"], 2).states[0]
    torch.testing.assert_close(prompts[0, :2], frame)  # the learned prefix starts as IKE's frame
    # in a batch, shorter edits are left-padded with zero slots (masked later)
    _, both = editor.encode_edits(["ab", "abcd"], ["xy", "xy"])
    assert both.shape[1] == 2 + 7 + 1 and torch.equal(both[0, 2:4], torch.zeros(2, table.embedding_dim))
    # a long edit text keeps its end (the target) and drops the start of the prompt
    _, long = editor.encode_edits(["a very long question indeed"], ["xy"])
    tail = editor.model.tokenizer("a very long question indeed xy", add_special_tokens=False)["input_ids"][-9:]
    assert long.shape[1] == 12
    torch.testing.assert_close(long[0, 2:11], table.weight[tail])


def test_lm_embedding_needs_room_for_text():
    with pytest.raises(ValueError, match="no slot is left"):
        PromptEncoderConfig(kind="lm_embedding", n_tokens=6, n_prefix=4, n_suffix=2)


def test_lm_embedding_editor_trains_its_frame_and_saves(make_editor, tmp_path, tiny_lm):
    from medrek import Editor

    editor = make_editor("medrek-lm-embedding", n_tokens=40)
    _, prompts = editor.encode_edits(PROMPTS, TARGETS)
    prompts.sum().backward()
    assert editor.prompt_encoder.prefix.grad is not None and editor.prompt_encoder.text_proj.weight.grad is not None
    editor.save(tmp_path / "ed")
    again = Editor.load(tmp_path / "ed", lm=tiny_lm)
    assert again.config.n_tokens == 40 and again.config.method == "medrek-lm-embedding"
    torch.testing.assert_close(again.encode_edits(PROMPTS, TARGETS)[1], editor.encode_edits(PROMPTS, TARGETS)[1])


def test_method_configs_give_each_method_its_own_fields():
    base = TrainConfig(lm="tiny-llama", encoder="tiny-bert", n_tokens=3)
    configs = method_configs(base, ["medrek", "medrek-lm-embedding"], {"medrek-lm-embedding": {"n_tokens": 30}})
    assert configs["medrek"].n_tokens == 3 and configs["medrek"].method == "medrek"
    assert configs["medrek-lm-embedding"].n_tokens == 30
    with pytest.raises(ParamsError, match="unknown parameter 'n_token'.*did you mean 'n_tokens'"):
        method_configs(base, ["medrek"], {"medrek": {"n_token": 30}})
    with pytest.raises(ParamsError, match="unknown parameter 'recipe'"):
        method_configs(base, ["medrek"], {"recipe": {"n_tokens": 30}})


def test_evaluation_refuses_an_editor_trained_with_another_chat_setting(make_editor, tmp_path, templated_lm):
    editor = make_editor("medrek", chat_template="none")
    editor.save(tmp_path / "ed")
    with pytest.raises(ValueError, match="trained with chat_template='none'.*uses chat_template='auto'"):
        build_method("medrek", templated_lm, checkpoints={"medrek": tmp_path / "ed"}, chat_template="auto")
    method = build_method("medrek", templated_lm, checkpoints={"medrek": tmp_path / "ed"}, chat_template="none")
    assert method.model.chat_template is False
    assert build_method("unedited", templated_lm, chat_template="auto").model.chat_template is True


@pytest.mark.parametrize("method", ["medrek", "medrek-lm-embedding"])  # fixed-size and edit-sized prompts
def test_generation_check_matches_edit_generate_restore(make_editor, method):
    editor = make_editor(method, n_tokens=40) if method == "medrek-lm-embedding" else make_editor()
    records = make_records(4)
    editor.memory.config.min_similarity = None
    table = generation_check(None, records, editor, max_new_tokens=5)
    assert list(table["record_id"]) == [r.record_id for r in records]
    for r, answer, fired in zip(records, table["answer"], table["fired"]):
        editor.clear()
        editor.edit([r])
        assert editor.generate([r.prompt], max_new_tokens=5) == [answer]
        assert bool(editor.retrieve([r.prompt]).fired[0]) == fired
    editor.clear()
    plain = generation_check(editor.model, records, max_new_tokens=5)
    assert list(plain["answer"]) == editor.generate([r.prompt for r in records], max_new_tokens=5)
    assert plain["method"].eq("unedited").all() and not plain["fired"].any()


def test_contains_target_ignores_case_and_padding():
    assert contains_target("The answer is Vitamin c.", " vitamin C ")
    assert not contains_target("", "Copper")


def test_results_written_before_the_chat_setting_read_as_plain(tmp_path):
    old = pd.DataFrame([{"method": "medrek", "lm": "x", "encoder": "y", "dataset": "d", "split": "s",
                         "protocol": "single", "batch_size": 1, "eval_at": 1, "metric": "efficacy",
                         "value": 0.5, "n": 1, "seed": 0, "run_id": "r"}])
    old.to_csv(tmp_path / "results.csv", index=False)
    assert read_results([tmp_path / "results.csv"])["chat_template"].tolist() == ["none"]


def test_gate_calibration_meets_its_false_fire_target(make_editor):
    from medrek.train.calibration import calibrate_gate, gate_margins

    editor = make_editor("medrek-lm-embedding", n_tokens=40)
    records = make_records(7)
    raw = gate_margins(editor, records, block_size=4)["locality"]
    assert len(raw) == 7
    assert (raw > 0).sum() >= 4  # the tiny random editor fires on most locality prompts
    half = calibrate_gate(editor, records, max_false_fire=0.5, block_size=4)  # at most 3 of 7 may fire
    positive = raw[raw > 0].sort(descending=True).values
    assert half.min_margin == pytest.approx(float(positive[3]), abs=1e-5)
    assert half.false_fire_after == pytest.approx(3 / 7) and half.false_fire_before == pytest.approx(float((raw > 0).float().mean()))
    strict = calibrate_gate(editor, records, max_false_fire=0.0, block_size=4)
    assert strict.false_fire_after == 0.0 and editor.config.min_margin == strict.min_margin
    if strict.false_fire_before > 0:  # the tiny random editor fires on some locality prompts
        assert strict.min_margin == pytest.approx(float(raw.max()), abs=1e-5)
    assert strict.prompt_after <= strict.prompt_before and strict.rephrase_after <= strict.rephrase_before
    # the new gate is what the editor's memory uses from now on
    editor.edit(records[:4])
    r = editor.memory.retrieve(editor.encoder.query([rec.locality["locality"].prompt for rec in records[:4]]))
    assert not r.fired.any()
    with pytest.raises(ValueError, match="max_false_fire"):
        calibrate_gate(editor, records, max_false_fire=1.5)
