"""The GPU path checked on CPU: pre-tokenised steps equal the step that tokenised
every batch, bf16 autocast is a setting, and N processes take the step one process takes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from medrek.config import REPO_ROOT
from medrek.data import LocalityProbe
from medrek.evaluate.metrics import prediction_positions
from medrek.train import TrainConfig, Trainer, losses
from medrek.train.rows import TrainingRows

from test_trainer import _config, _records


def _multi_probe(records):
    return [dataclasses.replace(r, locality={"target": r.locality["locality"],
                                             "mapping": LocalityProbe(f"What does drug {i} treat, again?", "pain")})
            for i, r in enumerate(records)]


def _tokenising_step_losses(trainer, batch, prompt_tokens):
    """The edit terms as the step computed them before the pre-tokenised rows: tokenise the batch's texts,
    one row-at-a-time unedited forward per locality row (a reference implementation)."""
    cfg, model = trainer.config, trainer.editor.model
    probes = list(batch[0].locality)
    B = len(batch)
    texts = [r.prompt for r in batch] + [r.rephrase for r in batch] + [r.locality[n].prompt for n in probes for r in batch]
    targets = [r.target_new for r in batch] * 2 + [r.locality[n].answer for n in probes for r in batch]
    pairs = model.encode_pairs(texts, targets)
    positions = prediction_positions(pairs.target_mask)
    rows = positions.nonzero()[:, 0]
    labels = pairs.input_ids[:, 1:][pairs.target_mask[:, 1:]]
    logits = model.forward_bucketed(pairs.input_ids, pairs.attention_mask, prompt_tokens.repeat(2 + len(probes), 1, 1),
                                    torch.ones(len(texts), dtype=torch.bool), positions, rows_per_chunk=cfg.rows_per_chunk)
    rel, gen, loc = rows < B, (rows >= B) & (rows < 2 * B), rows >= 2 * B
    with torch.no_grad():
        hidden = []
        for row in range(2 * B, len(texts)):
            n = int(pairs.attention_mask[row].sum())
            hidden.append(model.final_hidden(pairs.input_ids[row: row + 1, :n], pairs.attention_mask[row: row + 1, :n],
                                             positions[row: row + 1, :n]))
        pre = model.project(torch.cat(hidden))
    probe_of = (rows[loc] - 2 * B) // B
    return {"edit_rel": losses.hinge_token_nll(logits[rel], labels[rel], cfg.edit_hinge),
            "edit_gen": losses.hinge_token_nll(logits[gen], labels[gen], cfg.edit_hinge),
            "locality": sum(losses.locality_kl(pre[probe_of == k], logits[loc][probe_of == k]) for k in range(len(probes)))}


def test_a_steps_rows_are_exactly_what_encode_pairs_makes(tiny_lm, tmp_path):
    records = _multi_probe(_records())
    trainer = Trainer(_config(), records, records[:4], tmp_path, lm=tiny_lm)
    idx = torch.tensor([5, 0, 11, 3])
    batch = [records[i] for i in idx]
    probes = list(batch[0].locality)
    expected = trainer.editor.model.encode_pairs(
        [r.prompt for r in batch] + [r.rephrase for r in batch] + [r.locality[n].prompt for n in probes for r in batch],
        [r.target_new for r in batch] * 2 + [r.locality[n].answer for n in probes for r in batch])
    got = TrainingRows(trainer.editor.model, records).batch(idx)
    for name in ("input_ids", "attention_mask", "target_mask"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


@pytest.mark.parametrize("method, multi", [("medrek", False), ("medrek", True), ("medrek-lm-embedding", False)])
def test_pre_tokenised_losses_are_bit_identical_to_the_tokenising_step(tiny_lm, tmp_path, method, multi):
    records = _records(12)
    records = _multi_probe(records) if multi else records
    extra = {"n_tokens": 10} if method == "medrek-lm-embedding" else {}
    trainer = Trainer(_config(method=method, **extra), records, records[:4], tmp_path, lm=tiny_lm)
    batch = [records[i] for i in (7, 2, 9, 4)]
    _, prompt_tokens = trainer.editor.encode_edits([r.prompt for r in batch], [r.target_new for r in batch])
    new = trainer.edit_losses(batch, prompt_tokens)
    old = _tokenising_step_losses(trainer, batch, prompt_tokens)
    for term in ("edit_rel", "edit_gen", "locality"):
        assert torch.equal(new[term], old[term]), (term, float(new[term]), float(old[term]))
    grads_new = torch.autograd.grad(sum(new.values()), prompt_tokens, retain_graph=True)[0]
    grads_old = torch.autograd.grad(sum(old.values()), prompt_tokens)[0]
    assert torch.equal(grads_new, grads_old)


def test_the_log_has_a_step_time_breakdown(tiny_lm, tmp_path):
    Trainer(_config(steps=2, eval_every=0), _records(), _records(8, 100), tmp_path, lm=tiny_lm).train()
    log = pd.read_csv(tmp_path / "metrics" / "train_log_medrek.csv")
    phases = log[["seconds_data", "seconds_forward", "seconds_backward", "seconds_optimizer"]]
    assert (phases > 0).all().all() and (phases.sum(axis=1) <= log["seconds"] + 1e-3).all()


def test_bf16_is_a_setting_and_stays_close_to_fp32(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        TrainConfig(precision="fp16")
    rows = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(_config(steps=2, eval_every=0, precision=precision), _records(), _records(8, 100),
                          tmp_path / precision, lm=tiny_lm)
        rows[precision] = trainer.train_step()
        assert all(p.dtype == torch.float32 for p in trainer.editor.prompt_encoder.parameters())  # fp32 master weights
    for term in ("edit_rel", "edit_gen", "q1"):
        assert rows["bf16"][term] == pytest.approx(rows["fp32"][term], rel=0.05), term
    assert rows["bf16"]["edit_rel"] != rows["fp32"]["edit_rel"]  # the LM really ran in bf16
    trainer.save_checkpoint(tmp_path / "ckpt")
    import json

    assert json.loads((tmp_path / "ckpt" / "trainer.json").read_text())["config"]["precision"] == "bf16"


def _launch(run_dir, processes: int, steps: int, resume: bool = False):
    """Notebook 02's trainer on the smoke params through medrek.train.distributed."""
    args = ["-m", "medrek.train.distributed", "params/smoke.yaml", "--run-dir", str(run_dir), "--methods", "medrek",
            "--set", f"steps={steps}", "eval_every=0", "checkpoint_every=2", f"resume={str(resume).lower()}",
            "train_limit=32"]
    if processes > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(run_dir / "metrics" / "train_log_medrek.csv")


def test_two_gloo_processes_take_the_one_process_steps_and_resume_exactly(tmp_path):
    terms = ["loss", "q1", "q2", "q3", "edit_rel", "edit_gen", "locality"]
    one = _launch(tmp_path / "one", 1, 4)
    two = _launch(tmp_path / "two", 2, 4)
    assert one["step"].tolist() == two["step"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(one[terms], two[terms], rtol=1e-5, atol=1e-6)
    _launch(tmp_path / "resumed", 2, 2)
    resumed = _launch(tmp_path / "resumed", 2, 4, resume=True)
    pd.testing.assert_frame_equal(resumed[terms], two[terms], rtol=0, atol=0)  # exact, same world size
