"""Hyper-parameters of the lifelong-editing baselines (GRACE, WISE), chosen on MedVersa *valid*.

For each setting of a small grid, the first ``--n`` validation edits are applied one by one in
order (the sequential protocol) and all of them are scored after the last (efficacy, generality,
locality; chat template, SmolLM2-135M-Instruct): a radius or threshold that lets paraphrases in
and keeps other questions out must do so with many edits stored, which a one-edit-at-a-time
search cannot see. The setting with the best Avg is the one ``params/small.yaml`` names. Test and
MedFE are never read. Per-request rows go to ``studies/results/lifelong_search/`` (a rerun resumes
them), means and seconds per edit to ``studies/results/lifelong_search.json``::

    python studies/lifelong_search.py --method grace
    python studies/render_lifelong_search.py        # the Markdown table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from medrek.baselines import build_method, locality_pairs  # noqa: E402
from medrek.data.loaders import load_split  # noqa: E402
from medrek.editor import EditedModel, resolve_chat_template  # noqa: E402
from medrek.evaluate.metrics import avg_score  # noqa: E402
from medrek.evaluate.protocols import Protocol, run_protocol, unedited_locality_predictions  # noqa: E402
from medrek.io import read_json, write_json  # noqa: E402
from medrek.models.registry import load_causal_lm  # noqa: E402

OUT = ROOT / "studies" / "results" / "lifelong_search.json"
ROWS = ROOT / "studies" / "results" / "lifelong_search"
GRIDS = {
    # EasyEdit's radius is 1.0; on SmolLM2's layer 24 a question's key lies ~7 from its paraphrase's
    # and ~8-11 from other questions' (first 20 valid edits), so the grid spans that range
    "grace": [{"radius": r} for r in (1.0, 3.0, 5.0, 6.0, 7.0)],
    # EasyEdit's margins (alpha 5, beta 20, gamma 10) are activation gaps of LLaMA-2-7B's 4,096-wide
    # FFN output; SmolLM2's is 576 wide, so the grid scales them down as well
    "wise": [{"alpha": 5.0 * f, "beta": 20.0 * f, "gamma": 10.0 * f} for f in (2.0, 1.0, 0.5, 0.25)]
    # ... and smaller knowledge shards (EasyEdit: 500 edits per shard, merged every 1,000), so that
    # fewer edits share one side memory's weights before a merge
    + [{"alpha": 10.0, "beta": 40.0, "gamma": 20.0, "save_freq": 10, "merge_freq": 20}],
}


def tag(settings: dict) -> str:
    return "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(settings.items())) or "default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=sorted(GRIDS), required=True)
    parser.add_argument("--n", type=int, default=100, help="validation edits applied in order, then scored")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", nargs="*", default=None, help="grid entries by tag")
    args = parser.parse_args()
    records = load_split("medversa", "valid", args.data_dir)[: args.n]
    irrelevant = locality_pairs(load_split("medversa", "train", args.data_dir))
    lm = load_causal_lm("smollm2-135m", seed=args.seed)
    plain = EditedModel(*lm, chat_template=resolve_chat_template(lm[1], "auto"))
    reference = unedited_locality_predictions(plain, records, 32, None)
    results = read_json(OUT) if OUT.exists() else {"machine": machine(), "rows": []}
    for settings in GRIDS[args.method]:
        name = tag(settings)
        if args.only is not None and name not in args.only:
            continue
        method = build_method(args.method, lm, chat_template="auto", irrelevant=irrelevant, **{args.method: settings})
        path = ROWS / f"{args.method}-{name}.csv"
        before = {(r["method"], r["tag"]): r for r in results["rows"]}.get((args.method, name))
        resumed = path.exists()
        start = time.perf_counter()
        rows = run_protocol(method, records, Protocol("sequential", 1, (len(records),)), reference,
                            path, seed=args.seed, settings=settings,
                            labels={"dataset": "medversa", "split": f"valid[:{len(records)}]"})
        seconds = time.perf_counter() - start
        if resumed and before is not None:  # rows read back cost nothing: keep the time of the run that made them
            seconds = before["seconds"]
        means = {m: round(float(rows[m].mean()), 4) for m in ("efficacy", "generality", "locality")}
        fired = round(float(rows["fired/locality"].mean()), 4) if "fired/locality" in rows else None
        entry = {"method": args.method, "settings": settings, "tag": name, "edits": len(records), **means,
                 "avg": round(avg_score(means["efficacy"], means["generality"], means["locality"]), 4),
                 "locality_fires": fired, "seconds": round(seconds, 1),
                 "seconds_per_edit": round(seconds / len(records), 2)}
        results["rows"] = [r for r in results["rows"] if (r["method"], r["tag"]) != (args.method, name)] + [entry]
        write_json(OUT, results)
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
