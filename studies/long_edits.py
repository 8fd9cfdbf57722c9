"""Long edits: MedFE explanations and MedVersa facts through the working editor, lead by lead.

    python studies/long_edits.py [--medfe-n 100] [--medversa-n 200] [--leads committed whole-text ...]

Each lead loads the committed ``medrek-lm-embedding`` editor with a few settings changed at load
(no retraining) and runs the single-edit protocol of notebook 03 (chat template, block scoring)
on the first ``--medfe-n`` MedFE test requests and the first ``--medversa-n`` MedVersa test
requests, next to IKE through the same retriever (the same settings) and the unedited LM. Rows
go to ``runs/long-edits/metrics`` (resumable: a lead already scored is read back, and refused if
something else made it); the summary to ``studies/results/long_edits.json``.

MedFE's test file is used for evaluation only: no lead is trained, calibrated or chosen on it by
this script; every lead is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from medrek.baselines import build_method  # noqa: E402
from medrek.data import load_requests  # noqa: E402
from medrek.editor import EditedModel, resolve_chat_template  # noqa: E402
from medrek.evaluate import unedited_locality_predictions  # noqa: E402
from medrek.evaluate.experiment import EvaluationSetup, evaluate_methods, records_path, split_label  # noqa: E402
from medrek.evaluate.metrics import bootstrap_ci  # noqa: E402
from medrek.evaluate.protocols import Protocol  # noqa: E402
from medrek.io import write_json  # noqa: E402
from medrek.models.registry import load_causal_lm  # noqa: E402

CHECKPOINT = "checkpoints/small/medrek-lm-embedding"
# lead -> EditorConfig settings changed at load (the committed editor: n_tokens 30, no exact match)
LEADS: dict[str, dict] = {
    "committed": {},
    "whole-text": {"n_tokens": 518},  # up to 512 LM tokens of the edit text (MedFE's longest: 379 + question)
    "whole-text+exact": {"n_tokens": 518, "exact_match": True},
    # retrieval reads the question without the instruction every MedFE question starts with
    # (the dataset's documented format; no other MedFE text is read to choose it)
    "whole-text+exact+question": {"n_tokens": 518, "exact_match": True,
                                  "query_prefix": "Please provide an explanation for the following fact:"},
    # the committed editor's prompt encoder trained further on long synthetic and MedVersa edits
    # (studies/long_edit_finetune.py; its retriever is the committed one, so IKE's rows are shared)
    "finetuned-long": {"checkpoint": "runs/long-edit-finetune/checkpoints/finetuned-long/final", "n_tokens": 518,
                       "exact_match": True},
    # the committed long-edit editor (notebook 02 with params/small-long-edits.yaml): its own config
    # already carries n_tokens 518 and exact_match
    "long-edit-editor": {"checkpoint": "checkpoints/small/medrek-lm-embedding-long"},
}
DEFAULT_LEADS = ["committed", "whole-text", "whole-text+exact", "whole-text+exact+question"]
METRICS = ["efficacy", "generality", "locality", "retrieved_prompt", "retrieved_rephrase", "edit_tokens_dropped"]


def run_dataset(dataset: str, n: int, leads: list[str], lm_pair, run_root: Path, data_dir: str | None,
                seed: int) -> list[dict]:
    records = load_requests(dataset, "test", data_dir, limit=n)
    split = split_label("test", n)
    model = EditedModel(*lm_pair, chat_template=resolve_chat_template(lm_pair[1], "auto"))
    reference = unedited_locality_predictions(model, records, 16, None)
    rows, ike_rows = [], {}  # retriever settings (as JSON) -> IKE's per-request rows
    for lead in leads:
        settings = dict(LEADS[lead])
        checkpoints = {"medrek-lm-embedding": settings.pop("checkpoint", CHECKPOINT)}
        # IKE's retriever: the lead's editor with its retrieval settings (n_tokens does not change IKE)
        retriever = json.dumps({"checkpoint": checkpoints["medrek-lm-embedding"],
                                **{k: v for k, v in settings.items() if k != "n_tokens"}}, sort_keys=True)
        methods = ["medrek-lm-embedding"] + (["ike"] if retriever not in ike_rows else [])
        methods += ["unedited"] if lead == "committed" else []

        def build(name: str):
            return build_method(name, lm_pair, checkpoints=checkpoints, ike_retriever="medrek-lm-embedding",
                                chat_template="auto", editor_settings={"medrek-lm-embedding": settings})

        setup = EvaluationSetup(dataset=dataset, split=split, lm="smollm2-135m", run_id=f"long-edits-{lead}",
                                seed=seed, chat_template="auto", batch_size=16, fluency_n=0, fluency_tokens=0,
                                resume=True, max_length=None, settings={"ike": {"retriever": "medrek-lm-embedding"}})
        metrics = run_root / "metrics" / lead
        table = evaluate_methods(methods, build, records, ["single"], reference, metrics, setup)
        per_request = {m: pd.read_csv(records_path(metrics, setup, m, Protocol("single")), dtype={"record_id": str})
                       for m in methods}
        ike_rows.setdefault(retriever, per_request.get("ike"))
        for method, part in table.groupby("method", sort=False):
            values = part.set_index("metric")["value"]
            rows.append({"dataset": dataset, "split": split, "lead": lead, "settings": LEADS[lead],
                         "method": method, "n": int(part["n"].max()),
                         **{m: round(float(values[m]), 4) for m in METRICS if m in values}})
            if method == "medrek-lm-embedding" and ike_rows[retriever] is not None:
                rows[-1]["minus_ike"] = paired_differences(per_request[method], ike_rows[retriever], seed)
            print(rows[-1])
    return rows


def paired_differences(ours: pd.DataFrame, ike: pd.DataFrame, seed: int) -> dict:
    """Per metric, the mean of (ours - IKE) over the same requests and its 95% percentile
    bootstrap interval (paired over requests, seeded)."""
    both = ours.merge(ike, on="record_id", suffixes=("", "_ike"))
    out = {}
    for metric in ("efficacy", "generality", "locality"):
        diff = (both[metric] - both[f"{metric}_ike"]).tolist()
        low, high = bootstrap_ci(diff, n_boot=2000, seed=seed)
        out[metric] = {"mean": round(float(np.mean(diff)), 4), "ci95": [round(low, 4), round(high, 4)],
                       "n": len(diff)}
    return out


def merged(rows: list[dict]) -> list[dict]:
    """``rows`` and the rows of the last saved result that these do not replace (same dataset,
    split, lead and method), so that one dataset or lead can be rerun alone."""
    path = Path(__file__).parent / "results" / "long_edits.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    key = lambda r: (r["dataset"], r["split"], r["lead"], r["method"])  # noqa: E731
    new = {key(r) for r in rows}
    return [r for r in old if key(r) not in new] + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--medfe-n", type=int, default=100)
    parser.add_argument("--medversa-n", type=int, default=200)
    parser.add_argument("--leads", nargs="+", default=DEFAULT_LEADS, choices=list(LEADS))
    parser.add_argument("--datasets", nargs="+", default=["medfe", "medversa"], choices=["medfe", "medversa"])
    parser.add_argument("--run-dir", default="runs/long-edits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    lm_pair = load_causal_lm("smollm2-135m", seed=args.seed)
    rows = []
    sizes = {"medfe": args.medfe_n, "medversa": args.medversa_n}
    for dataset in args.datasets:
        rows += run_dataset(dataset, sizes[dataset], args.leads, lm_pair, Path(args.run_dir), args.data_dir, args.seed)
    rows = merged(rows)
    save("long_edits", {"checkpoint": CHECKPOINT, "leads": LEADS, "protocol": "single",
                        "chat_template": "auto", "seed": args.seed, "rows": rows,
                        "notes": "IKE uses the lead's retriever settings (n_tokens does not change IKE); "
                                 "edit_tokens_dropped is a total over the requests"})
    pd.DataFrame(rows).drop(columns=["settings"]).to_csv(Path(args.run_dir) / "long_edits.csv", index=False)


def save(name: str, result: dict) -> Path:
    """Write ``studies/results/<name>.json`` (with the machine facts) atomically."""
    path = write_json(ROOT / "studies" / "results" / f"{name}.json", {"study": name, "machine": machine(), **result})
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
