import math

import faiss
import numpy as np
import pytest
import torch

from medrek import CheckpointError, EditMemory, MemoryConfig
from medrek.memory import search


def _memory(n=200, d=16, index="flat", seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    mem = EditMemory(MemoryConfig(d, 2, 4, index=index, **kw), prototype_key=torch.zeros(d) - 10.0)
    keys = torch.randn(n, d, generator=g)
    mem.add([f"e{i}" for i in range(n)], keys, torch.randn(n, 2, 4, generator=g),
            [{"prompt": f"p{i}", "target_new": f"t{i}"} for i in range(n)])
    return mem, keys, g


def test_flat_top1_equals_brute_force():
    mem, keys, g = _memory()
    queries = torch.randn(64, 16, generator=g)
    r = mem.retrieve(queries)
    brute = queries @ keys.T
    assert torch.equal(r.top_rows, brute.argmax(1))
    torch.testing.assert_close(r.scores, brute.max(1).values / math.sqrt(16), rtol=1e-5, atol=1e-5)
    second = brute.topk(2, dim=1).values[:, 1] / math.sqrt(16)
    torch.testing.assert_close(r.runner_up, second, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_queries", [1, 16, 300])
def test_search_through_blas_matches_faiss_default_and_restores_the_threshold(n_queries):
    # The BLAS path must find what FAISS's own kernels find (same rows, scores to float
    # rounding) and leave FAISS's process-wide threshold as it was.
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((3000, 64), dtype=np.float32)
    queries = rng.standard_normal((n_queries, 64), dtype=np.float32)
    index = faiss.IndexFlatIP(64)
    index.add(keys)
    before = faiss.cvar.distance_compute_blas_threshold
    scores, rows = search(index, queries, 2)
    assert faiss.cvar.distance_compute_blas_threshold == before
    ref_scores, ref_rows = index.search(queries, 2)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-4)


def test_concurrent_searches_leave_the_faiss_threshold_as_it_was():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    index = faiss.IndexFlatIP(32)
    index.add(rng.standard_normal((2000, 32), dtype=np.float32))
    queries = rng.standard_normal((8, 32), dtype=np.float32)
    before = faiss.cvar.distance_compute_blas_threshold
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: search(index, queries, 2), range(200)))
    assert faiss.cvar.distance_compute_blas_threshold == before


def test_hnsw_top1_mostly_agrees_with_exact():
    mem, keys, g = _memory(n=2000, index="hnsw")
    queries = torch.randn(200, 16, generator=g)
    agree = (mem.retrieve(queries).top_rows == (queries @ keys.T).argmax(1)).float().mean()
    assert agree >= 0.95


def test_ivf_index_is_built_and_searches():
    mem, keys, g = _memory(n=1000, index="ivf", ivf_nprobe=1000)  # probing every list: exact
    assert mem._index.ntotal == 1000 and mem._index.nlist > 1
    queries = torch.randn(50, 16, generator=g)
    assert torch.equal(mem.retrieve(queries).top_rows, (queries @ keys.T).argmax(1))


def test_prototype_and_min_similarity_gate():
    mem = EditMemory(MemoryConfig(2, 1, 2, min_similarity=None), prototype_key=torch.tensor([0.0, 1.0]))
    mem.add(["a"], torch.tensor([[1.0, 0.0]]), torch.ones(1, 1, 2), [{}])
    r = mem.retrieve(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    assert r.rows.tolist() == [0, -1, -1]  # beats prototype / loses / ties (ties do not fire)
    mem.config.min_similarity = 5.0
    assert mem.retrieve(torch.tensor([[2.0, 0.0]])).rows.tolist() == [-1]
    prompts, fired = mem.prompts_for(mem.retrieve(torch.tensor([[2.0, 0.0]])))
    assert not fired.any() and prompts.abs().sum() == 0


def test_remove_and_clear():
    mem, keys, _ = _memory(n=5)
    mem.remove(["e1", "e3"])
    assert mem.ids == ["e0", "e2", "e4"] and "e1" not in mem and "e2" in mem
    assert torch.equal(mem.retrieve(keys[[2]] * 5).top_rows, torch.tensor([1]))
    with pytest.raises(KeyError, match="e1"):
        mem.remove(["e1"])
    mem.clear()
    assert len(mem) == 0 and mem.retrieve(keys[:2]).rows.tolist() == [-1, -1]


def test_duplicate_ids_and_bad_shapes_are_refused():
    mem, _, _ = _memory(n=3)
    with pytest.raises(ValueError, match="already stored"):
        mem.add(["e0"], torch.zeros(1, 16), torch.zeros(1, 2, 4), [{}])
    with pytest.raises(ValueError, match="expected keys"):
        mem.add(["x"], torch.zeros(1, 15), torch.zeros(1, 2, 4), [{}])


def test_save_load_round_trips_bit_for_bit(tmp_path):
    mem, keys, g = _memory(n=50)
    mem.save(tmp_path / "memory")
    loaded = EditMemory.load(tmp_path / "memory", key_dim=16, n_tokens=2, lm_hidden=4)
    assert loaded.ids == mem.ids and loaded.requests == mem.requests
    for name in ("keys", "prompts", "prototype_key"):
        assert torch.equal(getattr(loaded, name), getattr(mem, name))
    q = torch.randn(20, 16, generator=g)
    a, b = mem.retrieve(q), loaded.retrieve(q)
    assert torch.equal(a.rows, b.rows) and torch.equal(a.scores, b.scores)


def test_incompatible_or_foreign_files_are_refused(tmp_path):
    mem, _, _ = _memory(n=3)
    mem.save(tmp_path / "m")
    with pytest.raises(CheckpointError, match="key_dim is 16, the model needs 32"):
        EditMemory.load(tmp_path / "m", key_dim=32)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "memory.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not a medrek edit memory"):
        EditMemory.load(tmp_path / "x")
    (tmp_path / "old.json").write_text('{"format": "medrek.EditMemory/1"}')  # the loose-file layout
    with pytest.raises(CheckpointError, match="saved by an older medrek-kit"):
        EditMemory.load(tmp_path / "old")
    (tmp_path / "m" / "memory.safetensors").write_bytes(b"\x80\x04\x95 pickle bytes, not safetensors")
    with pytest.raises(CheckpointError, match="sha256 differs"):
        EditMemory.load(tmp_path / "m")


def test_the_policy_builds_one_gate_per_setting_in_explanation_order():
    import torch

    from medrek.memory import MemoryConfig
    from medrek.retrieval import MarginGate, PrototypeGate, SimilarityGate, VerifierGate, gates_for

    config = MemoryConfig(key_dim=4, n_tokens=1, lm_hidden=2)
    assert [g.name for g in gates_for(config)] == ["prototype"]
    config = MemoryConfig(key_dim=4, n_tokens=1, lm_hidden=2, verify_k=3, min_verified=0.9, min_similarity=0.5,
                          min_margin=0.2, prototype_gate=False)
    gates = gates_for(config)
    assert gates == [VerifierGate(0.9, 3), SimilarityGate(0.5), MarginGate(0.2)]
    score, proto, verified = torch.tensor([0.6, 0.6, 0.4]), torch.tensor([0.3, 0.5, 0.0]), torch.tensor([0.95, 0.95, 0.99])
    assert [g.passed(score, proto, verified).tolist() for g in gates] == [[True, True, True], [True, True, False],
                                                                         [True, False, True]]
    assert PrototypeGate().passed(score, proto, verified).tolist() == [True, True, True]
    assert MarginGate(0.2).numbers(0.6, 0.5, 0.95) == "lead over the prototype 0.1000 < 0.2"
