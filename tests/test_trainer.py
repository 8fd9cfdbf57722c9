import dataclasses
import json

import pandas as pd
import pytest
import torch

from medrek.data import EditRecord, LocalityProbe
from medrek import CheckpointError
from medrek.train import Trainer, TrainConfig

WORDS = ["aspirin", "insulin", "heparin", "digoxin", "morphine", "codeine", "atropine", "quinine",
         "warfarin", "lithium", "caffeine", "nicotine", "penicillin", "ibuprofen", "naloxone", "ketamine"]


def _records(n=16, offset=0):
    return [
        EditRecord(
            record_id=str(i), prompt=f"What treats case {i + offset}?", target_new=WORDS[(i + offset) % len(WORDS)],
            ground_truth="x", rephrase_prompts=(f"Case {i + offset} is treated by what?",), subject="s",
            locality={"locality": LocalityProbe(f"Where is organ {i + offset}?", "chest")},
        )
        for i in range(n)
    ]


def _config(**kw):
    base = dict(method="medrek", lm="tiny-llama", encoder="tiny-bert", key_dim=16, n_tokens=2, n_heads=4,
                n_prototype_tokens=2, batch_size=4, steps=6, lr_encoder=1e-2, lr_prompt=1e-2,
                eval_every=3, eval_size=4, checkpoint_every=2, progress=False, seed=3)
    return TrainConfig(**{**base, **kw})


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.editor.trainable_state_dict().items()}


@pytest.mark.parametrize("method", ["medrek", "recipe", "medrek-no-shared-qk", "medrek-no-attention", "token_attention",
                                    "recipe-lm-embedding"])
def test_every_method_trains_and_logs_each_term(tmp_path, tiny_lm, method):
    slots = {"n_tokens": 40} if method.endswith("lm-embedding") else {}  # the frame (6) plus text slots
    trainer = Trainer(_config(method=method, steps=3, eval_every=3, **slots), _records(), _records(8, 100), tmp_path,
                      lm=tiny_lm)
    summary = trainer.train()
    log = pd.read_csv(tmp_path / "metrics" / f"train_log_{method}.csv")
    assert log["step"].tolist() == [1, 2, 3] and summary["steps"] == 3
    for term in ("q1", "q2", "q3", "edit_rel", "edit_gen", "locality"):
        assert log[term].notna().all() and (log[term] >= 0).all()
    valid = pd.read_csv(tmp_path / "metrics" / f"train_valid_{method}.csv")
    assert {"efficacy", "generality", "locality", "retrieval_prompt", "false_retrieval_locality"} <= set(valid["metric"])
    assert (tmp_path / "checkpoints" / method / "best" / "editor.safetensors").is_file()


@pytest.mark.parametrize("select,best_avg,best_step", [("avg_firing", 0.5, 6), ("avg", 0.9, 3)])
def test_select_decides_whether_a_gate_that_never_fired_can_be_best(tmp_path, tiny_lm, monkeypatch, select, best_avg,
                                                                    best_step):
    # validations scripted: step 3 has the higher Avg but fires nothing (the unedited LM's Avg)
    scripted = iter([
        {"avg": 0.9, "retrieval_prompt": 0.0, "retrieval_rephrase": 0.0},
        {"avg": 0.5, "retrieval_prompt": 0.25, "retrieval_rephrase": 0.0},
    ])
    monkeypatch.setattr(Trainer, "validate", lambda self: next(scripted))
    trainer = Trainer(_config(select=select), _records(), _records(8, 100), tmp_path, lm=tiny_lm)
    trainer.train()
    assert trainer.best_avg == best_avg
    assert json.loads((tmp_path / "checkpoints" / "medrek" / "best" / "trainer.json").read_text())["step"] == best_step


def test_avg_firing_falls_back_to_the_last_checkpoint_with_a_warning(tmp_path, tiny_lm, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", lambda self: {"avg": 0.9, "retrieval_prompt": 0.0,
                                                           "retrieval_rephrase": 0.0})
    trainer = Trainer(_config(select="avg_firing"), _records(), _records(8, 100), tmp_path, lm=tiny_lm)
    with pytest.warns(UserWarning, match="no validation fired"):
        trainer.train()
    assert (tmp_path / "checkpoints" / "medrek" / "best" / "editor.safetensors").is_file()


def test_unknown_select_is_refused():
    with pytest.raises(ValueError, match="select"):
        _config(select="best")


def test_training_lowers_the_edit_loss(tmp_path, tiny_lm):
    # the tiny random LM has sharp logits, so its loss moves slowly but steadily (seeded: deterministic)
    trainer = Trainer(_config(steps=60, eval_every=0, checkpoint_every=60, batch_size=8, lr_prompt=3e-2,
                              lr_encoder=3e-2), _records(), _records(4, 50), tmp_path, lm=tiny_lm)
    trainer.train()
    log = pd.read_csv(tmp_path / "metrics" / "train_log_medrek.csv")
    first, last = log["edit_rel"].head(8).mean(), log["edit_rel"].tail(8).mean()
    assert last < first - 0.4, (first, last)
    assert log["q1"].tail(8).mean() < log["q1"].head(8).mean()


@pytest.mark.parametrize("retrieval_steps", [0, 2])
def test_kill_and_resume_ends_with_the_same_weights(tmp_path, tiny_lm, monkeypatch, retrieval_steps):
    records, valid = _records(), _records(8, 100)
    straight = Trainer(_config(retrieval_steps=retrieval_steps), records, valid, tmp_path / "straight", lm=tiny_lm)
    straight.train()

    killed = Trainer(_config(retrieval_steps=retrieval_steps), records, valid, tmp_path / "killed", lm=tiny_lm)
    original = Trainer.compute_losses

    def dies_at_step_5(self, batch):
        if self.step == 4:  # computing step 5: the last checkpoint is step 4
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "compute_losses", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    monkeypatch.setattr(Trainer, "compute_losses", original)

    resumed = Trainer(_config(retrieval_steps=retrieval_steps), records, valid, tmp_path / "killed", lm=tiny_lm)
    resumed.train(resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = pd.read_csv(tmp_path / "straight" / "metrics" / "train_log_medrek.csv")
    log_b = pd.read_csv(tmp_path / "killed" / "metrics" / "train_log_medrek.csv")
    assert log_a["step"].tolist() == log_b["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert log_a["loss"].tolist() == log_b["loss"].tolist()


def test_checkpoint_from_another_config_is_refused(tmp_path, tiny_lm):
    Trainer(_config(steps=2), _records(), _records(8, 100), tmp_path, lm=tiny_lm).train()
    other = Trainer(_config(steps=4, lr_prompt=5e-3), _records(), _records(8, 100), tmp_path, lm=tiny_lm)
    with pytest.raises(CheckpointError, match=r"another training config \(lr_prompt: checkpoint 0.01 vs now 0.005"):
        other.train(resume=True)
    longer = Trainer(_config(steps=4), _records(), _records(8, 100), tmp_path, lm=tiny_lm)
    assert longer.train(resume=True)["steps"] == 4  # a longer schedule may continue a run


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)


def test_several_named_locality_probes_medcf_style(tmp_path, tiny_lm):
    def with_probes(records):
        return [dataclasses.replace(r, locality={"target": r.locality["locality"],
                                                 "mapping": LocalityProbe(f"What does drug {i} treat?", "pain")})
                for i, r in enumerate(records)]

    trainer = Trainer(_config(steps=2, eval_every=2), with_probes(_records()), with_probes(_records(8, 100)),
                      tmp_path, lm=tiny_lm)
    terms = trainer.compute_losses(trainer.train_records[:4])
    assert set(terms) == {"q1", "q2", "q3", "edit_rel", "edit_gen", "locality"}
    assert all(torch.isfinite(v) for v in terms.values())
    trainer.train()
    valid = pd.read_csv(tmp_path / "metrics" / "train_valid_medrek.csv")
    assert {"locality/target", "locality/mapping", "locality"} <= set(valid["metric"])
    final = valid[valid["step"] == 2].set_index("metric")["value"]
    assert final["locality"] == pytest.approx((final["locality/target"] + final["locality/mapping"]) / 2, abs=1e-5)


def test_retrieval_steps_train_the_heads_and_leave_the_prompt_encoder(tmp_path, tiny_lm):
    trainer = Trainer(_config(steps=1, retrieval_steps=0), _records(), _records(8, 100), tmp_path, lm=tiny_lm)
    before = {k: v.clone() for k, v in trainer.editor.trainable_state_dict().items()}
    trainer._retrieval_step()
    after = trainer.editor.trainable_state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.query_head") for k in changed)
    assert not any(k.startswith("prompt_encoder.") for k in changed)


def test_checkpoint_without_a_newer_config_field_resumes_with_its_default(tmp_path, tiny_lm):
    import json

    Trainer(_config(steps=2), _records(), _records(8, 100), tmp_path, lm=tiny_lm).train()
    meta_path = tmp_path / "checkpoints" / "medrek" / "last" / "trainer.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["retrieval_steps"]  # as written before the field existed
    meta_path.write_text(json.dumps(meta))
    from safetensors.torch import load_file, save_file

    tensors_path = meta_path.with_name("trainer.safetensors")
    tensors = load_file(str(tensors_path))
    del tensors["retrieval_generator"]
    save_file(tensors, str(tensors_path))
    assert Trainer(_config(steps=3), _records(), _records(8, 100), tmp_path, lm=tiny_lm).train(resume=True)["steps"] == 3


def test_init_from_starts_from_a_saved_editor_and_records_it(tmp_path, tiny_lm):
    first = Trainer(_config(steps=2, eval_every=0), _records(), _records(8, 100), tmp_path / "a", lm=tiny_lm)
    first.train()
    saved = first.editor.save(tmp_path / "saved")
    start = _weights(first)
    tuned = Trainer(_config(steps=2, eval_every=0, seed=9), _records(), _records(8, 100), tmp_path / "b", lm=tiny_lm,
                    init_from=saved)
    assert any(not torch.equal(v, start[k]) for k, v in _weights(tuned).items())  # another seed: other init
    tuned.train(stop_after=0)  # the weights it starts from
    assert all(torch.equal(v, start[k]) for k, v in _weights(tuned).items())
    assert tuned.data["init_from"] == first.editor.fingerprint()


def test_init_from_an_editor_of_another_method_is_refused(tmp_path, tiny_lm):
    first = Trainer(_config(steps=1, eval_every=0, method="recipe"), _records(), _records(8, 100), tmp_path / "a",
                    lm=tiny_lm)
    saved = first.editor.save(tmp_path / "saved")
    with pytest.raises(CheckpointError, match="method: 'recipe' vs 'medrek'"):
        Trainer(_config(), _records(), _records(8, 100), tmp_path / "b", lm=tiny_lm, init_from=saved)


def test_init_from_an_editor_with_a_flipped_byte_is_refused(tmp_path, tiny_lm):
    first = Trainer(_config(steps=1, eval_every=0), _records(), _records(8, 100), tmp_path / "a", lm=tiny_lm)
    saved = first.editor.save(tmp_path / "saved")
    weights = saved / "editor.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="editor.safetensors: sha256 differs"):
        Trainer(_config(), _records(), _records(8, 100), tmp_path / "b", lm=tiny_lm, init_from=saved)


def test_without_validation_the_last_checkpoint_is_the_best(tmp_path, tiny_lm):
    trainer = Trainer(_config(steps=2, eval_every=0), _records(), _records(8, 100), tmp_path, lm=tiny_lm)
    trainer.train()
    best = tmp_path / "checkpoints" / "medrek" / "best"
    assert json.loads((best / "trainer.json").read_text())["step"] == 2


def test_long_edits_are_added_to_the_training_records_only(data_dir):
    from medrek.train.trainer import records_from_parameters

    values = {"dataset": "medversa", "data_dir": str(data_dir), "train_limit": 5,
              "long_edits": {"n": 3, "target_words": 40, "seed": 1}}
    train, valid, data = records_from_parameters(values)
    assert len(train) == 8 and [r.record_id for r in train[5:]] == ["synthetic-1-0", "synthetic-1-1", "synthetic-1-2"]
    assert all(len(r.target_new.split()) == 40 and list(r.locality) == ["locality"] for r in train[5:])
    assert not any(r.record_id.startswith("synthetic") for r in valid)
    assert data == {"dataset": "medversa", "train_limit": 5, "long_edits": values["long_edits"]}
    with pytest.raises(Exception, match="long_edits"):
        records_from_parameters({**values, "long_edits": {"n": 3, "words": 40}})


def test_init_from_an_editor_with_a_cross_encoder_fine_tunes_its_prompts_and_keeps_the_retriever(tmp_path, tiny_lm):
    # the long-edit fine-tune (params/small-long-edits.yaml): the working editor's retrieval settings named
    # in the run's config, its verifier loaded by init_from, every retrieval loss at 0
    retrieval = dict(method="medrek-lm-embedding", n_tokens=8, score="cosine", prototype_gate=False, verify_k=2,
                     verifier_kind="cross-encoder", verifier_layers=1, min_verified=0.4, exact_match=True)
    first = Trainer(_config(steps=1, eval_every=0, **retrieval), _records(), _records(8, 100), tmp_path / "a", lm=tiny_lm)
    first.train()
    saved = first.editor.save(tmp_path / "saved")
    start = _weights(first)
    tuned = Trainer(_config(steps=2, eval_every=0, weight_q1=0.0, weight_q2=0.0, weight_q3=0.0, retrieval_steps=0,
                            **retrieval), _records(), _records(8, 100), tmp_path / "b", lm=tiny_lm, init_from=saved)
    tuned.train()
    after = _weights(tuned)
    kept = [k for k in start if k.startswith(("verifier.", "encoder."))]
    assert any(k.startswith("verifier.") for k in kept)
    assert all(torch.equal(after[k], start[k]) for k in kept)
    assert any(not torch.equal(after[k], start[k]) for k in start if k.startswith("prompt_encoder."))


@pytest.mark.parametrize("params", ["small-long-edits.yaml", "small-hard-neighbours.yaml"])
def test_fine_tunes_of_the_working_editor_name_its_retrieval_as_its_editor_json_has_it(params):
    # a fine-tune from the committed working editor loads its verifier (init_from): the run's config
    # must build the same retriever, or the weights do not fit and the gate would be another
    from pathlib import Path

    import yaml

    from medrek.editor import read_editor_config

    root = Path(__file__).resolve().parents[1]
    section = yaml.safe_load((root / "params" / params).read_text())["notebooks"]["02_train_medrek"]
    assert section["init_from"] == {"medrek-lm-embedding": "checkpoints/small/medrek-lm-embedding"}
    _, working = read_editor_config(root / "checkpoints" / "small" / "medrek-lm-embedding")
    own = section["method_settings"]["medrek-lm-embedding"]
    for field in ("score", "prototype_gate", "verify_k", "verifier_kind", "verifier_layers", "min_verified",
                  "min_margin", "exact_match"):
        assert own.get(field) == getattr(working, field), f"params/{params}: {field}"
    # no margin on top of the verifier; set here, since notebook 02's default names methods this run does not train
    assert section["gate_max_false_fire"] == {}
