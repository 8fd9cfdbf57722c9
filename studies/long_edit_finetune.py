"""Does training on long targets let the working preset carry a long edit better than its text?

    python studies/long_edit_finetune.py [--steps 80] [--run-dir runs/long-edit-finetune]

Starts from the committed ``medrek-lm-embedding`` editor and trains its prompt encoder only (the
learned frame and the residual over the edit's token embeddings; every retrieval loss weighted 0,
so the retriever and its calibrated gate stay as committed) on a mix of MedVersa training edits
and synthetic long edits (``medrek.data.synthetic``: 60-word targets from a fixed vocabulary, a
seed of their own). MedFE is not read. The checkpoint it writes is then one lead of
``studies/long_edits.py`` (``--leads finetuned-long``), evaluated on MedFE and MedVersa like the
others. This is an experiment: the committed editor is not replaced by it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medrek.data import load_split
from medrek.data.synthetic import long_edit_records
from medrek.io import read_tensors
from medrek.models.registry import load_causal_lm
from medrek.train import TrainConfig, Trainer

CHECKPOINT = Path("checkpoints/small/medrek-lm-embedding")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--n-long", type=int, default=600)
    parser.add_argument("--n-short", type=int, default=600)
    parser.add_argument("--run-dir", default="runs/long-edit-finetune")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    saved = json.loads((CHECKPOINT / "editor.json").read_text())["config"]
    train = load_split("medversa", "train", args.data_dir)[: args.n_short] + long_edit_records(args.n_long, seed=1)
    valid = load_split("medversa", "valid", args.data_dir)[:50] + long_edit_records(50, seed=2)
    config = TrainConfig(**{**saved, "n_tokens": 160}, batch_size=4, steps=args.steps, lr_encoder=1e-5, lr_prompt=1e-4,
                         warmup_steps=8, schedule="cosine", grad_clip=1.0, weight_q1=0.0, weight_q2=0.0,
                         weight_q3=0.0, retrieval_steps=0, eval_every=0, eval_size=20,
                         checkpoint_every=20, seed=args.seed)
    lm = load_causal_lm(config.lm, seed=args.seed)
    trainer = Trainer(config, train, valid, args.run_dir, lm=lm, name="finetuned-long",
                      data={"mix": f"medversa train[:{args.n_short}] + synthetic long edits {args.n_long} (seed 1)"})
    if trainer.step == 0 and not trainer.last_checkpoint.exists():  # start from the committed weights
        trainer.editor.load_weights(read_tensors(CHECKPOINT / "editor.safetensors"), str(CHECKPOINT))
    summary = trainer.train(resume=True)
    trainer.editor.save(Path(args.run_dir) / "checkpoints" / "finetuned-long" / "final")
    print(summary)


if __name__ == "__main__":
    main()
