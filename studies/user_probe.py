"""A user's own edits (``medrek/data/user_edits_probe.json``): 30 short counterfactual edits stored
together, each asked verbatim, in two paraphrases and with two neighbour questions (same subject,
another fact), with the LM's greedy answers before and with the edits.

    python studies/user_probe.py working=checkpoints/small/medrek-lm-embedding \\
        before-stage=checkpoints/small/medrek-lm-embedding-long

Per-question rows go to ``studies/results/user_probe/<name>.csv``, the shares to
``studies/results/user_probe.json``; ``python studies/render_user_probe.py`` (or ``--render``) prints the table.
Evaluation only: nothing is trained, calibrated or selected on the probe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "studies"))

from medrek import Editor  # noqa: E402
from medrek.config import repo_path  # noqa: E402
from medrek.evaluate.user_probe import load_user_probe, probe_answers, probe_summary  # noqa: E402
from medrek.io import read_json, write_csv, write_json  # noqa: E402
from render_user_probe import render  # noqa: E402

RESULTS = ROOT / "studies" / "results"
OUT = RESULTS / "user_probe.json"
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("editors", nargs="*", help="name=editor folder")
    ap.add_argument("--render", action="store_true", help="print the table of studies/results/user_probe.json")
    args = ap.parse_args()
    if args.render:
        print(render(read_json(OUT)))
        return
    torch.manual_seed(0)
    edits = load_user_probe()
    summary = read_json(OUT) if OUT.exists() else {"editors": {}}
    for name, folder in (item.split("=", 1) for item in args.editors):
        editor = Editor.load(repo_path(folder))
        table = probe_answers(editor, edits)
        write_csv(RESULTS / "user_probe" / f"{name}.csv", table)
        summary["editors"][name] = {"folder": folder, "fingerprint": editor.fingerprint(),
                                    **{k: round(v, 4) for k, v in probe_summary(table).items()}}
        write_json(OUT, summary)
        print(name, json.dumps(summary["editors"][name]), flush=True)


if __name__ == "__main__":
    main()
