"""The cross-encoder verifier: mined pairs, training with sentence-transformers (resumable, its
identity checked), int8 storage in an editor, calibration on distinct questions and neighbours."""

import json
import math

import pytest
import torch

from medrek.data.records import EditRecord, LocalityProbe
from medrek.models.verifier import VerifierConfig, dequantize_rows, quantize_rows
from medrek.train.cross_encoder import CrossEncoderTrainConfig, mine_cross_encoder_pairs
from medrek.train.retriever import RetrievalStageConfig, distinct_questions

from conftest import REQUESTS, make_records


def _record(i, prompt, answer, locality=("Unrelated?", "x")):
    return EditRecord(f"r{i}", prompt, "new", answer, (f"Rephrased: {prompt}",), "s",
                      {"locality": LocalityProbe(*locality)})


def _embed_by_table(table):
    """Unit vectors from a {text: vector} table (texts not listed: a far-off direction)."""
    def embed(texts):
        rows = [torch.tensor(table.get(t, [0.0, 0.0, 0.0, 1.0])) for t in texts]
        return torch.nn.functional.normalize(torch.stack(rows).float(), dim=-1)
    return embed


def test_mined_negatives_leave_out_questions_that_ask_the_anchors_own_question():
    records = [
        _record(0, "Which enzyme do statins block?", "HMG-CoA reductase"),
        _record(1, "Statins inhibit which enzyme?", "HMG-CoA reductase"),  # the same question, other words
        _record(2, "which enzyme do STATINS block?", "HMG-CoA reductase"),  # the same, folded
        _record(3, "Which enzyme does allopurinol block?", "Xanthine oxidase"),  # a neighbour: another fact
    ]
    table = {"Which enzyme do statins block?": [1, 0, 0, 0], "Statins inhibit which enzyme?": [0.8, 0.6, 0, 0],
             "which enzyme do STATINS block?": [1, 0.01, 0, 0], "Which enzyme does allopurinol block?": [0.9, 0, 0.44, 0],
             "Rephrased: Which enzyme do statins block?": [0.95, 0.1, 0.1, 0]}
    config = CrossEncoderTrainConfig(negatives=2, locality_negatives=0, near_duplicate=0.95, same_answer_similar=0.7)
    questions, stored, labels, counts = mine_cross_encoder_pairs(records, _embed_by_table(table), config)
    anchor = "Rephrased: Which enzyme do statins block?"
    pairs = {(q, s): l for q, s, l in zip(questions, stored, labels)}
    assert pairs[(anchor, "Which enzyme do statins block?")] == 1.0
    assert pairs[(anchor, "Which enzyme does allopurinol block?")] == 0.0  # the hard negative is kept
    assert (anchor, "Statins inhibit which enzyme?") not in pairs  # same answer, cosine 0.8 >= 0.7
    assert (anchor, "which enzyme do STATINS block?") not in pairs  # equal once folded
    assert counts["positives"] == 4 and counts["near_duplicates_dropped"] > 0
    assert counts["pairs"] == len(labels) == counts["positives"] + counts["negatives"]


def test_locality_negatives_skip_a_stored_question_with_the_same_answer():
    records = [_record(0, "What causes herpangina?", "Coxsackie A", ("What is the causative agent of herpangina?", "coxsackie a")),
               _record(1, "Which nerve supplies the deltoid?", "Axillary", ("What causes scurvy?", "Vitamin C deficiency"))]
    table = {"What causes herpangina?": [1, 0, 0, 0], "What is the causative agent of herpangina?": [0.85, 0.5, 0, 0],
             "Which nerve supplies the deltoid?": [0, 1, 0, 0], "What causes scurvy?": [0.5, 0.5, 0.7, 0]}
    config = CrossEncoderTrainConfig(negatives=1, locality_negatives=1)
    questions, stored, labels, _ = mine_cross_encoder_pairs(records, _embed_by_table(table), config)
    pairs = set(zip(questions, stored))
    assert ("What is the causative agent of herpangina?", "What causes herpangina?") not in pairs
    assert ("What is the causative agent of herpangina?", "Which nerve supplies the deltoid?") in pairs
    assert any(q == "What causes scurvy?" for q in questions)


def test_own_locality_negatives_pair_a_neighbour_with_its_own_prompt_and_symmetric_adds_the_reverse():
    # MedCF's locality probes are neighbours: the same template on another drug
    records = [_record(0, "Which drug interacts with Iron?", "Zinc", ("Which drug interacts with Copper?", "Zinc")),
               _record(1, "What does aspirin treat?", "Pain", ("Which drug interacts with Iron?", "Zinc")),
               _record(2, "What causes scurvy?", "Vitamin C", ("what causes SCURVY?", "Vitamin C"))]
    table = {"Which drug interacts with Iron?": [1, 0, 0, 0], "Which drug interacts with Copper?": [0.97, 0.24, 0, 0],
             "What does aspirin treat?": [0, 1, 0, 0]}
    embed = _embed_by_table(table)
    base = CrossEncoderTrainConfig(negatives=1, locality_negatives=0)
    plain = set(zip(*mine_cross_encoder_pairs(records, embed, base)[:2]))
    assert ("Which drug interacts with Copper?", "Which drug interacts with Iron?") not in plain
    config = CrossEncoderTrainConfig(negatives=1, locality_negatives=0, own_locality_negatives=True, symmetric=True)
    questions, stored, labels, counts = mine_cross_encoder_pairs(records, embed, config)
    pairs = {(q, s): l for q, s, l in zip(questions, stored, labels)}
    # cosine 0.97 is past near_duplicate, but the dataset says it asks another fact: a negative
    assert pairs[("Which drug interacts with Copper?", "Which drug interacts with Iron?")] == 0.0
    assert pairs[("Which drug interacts with Iron?", "What does aspirin treat?")] == 0.0  # record 1's probe
    assert ("what causes SCURVY?", "What causes scurvy?") not in pairs  # its own question once folded: never a negative
    assert pairs[("Which drug interacts with Iron?", "Rephrased: Which drug interacts with Iron?")] == 1.0
    assert counts["positives"] == 6


def test_a_folder_trained_before_a_config_field_existed_keeps_its_identity(tmp_path):
    from dataclasses import asdict

    from medrek.data.records import records_sha256
    from medrek.train.cross_encoder import train_cross_encoder

    records = [_record(0, "Which enzyme do statins block?", "HMG-CoA reductase")]
    config = CrossEncoderTrainConfig(epochs=1)
    old = {k: v for k, v in asdict(config).items() if k not in ("own_locality_negatives", "symmetric")}
    (tmp_path / "identity.json").write_text(json.dumps({"config": old, "seed": 0, "train_sha256": records_sha256(records),
                                                        "valid_sha256": records_sha256([])}))
    (tmp_path / "model").mkdir()
    (tmp_path / "train_log.json").write_text(json.dumps({"seconds": 1.0}))
    assert train_cross_encoder(records, tmp_path, config) == {"seconds": 1.0}  # finished: read back, not retrained
    with pytest.raises(ValueError, match="identity.json.*config"):
        train_cross_encoder(records, tmp_path, CrossEncoderTrainConfig(epochs=1, symmetric=True))


def test_train_config_refuses_bad_values_by_name():
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"near_duplicate": 1.5}, {"trained_layers": -1}, {"warmup_ratio": 1.0}):
        with pytest.raises(ValueError, match=f"CrossEncoderTrainConfig.{next(iter(bad))}"):
            CrossEncoderTrainConfig(**bad)


def test_int8_rows_round_trip_within_half_a_step():
    w = torch.randn(7, 5) * torch.tensor([[1.0], [0.01], [100.0], [1.0], [1.0], [1.0], [0.0]])
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (7,)
    back = dequantize_rows(q, scale)
    assert torch.all((back - w).abs() <= scale.float()[:, None] * 0.5 + 1e-3 * w.abs().amax(1, keepdim=True))
    assert torch.equal(back[6], torch.zeros(5))


def test_a_cross_encoder_verifier_is_stored_as_int8_and_reloads_bit_for_bit(make_editor, tiny_lm, tmp_path):
    from medrek import Editor

    editor = make_editor("medrek-lm-embedding", n_tokens=12, score="cosine", exact_match=True, prototype_gate=False,
                         verify_k=2, verifier_layers=1, verifier_kind="cross-encoder")
    verifier = editor.verifier
    assert verifier.config.kind == "cross-encoder"
    trained = {n for n, p in verifier.named_parameters() if p.requires_grad}
    assert trained and all(".layer.1." in n or ".pooler." in n or n.startswith("classifier.classifier.") for n in trained)
    with torch.no_grad():  # make the classifier say something
        verifier.classifier.classifier.weight.normal_()
    verifier.round_to_stored()
    stored = {k: v for k, v in editor.trainable_state_dict().items() if k.startswith("verifier.")}
    assert any(v.dtype == torch.int8 for v in stored.values())
    assert not any(".embeddings." in k or ".layer.0." in k for k in stored)
    editor.edit(REQUESTS)
    questions = ["Who discovered insulin?", "What lowers fever?"]
    before = editor.retrieve(questions)
    editor.save(tmp_path / "e", with_memory=True)
    loaded = Editor.load(tmp_path / "e", lm=tiny_lm, with_memory=True)
    after = loaded.retrieve(questions)
    assert torch.equal(before.rows, after.rows)
    torch.testing.assert_close(before.verified, after.verified, equal_nan=True, rtol=0, atol=0)
    assert loaded.fingerprint() == editor.fingerprint()


def test_the_default_verifier_kind_leaves_an_editors_fingerprint_as_it_was(make_editor):
    from medrek.editor import RETRIEVAL_DEFAULTS

    assert RETRIEVAL_DEFAULTS["verifier_kind"] == "top-layers"
    with pytest.raises(ValueError, match="verifier_kind"):
        make_editor("medrek-lm-embedding", n_tokens=12, verify_k=2, verifier_kind="cross")
    with pytest.raises(ValueError, match="kind"):
        VerifierConfig(kind="cross")


def test_distinct_questions_leave_out_paraphrases_of_stored_prompts():
    table = {"Which enzyme do statins block?": [1, 0, 0, 0], "What enzyme is blocked by statins?": [0.9, 0.43, 0, 0],
             "Which enzyme does allopurinol block?": [0.7, 0, 0.71, 0], "WHICH enzyme do statins block?": [0, 0, 1, 0]}
    kept = distinct_questions(["What enzyme is blocked by statins?", "Which enzyme does allopurinol block?",
                               "WHICH enzyme do statins block?"], ["Which enzyme do statins block?"],
                              _embed_by_table(table), duplicate_cosine=0.8)
    assert kept == ["Which enzyme does allopurinol block?"]  # a paraphrase (0.9) and a folded equal are left out


def test_calibration_also_holds_the_neighbour_budget():
    from medrek.memory import MemoryConfig
    from medrek.train.retriever import calibrate_at_size

    records = make_records(7)
    # keys: each prompt its own axis; locality prompts far away; neighbours close to their edits
    axes = {r.prompt: torch.eye(8)[i] for i, r in enumerate(records)}
    neighbours = [f"Neighbour of {r.prompt}" for r in records[:4]]
    for i, n in enumerate(neighbours):
        axes[n] = torch.eye(8)[i] * 0.9 + torch.eye(8)[7] * 0.436
    embed = lambda texts: torch.stack([axes.get(t, torch.eye(8)[7]) for t in texts])  # noqa: E731
    config = MemoryConfig(8, 1, 1, score="cosine", prototype_gate=False)
    plain = calibrate_at_size(config, embed, torch.zeros(8), records[:4], records, 7, "similarity", 0.5)
    both = calibrate_at_size(config, embed, torch.zeros(8), records[:4], records, 7, "similarity", 0.5,
                             neighbours=neighbours, max_neighbour_fire=0.0)
    assert both["neighbour_questions"] == 4 and both["neighbours"]["false_fire_before"] == 1.0
    assert both["neighbours"]["false_fire_after"] == 0.0 and both["threshold"] > 0.85
    assert (plain["threshold"] is None or plain["threshold"] < both["threshold"])


def test_stage_settings_check_the_verifier_kind_and_neighbour_budget():
    assert RetrievalStageConfig(verifier_kind="cross-encoder", distinct=True).max_neighbour_fire == 0.1
    with pytest.raises(ValueError, match="verifier_kind"):
        RetrievalStageConfig(verifier_kind="bert")
    with pytest.raises(ValueError, match="max_neighbour_fire"):
        RetrievalStageConfig(max_neighbour_fire=1.0)


def test_training_with_sentence_transformers_saves_a_model_and_refuses_another_config(tmp_path):
    from medrek.train.cross_encoder import CrossEncoderVerifier, train_cross_encoder

    records = make_records(7)
    config = CrossEncoderTrainConfig(base="tiny-bert", epochs=1, batch_size=8, negatives=1, save_steps=1)
    log = train_cross_encoder(records, tmp_path / "ce", config, seed=0, progress=False)
    assert log["train_pairs"]["positives"] == 7 and (tmp_path / "ce" / "model" / "config.json").exists()
    assert list((tmp_path / "ce" / "model").glob("*.safetensors"))
    assert train_cross_encoder(records, tmp_path / "ce", config, seed=0, progress=False) == log  # finished: read back
    with pytest.raises(ValueError, match="identity.json.*config"):
        train_cross_encoder(records, tmp_path / "ce", CrossEncoderTrainConfig(base="tiny-bert", epochs=2), seed=0)
    verify = CrossEncoderVerifier(tmp_path / "ce" / "model")
    probs = verify(["Who discovered insulin?"] * 2, ["Who discovered insulin?", "What lowers fever?"])
    assert probs.shape == (2,) and bool(((probs >= 0) & (probs <= 1)).all())


def test_the_retrieval_stage_trains_a_cross_encoder_verifier(make_editor, tmp_path):
    from medrek.train.retriever import fit_large_memory_retrieval

    records = make_records(7)
    editor = make_editor("medrek-lm-embedding", n_tokens=12)
    stage = RetrievalStageConfig(verify_k=2, stored=7, max_false_fire=0.3, calibration_edits=4, retriever_steps=3,
                                 retriever_batch_size=4, verifier_layers=1, verifier_kind="cross-encoder",
                                 distinct=True, max_neighbour_fire=0.5, duplicate_cosine=0.9999)
    before = {k: v.clone() for k, v in editor.encoder.backbone.state_dict().items()}
    log = fit_large_memory_retrieval(editor, records, records[:4], records, stage, seed=0,
                                     neighbours=["Who first found insulin's structure?"], work_dir=tmp_path / "v")
    assert editor.config.verifier_kind == "cross-encoder" and editor.verifier.config.kind == "cross-encoder"
    assert log["verifier"]["train_pairs"]["positives"] == 7 and log["calibration"]["neighbour_questions"] == 1
    assert all(torch.equal(v, editor.encoder.backbone.state_dict()[k]) for k, v in before.items())  # retriever body kept
    assert math.isfinite(editor.config.min_verified)
    assert json.loads((tmp_path / "v" / "identity.json").read_text())["config"]["trained_layers"] == 1


def test_hard_neighbours_add_the_closest_other_question_as_a_locality_probe():
    from medrek.train.neighbours import with_hard_neighbours

    records = [_record(0, "Which enzyme do statins block?", "HMG-CoA reductase"),
               _record(1, "Statins inhibit which enzyme?", "HMG-CoA reductase"),  # asks record 0's question
               _record(2, "Which enzyme does allopurinol block?", "Xanthine oxidase")]
    table = {"Which enzyme do statins block?": [1, 0, 0, 0], "Statins inhibit which enzyme?": [0.95, 0.3, 0, 0],
             "Which enzyme does allopurinol block?": [0.8, 0, 0.6, 0]}
    out = with_hard_neighbours(records, _embed_by_table(table))
    assert [list(r.locality) for r in out] == [["locality", "neighbour"]] * 3
    assert out[0].locality["neighbour"] == LocalityProbe("Which enzyme does allopurinol block?", "Xanthine oxidase")
    assert out[2].locality["neighbour"].prompt == "Which enzyme do statins block?"
    assert records[0].locality.keys() == {"locality"}  # the input is left as it was
    with pytest.raises(ValueError, match="already have a 'neighbour'"):
        with_hard_neighbours(out, _embed_by_table(table))


def test_the_retrieval_stage_takes_a_cross_encoder_trained_before(make_editor, tmp_path):
    from medrek.train.cross_encoder import train_cross_encoder
    from medrek.train.retriever import fit_large_memory_retrieval

    records = make_records(7)
    train_cross_encoder(records, tmp_path / "ce", CrossEncoderTrainConfig(base="tiny-bert", epochs=1, batch_size=8,
                                                                          negatives=1), seed=0, progress=False)
    stage = dict(verify_k=2, stored=7, max_false_fire=0.3, calibration_edits=4, retriever_steps=3, retriever_batch_size=4,
                 verifier_kind="cross-encoder", verifier_from=str(tmp_path / "ce"))
    editor = make_editor("medrek-lm-embedding", n_tokens=12)
    with pytest.raises(ValueError, match="trained 2 top layers.*verifier_layers is 1"):
        fit_large_memory_retrieval(editor, records, records[:4], records, RetrievalStageConfig(**stage, verifier_layers=1))
    log = fit_large_memory_retrieval(editor, records, records[:4], records, RetrievalStageConfig(**stage, verifier_layers=2))
    assert log["verifier"]["verifier_from"] == str(tmp_path / "ce") and not (tmp_path / "ce" / "identity.json").read_text() == ""
    from transformers import AutoModelForSequenceClassification
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ce" / "model")
    torch.testing.assert_close(editor.verifier.classifier.classifier.weight.float(),
                               trained.classifier.weight.float(), atol=0.02, rtol=0.02)  # int8 rows of the trained one
    with pytest.raises(ValueError, match="verifier_kind: cross-encoder"):
        RetrievalStageConfig(verifier_from="x")
