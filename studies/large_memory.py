"""A memory that holds, at the LM level: leads of the working editor with thousands of edits stored.

Two steps, each resumable, nothing trained or calibrated on test:

    # 1. an editor with large-memory retrieval: the retrieval stage of notebook 02 (cosine query
    #    head, a trained cross-encoder reading the top-k, its gate calibrated with 5,000 valid and
    #    train edits stored on distinct validation questions and the validation neighbours)
    python studies/large_memory.py build --editor checkpoints/small/medrek-lm-embedding \\
        --verifier runs/verifier-minilm --out runs/large-memory/ce
    # 2. the growth protocol with the LM for each lead (name=folder; "ike=<folder>" is IKE through
    #    that editor's retriever): the first 200 MedVersa test edits scored with 200 / 1,000 / 6,000
    #    stored, locality on all and on distinct prompts, the kit's neighbour questions, what fires,
    #    and how often a misfire changes the answer
    python studies/large_memory.py growth committed=checkpoints/small/medrek-lm-embedding \\
        ike=checkpoints/small/medrek-lm-embedding ce=runs/large-memory/ce

Rows go to ``studies/results/large_memory/growth_<lead>.csv`` (per request and size) and the
means to ``studies/results/large_memory.json``; ``python studies/render_large_memory.py`` renders the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrek import Editor  # noqa: E402
from medrek.baselines import build_method  # noqa: E402
from medrek.config import load_params, repo_path  # noqa: E402
from medrek.data.loaders import load_split  # noqa: E402
from medrek.editor import EditedModel, resolve_chat_template  # noqa: E402
from medrek.evaluate import unedited_locality_predictions  # noqa: E402
from medrek.evaluate.growth import (VALID_NEIGHBOURS_FILE, load_locality_duplicates, load_neighbours,  # noqa: E402
                                   neighbour_records, run_growth, with_unedited_answers)
from medrek.io import read_json, write_json  # noqa: E402
from medrek.models.registry import load_causal_lm  # noqa: E402
from medrek.train.retriever import RetrievalStageConfig, fit_large_memory_retrieval, stage_config  # noqa: E402

RESULTS = ROOT / "studies" / "results"
OUT = RESULTS / "large_memory.json"
SIZES = (200, 1000, 6000)
N_EVAL = 200
SEED = 42
METRICS = ("efficacy", "generality", "locality", "locality/distinct", "locality/neighbour", "fired/locality",
           "fired/distinct", "fired/neighbour", "changed_when_fired/distinct", "changed_when_fired/neighbour",
           "retrieved_prompt", "retrieved_rephrase")
STAGE = RetrievalStageConfig(verify_k=10, stored=5000, max_false_fire=0.05, calibration_edits=2000,
                             verifier_layers=6, verifier_kind="cross-encoder", distinct=True, max_neighbour_fire=0.10)


def build(args: argparse.Namespace) -> None:
    lm = load_causal_lm("smollm2-135m", seed=SEED)
    editor = Editor.load(repo_path(args.editor), lm=lm)
    data = {s: load_split("medversa", s, args.data_dir) for s in ("train", "valid")}
    valid_ids = {r.record_id for r in data["valid"]}
    neighbours = [n.prompt for n in load_neighbours(VALID_NEIGHBOURS_FILE) if n.record_id in valid_ids]
    if args.params:  # notebook 02's stage exactly as a params file sets it (its verifier trained here)
        params = load_params(repo_path(args.params))
        settings = params.notebooks["02_train_medrek"]["retrieval_stage"]["medrek-lm-embedding"]
        stage = stage_config(settings, f"{args.params}: retrieval_stage.medrek-lm-embedding")
        seed = params.seed
    else:
        stage = RetrievalStageConfig(**{**vars(STAGE), "verifier_from": args.verifier,
                                        "max_false_fire": args.max_false_fire,
                                        "max_neighbour_fire": args.max_neighbour_fire})
        seed = SEED
    out = repo_path(args.out)
    start = time.perf_counter()
    log = fit_large_memory_retrieval(editor, data["train"], data["valid"], data["train"], stage, seed=seed,
                                     progress=True, neighbours=neighbours,
                                     work_dir=out.parent / f"{out.name}-verifier")  # resumable cross-encoder
    log["seconds"] = round(time.perf_counter() - start, 1)
    editor.save(out)
    write_json(out / "retrieval_stage.json", {**log, "from": args.editor})
    print(json.dumps(log["calibration"], indent=1))


def growth(args: argparse.Namespace) -> None:
    leads = dict(item.split("=", 1) for item in args.leads)
    lm = load_causal_lm("smollm2-135m", seed=SEED)
    model = EditedModel(*lm, chat_template=resolve_chat_template(lm[1], "auto"))
    data = {s: load_split("medversa", s, args.data_dir) for s in ("train", "valid", "test")}
    evaluated = data["test"][:N_EVAL]
    padding = data["test"] + data["valid"] + data["train"]
    ids = {r.record_id for r in evaluated}
    neighbours = with_unedited_answers(model, [n for n in load_neighbours() if n.record_id in ids])
    probes = {"duplicates": load_locality_duplicates(), "neighbours": neighbours,
              "neighbour_reference": unedited_locality_predictions(model, neighbour_records(neighbours))}
    reference = unedited_locality_predictions(model, evaluated)
    summary = read_json(OUT) if OUT.exists() else {"leads": {}}
    for name, folder in leads.items():
        kind = "ike" if name.startswith("ike") else "medrek-lm-embedding"
        method = build_method(kind, lm, checkpoints={"medrek-lm-embedding": repo_path(folder)},
                              ike_retriever="medrek-lm-embedding", chat_template="auto")
        start = time.perf_counter()
        rows = run_growth(method, evaluated, padding, args.sizes, reference,
                          RESULTS / "large_memory" / f"growth_{name}.csv", seed=SEED,
                          labels={"dataset": "medversa", "split": "test", "lm": "smollm2-135m", "lead": name},
                          progress=True, **probes)
        means = {int(s): {m: round(float(g[m].mean()), 4) for m in METRICS if m in g and g[m].notna().any()}
                 | {f"n/{m}": int(g[m].notna().sum()) for m in METRICS if m in g}
                 for s, g in rows.groupby("stored")}
        summary["leads"][name] = {"folder": folder, "method": kind, "sizes": means,
                                  "seconds": round(time.perf_counter() - start, 1)}
        write_json(OUT, summary)
        print(name, json.dumps(means), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    sub = ap.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build", help="an editor with large-memory retrieval (the retrieval stage)")
    b.add_argument("--editor", required=True)
    b.add_argument("--verifier", default="", help="a folder python -m medrek.train.cross_encoder trained")
    b.add_argument("--params", default="", help="take the stage from this params file's notebook 02 section "
                                               "(e.g. params/small.yaml); its cross-encoder is trained here")
    b.add_argument("--out", required=True)
    b.add_argument("--max-false-fire", type=float, default=STAGE.max_false_fire)
    b.add_argument("--max-neighbour-fire", type=float, default=STAGE.max_neighbour_fire)
    g = sub.add_parser("growth", help="the growth protocol with the LM for each lead")
    g.add_argument("leads", nargs="+", help="name=editor folder (a name starting with ike: IKE through its retriever)")
    g.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = ap.parse_args()
    torch.manual_seed(SEED)
    {"build": build, "growth": growth}[args.step](args)


if __name__ == "__main__":
    main()
