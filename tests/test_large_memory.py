"""Retrieval that holds as the memory grows: cosine scores, exact-match questions, the verifier's
second look, the threshold calibrated at a memory size, the retriever's training terms, the
memory-growth helpers and the hand-written neighbour questions."""

import json
import math

import pytest
import torch

from medrek import EditMemory, MemoryConfig
from medrek.evaluate.growth import (RetrievalProbes, editor_retrieval_rates, load_neighbours, padded_memory,
                                    retrieval_rates, vector_memory)
from medrek.memory import fold_question
from medrek.train.retriever import (RetrieverTrainConfig, RetrievalStageConfig, calibrate_threshold, mine_pairs,
                                    retriever_losses, stage_config, train_query_head)

from conftest import REQUESTS, make_records


def _memory(keys, prompts=None, **kw):
    n, d = keys.shape
    prompts = prompts or [f"question {i}?" for i in range(n)]
    return vector_memory(MemoryConfig(d, 1, 1, **kw), keys, torch.zeros(d) - 10.0, prompts)


def test_cosine_score_cannot_let_a_large_norm_key_outrank_the_own_key():
    own = torch.tensor([[1.0, 0.0]])
    loud = torch.tensor([[30.0, 20.0]])  # far off in angle, but a dot product of 30 beats own's 1
    keys = torch.cat([own, loud])
    query = torch.tensor([[1.0, 0.05]])
    assert int(_memory(keys).retrieve(query).top_rows[0]) == 1  # dot: the loud key wins
    r = _memory(keys, score="cosine").retrieve(query)
    assert int(r.top_rows[0]) == 0
    torch.testing.assert_close(r.scores[0], torch.nn.functional.cosine_similarity(query, own)[0])


def test_a_question_equal_to_a_stored_prompt_always_fires_it():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    prompts = ["Which vitamin prevents scurvy?", "Who discovered insulin?"]
    memory = _memory(keys, prompts, score="cosine", exact_match=True, min_similarity=0.999)
    query = torch.tensor([[1.0, 1.0]])  # equally close to both and below min_similarity
    r = memory.retrieve(query, ["  who DISCOVERED   insulin? "])
    assert int(r.rows[0]) == 1 and bool(r.exact[0])
    assert int(memory.retrieve(query, ["Who found insulin?"]).rows[0]) == -1  # only an identical question
    # without the setting, the same question is gated like any other
    plain = _memory(keys, prompts, score="cosine", min_similarity=0.999)
    assert int(plain.retrieve(query, ["Who discovered insulin?"]).rows[0]) == -1


def test_exact_match_follows_the_newest_edit_and_removal_and_a_save(tmp_path):
    config = MemoryConfig(2, 1, 1, score="cosine", exact_match=True, min_similarity=0.999)
    memory = EditMemory(config, torch.zeros(2))
    memory.add(["old"], torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1, 1), [{"prompt": "Who discovered insulin?"}])
    memory.add(["new"], torch.tensor([[0.0, 1.0]]), torch.zeros(1, 1, 1), [{"prompt": "who discovered insulin?"}])
    query = torch.tensor([[1.0, 1.0]])
    assert memory.lookup(query, ["Who discovered insulin?"]).ids == ["new"]
    memory.save(tmp_path / "m")
    assert EditMemory.load(tmp_path / "m").lookup(query, ["Who discovered insulin?"]).ids == ["new"]
    memory.remove(["new"])
    assert memory.lookup(query, ["Who discovered insulin?"]).ids == ["old"]
    memory.remove(["old"])
    assert memory.retrieve(query, ["Who discovered insulin?"]).rows.tolist() == [-1]


def test_the_verifier_picks_among_the_top_k_and_gates_on_its_probability():
    keys = torch.eye(4)
    prompts = ["a?", "b?", "c?", "d?"]
    seen = []

    def verify(questions, stored):
        seen.append(len(questions))
        return torch.tensor([0.9 if s == "c?" else 0.1 for s in stored])

    config = MemoryConfig(4, 1, 1, score="cosine", prototype_gate=False, verify_k=3, min_verified=0.5)
    memory = EditMemory(config, torch.zeros(4), verify)
    memory.add(list("abcd"), keys, torch.zeros(4, 1, 1), [{"prompt": p} for p in prompts])
    query = torch.tensor([[1.0, 0.8, 0.6, 0.0]])  # top-3 by cosine: a, b, c
    r = memory.retrieve(query, ["question"])
    assert int(r.rows[0]) == 2 and float(r.verified[0]) == pytest.approx(0.9) and seen == [3]
    assert memory.explain(query[0], "question").edit_id == "c"
    far = torch.tensor([[1.0, 0.9, 0.0, 0.8]])  # c is not among the top 3: nothing verified
    assert int(memory.retrieve(far, ["question"]).rows[0]) == -1
    why = memory.explain(far[0], "question").reason
    assert "below min_verified" in why and "nothing fired" in why
    with pytest.raises(ValueError, match="verifier"):
        memory.retrieve(query)  # no texts: the verifier cannot read the question
    with pytest.raises(ValueError, match="verify_k"):
        MemoryConfig(4, 1, 1, verify_k=-1)


def test_explain_names_the_gate_that_stopped_an_edit():
    memory = _memory(torch.tensor([[1.0, 0.0]]), ["q?"], score="cosine", min_margin=5.0)
    why = memory.explain(torch.tensor([1.0, 0.0]), "another question")
    assert not why.fired and "min_margin" in why.reason and why.top_edit_id == "row-0"
    assert "memory is empty" in EditMemory(MemoryConfig(2, 1, 1), torch.zeros(2)).explain(torch.ones(2)).reason


def test_calibrated_threshold_lets_at_most_the_asked_share_fire():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(500, 8, generator=g)
    memory = _memory(keys, score="cosine", prototype_gate=False)
    unrelated = torch.randn(400, 8, generator=g)
    texts = [f"u{i}" for i in range(400)]
    result = calibrate_threshold(memory, unrelated, texts, "similarity", 0.05)
    assert result["false_fire_before"] == 1.0 and result["false_fire_after"] <= 0.05
    memory.config.min_similarity = result["threshold"]
    fired = float(memory.retrieve(unrelated, texts).fired.float().mean())
    assert fired == pytest.approx(result["false_fire_after"]) and fired > 0.03  # the smallest such threshold
    with pytest.raises(ValueError, match="gate"):
        calibrate_threshold(memory, unrelated, texts, "prototype", 0.05)


def test_retriever_losses_are_zero_only_when_everything_is_separated():
    config = RetrieverTrainConfig(threshold=0.5, margin=0.1)
    keys = torch.eye(3)
    own = torch.arange(3)
    perfect = retriever_losses(keys.clone(), own, keys, torch.zeros(0, 3), config)
    assert float(perfect["positive"]) == 0 and float(perfect["other"]) == 0
    blurred = torch.nn.functional.normalize(keys + 2.0, dim=-1)  # every query close to every key
    bad = retriever_losses(blurred, own, keys, blurred[:1], config)
    assert float(bad["other"]) > 0 and float(bad["locality"]) > 0 and float(bad["nce"]) > float(perfect["nce"])


def test_train_query_head_separates_paraphrases_from_other_edits():
    torch.manual_seed(0)
    records = make_records(7)
    g = torch.Generator().manual_seed(1)
    table = {}

    def features(texts):  # a fixed random feature per text: paraphrases share nothing on the surface
        return torch.stack([table.setdefault(t, torch.randn(12, generator=g)) for t in texts])

    head = torch.nn.Linear(12, 8)
    config = RetrieverTrainConfig(steps=150, batch_size=7, lr=1e-2)
    trained, log = train_query_head(head, records, features, config, seed=0)
    assert log["log"][-1]["total"] < log["log"][0]["total"]
    with torch.no_grad():
        q = torch.nn.functional.normalize(trained(features([r.rephrase for r in records])), dim=-1)
        k = torch.nn.functional.normalize(trained(features([r.prompt for r in records])), dim=-1)
    assert torch.equal((q @ k.T).argmax(1), torch.arange(7))
    assert not torch.equal(trained.weight, head.weight)  # a copy was trained, not the given head


def test_mine_pairs_labels_own_rephrases_positive_and_hard_neighbours_negative():
    records = make_records(7)
    g = torch.Generator().manual_seed(0)
    table = {}
    embed = lambda texts: torch.stack([table.setdefault(t, torch.randn(6, generator=g)) for t in texts])  # noqa: E731
    questions, stored, labels = mine_pairs(records, embed, negatives=2)
    own = {(r.rephrase, r.prompt) for r in records}
    for q, s, y in zip(questions, stored, labels.tolist()):
        assert (y == 1.0) == ((q, s) in own)
        assert y == 1.0 or fold_question(q) != fold_question(s)
    assert int(labels.sum()) == 7 and len(labels) == 7 * (1 + 2 + 1 + 1)


def test_padded_memory_puts_the_evaluated_edits_first_and_refuses_too_few():
    records = make_records(7)
    out = padded_memory(records[:2], records[1:], 5)
    assert [r.record_id for r in out] == ["r0", "r1", "r2", "r3", "r4"]
    with pytest.raises(ValueError, match="only 7 distinct"):
        padded_memory(records[:2], records, 9)
    with pytest.raises(ValueError, match="fewer than"):
        padded_memory(records[:3], records, 2)


def test_retrieval_rates_count_own_fires_misfires_and_neighbours():
    keys = torch.eye(3)
    memory = _memory(keys, ["a?", "b?", "c?"], score="cosine", prototype_gate=False, min_similarity=0.9)
    probes = RetrievalProbes(torch.tensor([0, 1]), keys[:2], torch.tensor([[1.0, 0.1, 0], [0.7, 0.7, 0]]),
                             torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.5]]), ["a?", "b?"], ["r0", "r1"], ["l0", "l1"],
                             torch.tensor([[0.0, 0.95, 0.1]]), ["n"], torch.tensor([1]))
    rates = retrieval_rates(memory, probes)
    assert rates["prompt_own"] == 1.0 and rates["rephrase_own"] == 0.5 and rates["locality_fires"] == 0.5
    assert rates["neighbour_fires"] == 1.0 and rates["neighbour_own"] == 1.0 and rates["stored"] == 3


def test_editor_retrieval_rates_restore_the_editors_memory(make_editor):
    editor = make_editor("medrek-lm-embedding", n_tokens=12, score="cosine", exact_match=True)
    editor.edit(REQUESTS[:1])
    records = make_records(7)
    rates = editor_retrieval_rates(editor, records[:3], records, 6)
    assert rates["stored"] == 6 and rates["prompt_own"] == 1.0  # exact match: the asked prompt is stored
    assert len(editor.memory) == 1 and "asthma" in editor.memory


def test_editor_with_a_verifier_saves_it_in_float16_and_loads_the_same(make_editor, tiny_lm, tmp_path):
    from medrek import Editor

    editor = make_editor("medrek-lm-embedding", n_tokens=12, score="cosine", exact_match=True,
                         prototype_gate=False, verify_k=2, verifier_layers=1)
    assert editor.verifier is not None
    editor.verifier.round_to_stored()
    state = editor.trainable_state_dict()
    assert {v.dtype for k, v in state.items() if k.startswith("verifier.")} == {torch.float16}
    editor.edit(REQUESTS)
    before = editor.retrieve(["Who discovered insulin?", "What lowers fever?"])
    editor.save(tmp_path / "e", with_memory=True)
    loaded = Editor.load(tmp_path / "e", lm=tiny_lm, with_memory=True)
    after = loaded.retrieve(["Who discovered insulin?", "What lowers fever?"])
    assert torch.equal(before.rows, after.rows)
    torch.testing.assert_close(before.verified, after.verified, equal_nan=True)
    assert bool(before.exact[0]) and math.isnan(float(before.verified[0]))  # an exact match is not a verifier's pick
    assert not math.isnan(float(before.verified[1]))
    assert loaded.fingerprint() == editor.fingerprint()


def test_stage_settings_are_checked_by_name():
    assert stage_config({"verify_k": 0}, "retrieval_stage.x").verify_k == 0
    with pytest.raises(Exception, match="retrieval_stage.x.*verfy_k|verfy_k.*verify_k"):
        stage_config({"verfy_k": 3}, "retrieval_stage.x")
    with pytest.raises(ValueError, match="max_false_fire"):
        RetrievalStageConfig(max_false_fire=1.5)


def test_neighbour_questions_are_well_formed_and_never_a_released_question(data_dir):
    from medrek.data.loaders import load_split

    from medrek.evaluate.growth import VALID_NEIGHBOURS_FILE

    released = {fold_question(t) for split in ("train", "valid", "test") for r in load_split("medversa", split, data_dir)
                for t in (r.prompt, r.rephrase, r.locality["locality"].prompt)}
    for split, path, n in (("test", None, 200), ("valid", VALID_NEIGHBOURS_FILE, 100)):
        neighbours = load_neighbours(path) if path else load_neighbours()
        records = load_split("medversa", split, data_dir)
        # one question for each of the first n edits of the split, in order
        assert [x.record_id for x in neighbours] == [r.record_id for r in records[:n]]
        assert not [x.prompt for x in neighbours if fold_question(x.prompt) in released]


def test_a_malformed_neighbour_file_is_named_with_its_record_and_field(tmp_path):
    path = tmp_path / "n.json"
    path.write_text(json.dumps({"neighbours": [{"record_id": "1", "prompt": "ok?"}, {"record_id": "2", "prompt": " "}]}))
    with pytest.raises(ValueError, match=r"n\.json: neighbour 1: field 'prompt'"):
        load_neighbours(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="n.json: cannot read"):
        load_neighbours(path)
    assert math.isfinite(len(load_neighbours()))


def test_run_growth_scores_each_size_resumes_and_refuses_other_rows(make_editor, tiny_lm, tmp_path):
    from medrek.baselines.base import RetrievalMethod
    from medrek.editor import EditedModel
    from medrek.evaluate import summarise, unedited_locality_predictions
    from medrek.evaluate.growth import run_growth
    from medrek.evaluate.protocols import ResumeError

    records = make_records(7)
    editor = make_editor("medrek-lm-embedding", n_tokens=12, score="cosine", exact_match=True)
    method = RetrievalMethod(editor)
    reference = unedited_locality_predictions(EditedModel(*tiny_lm), records[:3])
    path = tmp_path / "growth.csv"
    rows = run_growth(method, records[:3], records, [3, 7], reference, path, progress=False)
    assert sorted(rows["stored"].unique()) == [3, 7] and len(rows) == 6
    assert rows["retrieved_prompt"].eq(1.0).all()  # exact match: every evaluated prompt is stored at each size
    assert len(editor.memory) == 0  # restored
    again = run_growth(method, records[:3], records, [3, 7], reference, path, progress=False)
    assert again.equals(rows)  # nothing rescored: the same rows read back
    table = summarise(rows.drop(columns=["stored"]), {"method": "m", "lm": "tiny", "encoder": "", "chat_template": "auto",
                                                      "dataset": "d", "split": "s", "protocol": "growth",
                                                      "batch_size": 3, "seed": 0, "run_id": "r"})
    assert set(table["eval_at"]) == {3, 7} and "fired/locality" in set(table["metric"])
    other = RetrievalMethod(make_editor("medrek-lm-embedding", seed=1, n_tokens=12))
    with pytest.raises(ResumeError, match="identity"):
        run_growth(other, records[:3], records, [3, 7], reference, path, progress=False)
    with pytest.raises(ValueError, match="must each hold"):
        run_growth(method, records[:3], records, [2], reference, tmp_path / "x.csv", progress=False)


def test_growth_figure_draws_one_line_per_method_against_stored():
    import pandas as pd
    from medrek.figures import plots

    rows = [{"method": m, "lm": "tiny", "encoder": "", "chat_template": "auto", "dataset": "medversa", "split": "test",
             "protocol": "growth", "batch_size": 2, "eval_at": s, "metric": "locality", "value": v, "n": 2, "seed": 0,
             "run_id": "r"} for m, vals in (("a", (1.0, 0.9)), ("b", (0.8, 0.6))) for s, v in zip((2, 20), vals)]
    with plots.style():
        fig = plots.plot_metric_vs_stored(pd.DataFrame(rows), ["locality"])
    ax = fig.axes[0]
    assert [list(line.get_ydata()) for line in ax.get_lines()[:2]] == [[1.0, 0.9], [0.8, 0.6]]
    assert ax.get_xscale() == "log" and "stored" in ax.get_xlabel()
    with pytest.raises(ValueError, match="growth results only"):
        plots.plot_metric_vs_stored(pd.DataFrame(rows).assign(protocol="batch"), ["locality"])


def test_the_retrieval_stage_sets_a_verified_cosine_gate_that_survives_a_reload(make_editor, tiny_lm, tmp_path):
    from medrek import Editor
    from medrek.train.retriever import fit_large_memory_retrieval

    records = make_records(7)
    editor = make_editor("medrek-lm-embedding", n_tokens=12)
    head_before = editor.encoder.query_head.proj.weight.clone()
    stage = RetrievalStageConfig(verify_k=2, stored=7, max_false_fire=0.3, calibration_edits=4, retriever_steps=3,
                                 retriever_batch_size=4, verifier_layers=1)
    log = fit_large_memory_retrieval(editor, records, records[:4], records, stage, seed=0)
    cfg = editor.config
    assert (cfg.score, cfg.exact_match, cfg.prototype_gate, cfg.verify_k) == ("cosine", True, False, 2)
    assert cfg.min_margin is None and log["calibration"]["setting"] == "min_verified"
    assert log["calibration"]["false_fire_after"] <= 0.3 and log["calibration"]["stored"] == 7
    assert not torch.equal(head_before, editor.encoder.query_head.proj.weight)
    assert log["verifier"]["pairs"] > 0 and len(log["retriever"]["log"]) == 1
    editor.save(tmp_path / "e")
    loaded = Editor.load(tmp_path / "e", lm=tiny_lm)
    assert loaded.config == editor.config and loaded.fingerprint() == editor.fingerprint()
    loaded.edit(REQUESTS)
    assert loaded.retrieve([REQUESTS[1]["prompt"]]).rows.tolist() == [1]  # the asked prompt: exact match


def test_retrieval_settings_at_their_defaults_keep_an_editors_fingerprint(make_editor):
    import hashlib
    from dataclasses import asdict

    from medrek.editor import RETRIEVAL_DEFAULTS

    editor = make_editor("medrek-lm-embedding", n_tokens=12)
    # the fingerprint as it was computed before these settings existed
    config = {k: v for k, v in asdict(editor.config).items() if k not in RETRIEVAL_DEFAULTS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8"))
    for name, value in sorted(editor.trainable_state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode("utf-8"))
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    assert editor.fingerprint() == digest.hexdigest()  # saved memories and results still match
    before = editor.fingerprint()
    editor.config.exact_match = True
    assert editor.fingerprint() != before


def test_growth_scores_distinct_locality_and_neighbours_against_the_unedited_answer(make_editor, tiny_lm, tmp_path):
    from medrek.baselines.base import RetrievalMethod, UneditedMethod
    from medrek.editor import EditedModel
    from medrek.evaluate import unedited_locality_predictions
    from medrek.evaluate.growth import Neighbour, neighbour_records, run_growth, with_unedited_answers

    records = make_records(7)
    model = EditedModel(*tiny_lm)
    # the neighbour of r0 is r0's own prompt reworded so that it fires r0's edit (exact match on its prompt)
    neighbours = with_unedited_answers(model, [Neighbour("r0", records[0].prompt), Neighbour("r1", "Which gland secretes insulin?")],
                                       max_new_tokens=4)
    assert all(n.answer for n in neighbours)
    nref = unedited_locality_predictions(model, neighbour_records(neighbours))
    reference = unedited_locality_predictions(model, records[:3])
    editor = make_editor("medrek-lm-embedding", n_tokens=12, score="cosine", exact_match=True, min_similarity=0.9999,
                         prototype_gate=False)
    duplicates = {"r2": "r5"}  # r2's locality prompt asks r5's question: only a duplicate once r5 is stored
    rows = run_growth(RetrievalMethod(editor), records[:3], records, [3, 7], reference, tmp_path / "g.csv",
                      progress=False, duplicates=duplicates, neighbours=neighbours, neighbour_reference=nref)
    small, large = rows[rows["stored"] == 3], rows[rows["stored"] == 7]
    assert small["duplicate/locality"].tolist() == [0.0, 0.0, 0.0] and large["duplicate/locality"].tolist() == [0.0, 0.0, 1.0]
    assert math.isnan(large["locality/distinct"].iloc[2]) and not math.isnan(small["locality/distinct"].iloc[2])
    r0 = small.iloc[0]
    assert r0["fired/neighbour"] == 1.0  # its edit fired on the neighbour question
    assert r0["changed_when_fired/neighbour"] == pytest.approx(1.0 - r0["locality/neighbour"])
    assert math.isnan(small.iloc[2]["locality/neighbour"])  # r2 has no neighbour question
    # the unedited LM is its own reference: nothing changes; the rows resume; other probes are refused
    plain = run_growth(UneditedMethod(model), records[:3], records, [3], reference, tmp_path / "u.csv", progress=False,
                       neighbours=neighbours, neighbour_reference=nref)
    assert plain["locality/neighbour"].dropna().eq(1.0).all()
    again = run_growth(RetrievalMethod(editor), records[:3], records, [3, 7], reference, tmp_path / "g.csv",
                       progress=False, duplicates=duplicates, neighbours=neighbours, neighbour_reference=nref)
    assert again.equals(rows)
    from medrek.evaluate.protocols import ResumeError
    with pytest.raises(ResumeError, match="neighbours"):
        run_growth(RetrievalMethod(editor), records[:3], records, [3, 7], reference, tmp_path / "g.csv", progress=False,
                   duplicates=duplicates, neighbours=neighbours[:1], neighbour_reference=nref)


def test_growth_resume_refuses_changed_padding_text_and_returns_only_the_sizes_asked(make_editor, tiny_lm, tmp_path):
    import dataclasses

    from medrek.baselines.base import RetrievalMethod
    from medrek.editor import EditedModel
    from medrek.evaluate import unedited_locality_predictions
    from medrek.evaluate.growth import run_growth
    from medrek.evaluate.protocols import ResumeError

    records = make_records(7)
    method = RetrievalMethod(make_editor("medrek-lm-embedding", n_tokens=12, exact_match=True))
    reference = unedited_locality_predictions(EditedModel(*tiny_lm), records[:3])
    path = tmp_path / "g.csv"
    run_growth(method, records[:3], records, [3, 5, 7], reference, path, progress=False)
    fewer = run_growth(method, records[:3], records, [3, 5], reference, path, progress=False)
    assert sorted(fewer["stored"].unique()) == [3, 5]
    changed = records[:5] + [dataclasses.replace(records[5], prompt="Another text, the same id?")] + records[6:]
    with pytest.raises(ResumeError, match="padding"):
        run_growth(method, records[:3], changed, [3, 7], reference, path, progress=False)


def test_growth_figures_show_the_kits_probes_when_measured():
    import pandas as pd
    from medrek.figures import plots

    plain = pd.DataFrame({"metric": ["efficacy", "generality", "locality", "fired/locality"]})
    assert plots.growth_metrics(plain) == ["efficacy", "generality", "locality", "fired/locality"]
    probed = pd.DataFrame({"metric": ["efficacy", "generality", "locality", "locality/distinct", "locality/neighbour",
                                      "fired/distinct", "fired/neighbour"]})
    assert plots.growth_metrics(probed) == ["efficacy", "generality", "locality/distinct", "locality/neighbour",
                                            "fired/distinct", "fired/neighbour"]
    assert all(m in plots.METRIC_LABELS for m in plots.growth_metrics(probed))


def test_a_resumed_notebook_02_recognises_an_editor_it_already_staged(make_editor, tmp_path):
    from dataclasses import asdict

    from medrek.train.retriever import stage_already_applied

    editor, stage = make_editor(), RetrievalStageConfig(verify_k=0)
    log = tmp_path / "retrieval_stage_medrek.json"
    assert not stage_already_applied(editor, log, stage)  # no earlier run
    log.write_text(json.dumps({"stage": asdict(stage), "editor_fingerprint": editor.fingerprint()}))
    assert stage_already_applied(editor, log, stage)
    assert not stage_already_applied(editor, log, RetrievalStageConfig(verify_k=0, max_false_fire=0.1))  # other settings
    editor.config.min_margin = 1.5  # another editor (e.g. retrained, or calibrated again)
    assert not stage_already_applied(editor, log, stage)
