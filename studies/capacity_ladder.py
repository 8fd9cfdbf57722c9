"""The capacity ladder: can T prompt tokens carry an edit, can the prompt encoder fit
its training edits, does it carry unseen ones? One rung of one variant per call; every result
is upserted into ``studies/results/capacity_ladder.json`` (keyed by rung, variant, n, steps).

    python studies/capacity_ladder.py ceiling --n 32 --steps 60
    python studies/capacity_ladder.py seen --variant medrek --n 64 --steps 60
    python studies/capacity_ladder.py unseen --variant medrek-lm-embedding --steps 300 --eval-n 100
    python studies/capacity_ladder.py unseen --checkpoint runs/small/checkpoints/medrek-lm-embedding/best

``--checkpoint`` measures an editor notebook 02 already trained (its step, steps and s/step come
from the folder's ``trainer.json`` and the run's training log) instead of training one here.

Variants are :class:`medrek.train.TrainConfig` overrides on the small params (SmolLM2-135M-
Instruct + MiniLM-L6, key_dim 512, batch 8, constant lr 3e-4 after no warm-up, clip 1.0).
``studies/render_ladder.py`` turns the JSON into the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medrek.data import load_split  # noqa: E402
from medrek.editor import EditedModel, resolve_chat_template  # noqa: E402
from medrek.io import write_json  # noqa: E402
from medrek.models.registry import load_causal_lm  # noqa: E402
from medrek.train import TrainConfig, Trainer  # noqa: E402
from medrek.train.ladder import fit_free_prompts, measure_editor  # noqa: E402

OUT = ROOT / "studies" / "results" / "capacity_ladder.json"
BASE = dict(lm="smollm2-135m", encoder="minilm-l6", key_dim=512, n_heads=8, batch_size=8, lr_encoder=3e-4,
            lr_prompt=3e-4, schedule="constant", grad_clip=1.0, progress=False, eval_every=0)
VARIANTS: dict[str, dict] = {
    # the paper's encoder (single-key attention, T identical tokens) and RECIPE's MLP; named by preset
    "medrek": dict(method="medrek", n_tokens=3),
    "recipe": dict(method="recipe", n_tokens=3),
    # lead: distinct tokens and more of them (the linear ablation gives T different tokens)
    "linear-T8": dict(method="medrek-no-attention", n_tokens=8),
    # lead: an information path from the LM's own embeddings of the edit text
    "medrek-lm-embedding": dict(method="medrek-lm-embedding", n_tokens=30),
}


def upsert(entry: dict) -> None:
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    key = ("rung", "variant", "n", "steps", "chat_template")
    rows = [r for r in rows if tuple(r.get(k) for k in key) != tuple(entry.get(k) for k in key)]
    rows.append(entry)
    rows.sort(key=lambda r: tuple(str(r.get(k)) for k in key))
    write_json(OUT, rows)


def measure_checkpoint(folder: Path, lm, eval_n: int) -> tuple[dict, str, int, int]:
    """(metrics on the first ``eval_n`` validation edits, method, step, training records) of a
    trained editor: a notebook 02 checkpoint (``trainer.json``) or a committed editor folder
    (``editor.json`` plus the training log beside it)."""
    import pandas as pd

    from medrek import Editor

    editor = Editor.load(folder, lm=lm)
    config = asdict(editor.config)
    method = config["method"]
    logs = [folder / f"train_log_{method}.csv", folder.parent.parent.parent / "metrics" / f"train_log_{method}.csv"]
    log = next((pd.read_csv(p) for p in logs if p.exists()), None)
    if (folder / "trainer.json").exists():
        step = int(json.loads((folder / "trainer.json").read_text())["step"])
    elif log is not None:
        step = int(log["step"].max())
    else:
        raise SystemExit(f"{folder}: no trainer.json and no train_log_{method}.csv to read the step from")
    result = measure_editor(editor, load_split("medversa", "valid")[:eval_n])
    if log is not None:
        seconds = log["seconds"]
        result["seconds_per_step"] = round(float(seconds.iloc[len(seconds) // 2:].mean()), 2)  # after warm-up caches
        result["train_seconds"] = round(float(seconds.sum()), 1)
    result.update({"eval_n": eval_n, "checkpoint": str(folder), "chat_template": config["chat_template"],
                   "config": {k: config[k] for k in sorted(config)}})
    return result, method, step, len(load_split("medversa", "train"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rung", choices=["ceiling", "seen", "unseen"])
    ap.add_argument("--variant", default="medrek", choices=sorted(VARIANTS))
    ap.add_argument("--n", type=int, default=64, help="training edits (ceiling / seen: also the evaluated ones)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-n", type=int, default=100, help="unseen: validation edits evaluated")
    ap.add_argument("--chat-template", default="auto", choices=["auto", "none"])
    ap.add_argument("--n-tokens", type=int, default=3, help="ceiling: free prompt tokens per edit")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--checkpoint", help="unseen: measure this trained editor (a notebook 02 checkpoint folder)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    train = load_split("medversa", "train")
    lm = load_causal_lm("smollm2-135m", seed=args.seed)
    entry = {"rung": args.rung, "variant": args.variant if args.rung != "ceiling" else f"free-T{args.n_tokens}",
             "n": args.n, "steps": args.steps, "chat_template": args.chat_template, "seed": args.seed,
             "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"}
    started = time.perf_counter()
    if args.checkpoint:
        if args.rung != "unseen":
            ap.error("--checkpoint only applies to the unseen rung")
        result, entry["variant"], entry["steps"], entry["n"] = measure_checkpoint(Path(args.checkpoint), lm, args.eval_n)
        entry["chat_template"] = result.pop("chat_template")
    elif args.rung == "ceiling":
        model = EditedModel(*lm, chat_template=resolve_chat_template(lm[1], args.chat_template))
        result = fit_free_prompts(model, train[: args.n], n_tokens=args.n_tokens, steps=args.steps, seed=args.seed)
    else:
        overrides = {**BASE, **VARIANTS[args.variant], "chat_template": args.chat_template, "seed": args.seed,
                     "steps": args.steps, "checkpoint_every": 10 ** 9}
        config = TrainConfig(**overrides)
        fit = train[: args.n] if args.rung == "seen" else train
        evaluated = fit if args.rung == "seen" else load_split("medversa", "valid")[: args.eval_n]
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(config, fit, evaluated, tmp, lm=lm)
            train_started = time.perf_counter()
            trainer.train()
            train_seconds = time.perf_counter() - train_started
            result = measure_editor(trainer.editor, evaluated)
            log = trainer.log_path.read_text().splitlines()
        last = dict(zip(log[0].split(","), log[-1].split(",")))
        result.update({"train_seconds": round(train_seconds, 1), "seconds_per_step": round(train_seconds / args.steps, 2),
                       "final_edit_rel": float(last["edit_rel"]), "config": {k: overrides[k] for k in sorted(overrides)
                                                                             if k not in ("progress",)}})
        if args.rung == "unseen":
            result["eval_n"] = args.eval_n
    result["seconds"] = round(time.perf_counter() - started, 1)
    entry.update(result)
    upsert(entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
