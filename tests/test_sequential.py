"""The sequential protocol for FT-L and MEMIT (OneAtATime) on the tiny models: one edit at a
time equals editing each alone on the weights the earlier ones left, restore is exact, the
state saves and loads bit for bit, and memory growth grows it and resumes from the saved state."""

import pytest
import torch
from conftest import make_records

from medrek.baselines import (FTConfig, FTLMethod, GRACEConfig, GRACEMethod, MEMITConfig, MEMITMethod, OneAtATime,
                              one_at_a_time)
from medrek.editor import EditedModel
from medrek.io import CheckpointError


def _state(lm):
    return {k: v.detach().clone() for k, v in lm.state_dict().items()}


def _ft(tiny_lm, steps=4):
    return FTLMethod(EditedModel(*tiny_lm), FTConfig(layer=1, steps=steps, lr=1e-2, norm_constraint=5e-3))


def _memit(tiny_lm):
    texts = [f"{r.prompt} {r.target_new}" for r in make_records(7)]
    return MEMITMethod(EditedModel(*tiny_lm), texts, MEMITConfig(layers=(0,), v_steps=5, mom2_weight=10.0))


@pytest.fixture(params=["ft-l", "memit"])
def sequential(request, tiny_lm):
    method = OneAtATime(_ft(tiny_lm) if request.param == "ft-l" else _memit(tiny_lm))
    yield method
    method.restore()  # the tiny LM is shared by the session


def test_one_at_a_time_is_each_edit_alone_on_the_weights_before_it(sequential, tiny_lm):
    records = make_records(3)
    before = _state(sequential.model.lm)
    sequential.edit(records)
    ours = _state(sequential.model.lm)
    assert [r.record_id for r in sequential.history] == ["r0", "r1", "r2"]
    sequential.restore()
    assert all(torch.equal(v, before[k]) for k, v in sequential.model.lm.state_dict().items())
    for record in records:  # by hand, with the inner method
        sequential.inner.edit([record])
    by_hand = _state(sequential.model.lm)
    sequential.inner.restore()
    assert all(torch.equal(by_hand[k], ours[k]) for k in ours)
    sequential.inner.edit(records)  # the batch protocol: one update for all three, another result
    batch = _state(sequential.model.lm)
    sequential.inner.restore()
    assert any(not torch.equal(batch[k], ours[k]) for k in ours)


def test_save_and_load_round_trip_and_refuse_another_method(sequential, tiny_lm, tmp_path):
    records = make_records(3)
    sequential.edit(records)
    edited = sequential.score([r.prompt for r in records], [r.target_new for r in records])
    sequential.save(tmp_path / "s")
    sequential.restore()
    sequential.load(tmp_path / "s")
    assert torch.equal(sequential.score([r.prompt for r in records], [r.target_new for r in records]).nll, edited.nll)
    assert [r.record_id for r in sequential.history] == ["r0", "r1", "r2"]
    sequential.restore()
    other = OneAtATime(FTLMethod(EditedModel(*tiny_lm), FTConfig(layer=0, steps=2)))
    with pytest.raises(CheckpointError, match="identity"):
        other.load(tmp_path / "s")
    (tmp_path / "s" / "one_at_a_time.json").write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a medrek"):
        sequential.load(tmp_path / "s")


def test_one_at_a_time_wraps_parameter_editors_only(tiny_lm):
    ft = _ft(tiny_lm)
    assert isinstance(one_at_a_time(ft), OneAtATime) and one_at_a_time(ft).name == "ft-l"
    assert one_at_a_time(ft).identity() == {**ft.identity(), "edits": "one at a time"}
    grace = GRACEMethod(EditedModel(*tiny_lm), GRACEConfig(layer=0))
    assert one_at_a_time(grace) is grace
    with pytest.raises(TypeError, match="parameter editor"):
        OneAtATime(grace)


def test_memory_growth_grows_ft_l_one_edit_at_a_time_and_resumes(tiny_lm, tmp_path):
    from conftest import check_growth_grows_and_resumes

    check_growth_grows_and_resumes(OneAtATime(_ft(tiny_lm, steps=3)), tiny_lm, tmp_path)
