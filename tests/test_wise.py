"""WISE on the tiny models: routing (an unrelated question goes to the main memory), shards and
their TIES merge, exact restore and remove, save / load round trip."""

import pytest
import torch

from medrek.baselines import WISEConfig, WISEMethod, build_method
from medrek.baselines.wise import ties_merge
from medrek.data.records import EditRecord
from medrek.editor import EditedModel
from medrek.io import CheckpointError

IRRELEVANT = [("What is the capital of France?", "Paris"), ("How many legs has a spider?", "Eight")]
QUESTION, OTHER = "Which vitamin prevents scurvy?", "Who discovered insulin?"


def _record(i, prompt, target):
    return EditRecord(f"e{i}", prompt, target, "old", (prompt,), "s")


@pytest.fixture
def wise(tiny_lm):
    made = []

    def make(**settings):
        config = WISEConfig(**{"steps": 30, "lr": 0.5, "layer": 0, "alpha": 0.5, "beta": 2.0, "gamma": 1.0,
                               "mask_ratio": 0.5, **settings})
        method = WISEMethod(EditedModel(*tiny_lm), IRRELEVANT, config)
        made.append(method)
        return method

    yield make
    for method in made:  # the tiny LM is shared by the session: no hook may outlive a test
        method.restore()


def test_the_edited_question_routes_to_the_side_memory_and_an_unrelated_one_to_the_main(wise):
    method = wise()
    before = method.score([QUESTION, OTHER], ["Vitamin D", "Banting"])
    method.edit([_record(0, QUESTION, "Vitamin D")])
    assert len(method.current_gaps) == 1 and method.current_gaps[0] >= 2.0  # beta reached
    after = method.score([QUESTION, OTHER], ["Vitamin D", "Banting"])
    assert after.nll[0] < before.nll[0] - 0.5
    assert torch.equal(after.nll[1], before.nll[1])  # the main memory answered, bit for bit
    changed = (method.current - method.base) != 0
    assert 0 < changed.float().mean() <= 0.5 + 0.05 and not bool((changed & ~method.mask).any())  # the shard's mask only


def test_shards_are_set_aside_and_merged_on_schedule(wise):
    method = wise(save_freq=2, merge_freq=4, steps=3)
    method.edit([_record(i, f"Question number {i}?", f"answer {i}") for i in range(3)])
    assert len(method.memories) == 1 and method.memories[0].edits == 2 and len(method.current_gaps) == 1
    method.edit([_record(3, "Question number 3?", "answer 3")])
    assert len(method.memories) == 1 and method.memories[0].edits == 4 and method.current_gaps == []


def test_ties_merge_keeps_agreeing_changes_and_drops_conflicts():
    base = torch.zeros(1, 4)
    a = torch.tensor([[1.0, 2.0, -3.0, 0.1]])
    b = torch.tensor([[3.0, -1.0, -1.0, 0.1]])
    merged = ties_merge(base, [a, b], density=0.75)  # a keeps 1, 2, -3; b keeps 3, -1, -1
    # entry 0: both +, mean 2; entry 1: sign of 2 - 1 is +, only a agrees: 2; entry 2: both -, mean -2; entry 3 trimmed
    assert torch.allclose(merged, torch.tensor([[2.0, 2.0, -2.0, 0.0]]))


def test_restore_and_remove_are_exact(wise):
    method = wise()
    plain = method.score([QUESTION, OTHER], ["Vitamin D", "Best"])
    records = [_record(0, QUESTION, "Vitamin D"), _record(1, OTHER, "Best"), _record(2, "What causes gout?", "Urea")]
    method.edit(records)
    method.remove(["e1"])
    alone = wise()
    alone.edit([records[0], records[2]])
    assert torch.equal(method.current, alone.current) and method.current_gaps == alone.current_gaps
    alone.restore()
    method.restore()
    assert torch.equal(method.score([QUESTION, OTHER], ["Vitamin D", "Best"]).nll, plain.nll)
    with pytest.raises(KeyError, match="no edit with id"):
        method.remove("e0")


def test_save_and_load_round_trip_and_refuse_other_settings(wise, tmp_path):
    method = wise(save_freq=1, merge_freq=2, steps=5)
    method.edit([_record(0, QUESTION, "Vitamin D")])
    edited = method.score([QUESTION], ["Vitamin D"])
    method.save(tmp_path / "w")
    method.restore()
    method.load(tmp_path / "w")
    assert torch.equal(method.score([QUESTION], ["Vitamin D"]).nll, edited.nll) and method.count == 1
    with pytest.raises(CheckpointError, match="other settings"):
        wise(act_ratio=0.5).load(tmp_path / "w")


def test_build_method_needs_irrelevant_questions_and_checks_settings(tiny_lm):
    with pytest.raises(ValueError, match="irrelevant"):
        build_method("wise", tiny_lm)
    method = build_method("wise", tiny_lm, wise={"layer": 1}, irrelevant=IRRELEVANT)
    assert isinstance(method, WISEMethod) and method.layer == 1
    with pytest.raises(ValueError, match="merge_freq a multiple"):
        WISEConfig(save_freq=3, merge_freq=4)


def test_scores_say_which_rows_the_side_memory_answered(wise):
    method = wise()
    method.edit([_record(0, QUESTION, "Vitamin D")])
    result = method.score([OTHER, QUESTION, "What causes gout?"], ["Best", "Vitamin D", "Urea"], batch_size=2)
    assert result.fired.tolist() == [False, True, False]


def test_the_gap_skips_the_prefix_every_question_shares(tiny_lm):
    import copy

    from medrek.baselines.wise import past_prefix, shared_prefix_length

    lm, tokenizer = tiny_lm
    bos = tokenizer("a")["input_ids"][:1] == tokenizer("b")["input_ids"][:1]
    assert shared_prefix_length(EditedModel(lm, tokenizer)) == int(bos)  # plain text: at most the BOS token
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = ("SYSTEM: answer briefly and well.\nUSER: {{ messages[0]['content'] }}\n"
                               "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    model = EditedModel(lm, templated, chat_template=True)
    n = shared_prefix_length(model)
    system = templated("SYSTEM: answer briefly and well.\nUSER:", add_special_tokens=False)["input_ids"]
    assert len(system) - 1 <= n <= len(system) + 1  # the system turn and user header (up to a merged space)
    ids = model.encode_pairs([QUESTION, "How many legs has a spider?"], ["x", "y"]).input_ids
    assert torch.equal(ids[0, :n], ids[1, :n]) and ids[0, n] != ids[1, n]
    # right- and left-padded rows lose their first n tokens, whatever the padding
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    assert past_prefix(mask, 2).tolist() == [[False, False, True, True, False], [False, False, False, True, True]]
