"""GRACE on the tiny models: an edit answers its question, the radius rules (expand, split),
an unrelated question left bit for bit, exact restore and remove, save / load round trip."""

import pytest
import torch

from medrek.baselines import GRACEConfig, GRACEMethod, build_method
from medrek.data.records import EditRecord
from medrek.editor import EditedModel
from medrek.io import CheckpointError


def _record(i, prompt, target):
    return EditRecord(f"e{i}", prompt, target, "old", (prompt,), "s")


@pytest.fixture
def grace(tiny_lm):
    made = []

    def make(**settings):
        method = GRACEMethod(EditedModel(*tiny_lm), GRACEConfig(**{"steps": 40, "lr": 0.5, "layer": 0, **settings}))
        made.append(method)
        return method

    yield make
    for method in made:  # the tiny LM is shared by the session: no hook may outlive a test
        method.restore()


QUESTION, OTHER = "Which vitamin prevents scurvy?", "Who discovered insulin?"


def test_an_edit_answers_its_question_and_leaves_an_unrelated_one_bit_for_bit(grace):
    method = grace(radius=1e-3)
    before = method.score([QUESTION, OTHER], ["Vitamin D", "Banting"])
    method.edit([_record(0, QUESTION, "Vitamin D")])
    after = method.score([QUESTION, OTHER], ["Vitamin D", "Banting"])
    # the tiny random LM carries little from one token to the next, so only the first target token
    # is asked to flip; on SmolLM2 the layers above the edited one carry whole answers
    first = method.model.encode_pairs([QUESTION], ["Vitamin D"])
    first_target = first.input_ids[0, first.target_mask[0]][0]
    assert after.predictions[0][0] == first_target != before.predictions[0][0]
    assert after.nll[0] < before.nll[0] - 1.0
    assert torch.equal(after.nll[1], before.nll[1])  # its tokens lie outside every radius
    assert len(method.codebook) == 1 and method.codebook.radii[0] == pytest.approx(1e-3)


def test_a_nearby_key_with_the_same_answer_is_expanded_and_one_with_another_answer_is_split(grace):
    method = grace(radius=1e6)  # every later key is within reach of the first
    method.edit([_record(0, QUESTION, "Vitamin D")])
    key0 = method.codebook.keys[0].clone()
    method.edit([_record(1, "What vitamin stops scurvy?", "vitamin d")])  # the same answer, folded
    assert len(method.codebook) == 1
    method.edit([_record(2, OTHER, "Best")])  # another answer
    book = method.codebook
    assert len(book) == 2 and book.answers == ["vitamin d", "best"]
    gap = torch.dist(key0, book.keys[1]).item()
    assert book.radii[0].item() == pytest.approx(gap / 2 - 1e-5, rel=1e-5)
    assert book.radii[1].item() == pytest.approx(gap / 2, rel=1e-5)
    assert book.radii[0] < gap / 2 <= book.radii[1] + 1e-6  # neither key's ball holds the other key


def test_restore_and_remove_are_exact(grace, tiny_lm):
    method = grace(radius=1e-3)
    plain = method.score([QUESTION, OTHER], ["Vitamin D", "Best"])
    records = [_record(0, QUESTION, "Vitamin D"), _record(1, OTHER, "Best"), _record(2, "What causes gout?", "Urea")]
    method.edit(records)
    method.remove("e1")
    alone = grace(radius=1e-3)
    alone.edit([records[0], records[2]])
    assert method.codebook.ids == alone.codebook.ids == ["e0", "e2"]
    assert torch.equal(method.codebook.values, alone.codebook.values)
    alone.restore()
    with pytest.raises(KeyError, match="no edit with id"):
        method.remove("nope")
    method.restore()
    again = method.score([QUESTION, OTHER], ["Vitamin D", "Best"])
    assert torch.equal(again.nll, plain.nll) and not method.codebook.ids


def test_save_and_load_round_trip_and_refuse_other_settings(grace, tmp_path):
    method = grace(radius=1e-3)
    method.edit([_record(0, QUESTION, "Vitamin D")])
    edited = method.score([QUESTION], ["Vitamin D"])
    method.save(tmp_path / "g")
    method.restore()
    method.load(tmp_path / "g")
    assert torch.equal(method.score([QUESTION], ["Vitamin D"]).nll, edited.nll)
    assert [r.record_id for r in method.history] == ["e0"]
    other = grace(radius=2.0)
    with pytest.raises(CheckpointError, match="other settings"):
        other.load(tmp_path / "g")
    (tmp_path / "g" / "grace.json").write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a medrek GRACE codebook"):
        method.load(tmp_path / "g")


def test_build_method_makes_grace_and_refuses_a_typo(tiny_lm):
    method = build_method("grace", tiny_lm, grace={"radius": 3.0, "layer": 1})
    assert isinstance(method, GRACEMethod) and method.layer == 1 and method.config.radius == 3.0
    with pytest.raises(ValueError, match="radus"):
        build_method("grace", tiny_lm, grace={"radus": 3.0})
    with pytest.raises(ValueError, match="radius > 0"):
        GRACEConfig(radius=0.0)


def test_scores_say_which_rows_a_key_caught(grace):
    method = grace(radius=1e-3)
    method.edit([_record(0, QUESTION, "Vitamin D")])
    result = method.score([OTHER, QUESTION, "What causes gout?"], ["Best", "Vitamin D", "Urea"], batch_size=2)
    assert result.fired.tolist() == [False, True, False]


def test_memory_growth_adds_to_what_is_held_and_resumes_from_the_saved_state(grace, tiny_lm, tmp_path):
    from conftest import check_growth_grows_and_resumes

    method = grace(radius=1.0, steps=5)
    first, grown = check_growth_grows_and_resumes(method, tiny_lm, tmp_path)
    assert len(method.codebook) == 0  # restored afterwards
    assert first.equals(grown[grown["stored"] < 7].reset_index(drop=True))
