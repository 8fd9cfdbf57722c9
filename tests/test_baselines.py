"""Parameter-editing baselines (FT-L, MEMIT), in-context editing, and the method factory."""

from __future__ import annotations

import pytest
import torch

from medrek.baselines import (FTConfig, FTLMethod, InContextMethod, MEMITConfig, MEMITMethod, build_method)
from medrek.baselines.layers import check_partial_forward, hidden_before, projection
from medrek.baselines.memit import projection_covariance
from medrek.editor import EditedModel, encode_pairs

from conftest import make_records as records


def _state(lm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.state_dict().items()}


def _target_nll(method, recs) -> float:
    return float(method.score([r.prompt for r in recs], [r.target_new for r in recs]).nll.mean())


def test_partial_forward_matches_full_forward(tiny_lm):
    model = EditedModel(*tiny_lm)
    batch = encode_pairs(model.tokenizer, ["What treats asthma?", "Hi"], ["MgSO4", "there"])
    assert check_partial_forward(model.lm, 1, batch.input_ids, batch.attention_mask)
    h = hidden_before(model.lm, 1, batch.input_ids, batch.attention_mask)
    assert h.shape == (*batch.input_ids.shape, model.hidden_size)
    with pytest.raises(ValueError, match="no module"):
        projection(model.lm, 0, "mlp.nope")
    with pytest.raises(ValueError, match="does not exist"):
        projection(model.lm, 7, "mlp.down_proj")


def test_ft_l_learns_respects_the_constraint_and_restores_exactly(tiny_lm):
    model = EditedModel(*tiny_lm)
    before = _state(model.lm)
    recs = records(3)
    method = FTLMethod(model, FTConfig(layer=1, steps=15, lr=1e-2, norm_constraint=5e-3))
    nll0 = _target_nll(method, recs)
    method.edit(recs)
    changed = {k for k, v in model.lm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"model.layers.1.mlp.down_proj.weight"}
    delta = model.lm.state_dict()["model.layers.1.mlp.down_proj.weight"] - before["model.layers.1.mlp.down_proj.weight"]
    assert float(delta.abs().max()) <= 5e-3 + 1e-7
    assert _target_nll(method, recs) < nll0 - 0.05
    method.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.lm.state_dict().items())
    assert not any(p.requires_grad for p in model.lm.parameters())


def test_memit_covariance_update_and_restore(tiny_lm, tmp_path):
    model = EditedModel(*tiny_lm)
    before = _state(model.lm)
    texts = [f"{r.prompt} {r.target_new}" for r in records()]
    cov = projection_covariance(model, [0], "mlp.down_proj", texts)[0]
    # by hand: the projection's inputs over every real token
    seen = []
    hook = projection(model.lm, 0, "mlp.down_proj").register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    for t in texts:
        model.lm(**model.tokenizer([t], return_tensors="pt"))
    hook.remove()
    k = torch.cat([s[0] for s in seen]).double()
    torch.testing.assert_close(cov, (k.T @ k / len(k)).float(), atol=1e-5, rtol=1e-4)

    method = MEMITMethod(model, texts, MEMITConfig(layers=(0,), v_steps=15, v_lr=0.5, mom2_weight=10.0),
                         lm_name="tiny", cache_dir=tmp_path)
    cached = MEMITMethod(model, texts, MEMITConfig(layers=(0,)), lm_name="tiny", cache_dir=tmp_path)
    assert torch.equal(cached.covariance[0], method.covariance[0])  # read back from the cache
    recs = records(3)
    nll0 = _target_nll(method, recs)
    method.edit(recs)
    changed = {k for k, v in model.lm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}
    assert _target_nll(method, recs) < nll0 - 0.05
    method.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.lm.state_dict().items())
    with pytest.raises(ValueError, match="text sample"):
        MEMITMethod(model, ["  "], MEMITConfig(layers=(0,)))


def test_ike_prepends_the_retrieved_edit(make_editor, tiny_lm):
    editor = make_editor("medrek", min_similarity=-1e9)
    editor.memory.prototype_key.zero_()
    method = InContextMethod(editor)
    recs = records(2)
    plain = EditedModel(*tiny_lm)
    assert method.contextualise([recs[0].prompt])[0] == [recs[0].prompt]  # nothing stored
    method.edit(recs)
    texts, found = method.contextualise([recs[0].prompt])
    if bool(found.fired[0]):
        stored = next(r for r in recs if r.record_id == found.ids[0])
        assert texts[0] == f"New Fact: {stored.prompt} {stored.target_new}\nPrompt: {recs[0].prompt}"
    editor.memory.prototype_key.fill_(1e6)  # the prototype wins: nothing fires, the query is alone
    editor.memory._rebuild()
    texts, found = method.contextualise([recs[0].prompt])
    assert texts == [recs[0].prompt] and not bool(found.fired[0])
    a = method.score([recs[0].prompt], [recs[0].target_new])
    b = build_method("unedited", tiny_lm).score([recs[0].prompt], [recs[0].target_new])
    assert torch.equal(a.nll, b.nll)
    method.restore()
    assert len(editor.memory) == 0 and plain is not None


def test_build_method_names_what_is_missing(tiny_lm, tmp_path, make_editor):
    with pytest.raises(ValueError, match="unknown method"):
        build_method("rome", tiny_lm)
    with pytest.raises(ValueError, match="needs a trained 'medrek' editor"):
        build_method("ike", tiny_lm)
    with pytest.raises(ValueError, match="ft-l settings: unknown parameter 'stepz' \\(did you mean 'steps'\\?\\)"):
        build_method("ft-l", tiny_lm, ft={"stepz": 3})
    with pytest.raises(ValueError, match="ft-l settings: parameter 'steps' must be int, got 'ten'"):
        build_method("ft-l", tiny_lm, ft={"steps": "ten"})
    folder = make_editor("recipe").save(tmp_path / "recipe")
    method = build_method("recipe", tiny_lm, checkpoints={"recipe": folder})
    assert method.name == "recipe" and method.retrieval


def test_ft_l_prepared_blocks_equal_one_edit_per_block(tiny_lm):
    model = EditedModel(*tiny_lm)
    recs = records(5)
    blocks = [recs[0:1], recs[1:3], recs[3:5]]
    config = FTConfig(layer=1, steps=6, lr=1e-2, norm_constraint=3e-3, rows_per_chunk=2)
    one_by_one = []
    method = FTLMethod(model, config)
    for block in blocks:
        method.edit(block)
        one_by_one.append(model.lm.state_dict()["model.layers.1.mlp.down_proj.weight"].clone())
        method.restore()
    method.prepare(blocks)
    for block, expect in zip(blocks, one_by_one):
        method.edit(block)
        got = model.lm.state_dict()["model.layers.1.mlp.down_proj.weight"]
        torch.testing.assert_close(got, expect, atol=2e-6, rtol=0)
        method.restore()
    assert not method._prepared
