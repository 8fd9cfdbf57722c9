"""The LM-level memory-growth leads as Markdown, from ``studies/results/large_memory.json``
(``studies/large_memory.py growth``): per lead and stored size, efficacy, generality, locality on
all MedVersa prompts and on distinct ones, the kit's neighbour questions, what fires, and how
often a wrongly fired edit changes the answer. ``python studies/render_large_memory.py`` prints it;
``tools/render_readme.py`` puts it in docs/evaluation.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "large_memory.json"
COLUMNS = [("efficacy", "efficacy"), ("generality", "generality"), ("locality", "locality (all)"),
           ("locality/distinct", "locality (distinct)"), ("locality/neighbour", "neighbour locality"),
           ("retrieved_rephrase", "paraphrase fires own"), ("fired/distinct", "distinct fire"),
           ("fired/neighbour", "neighbours fire"), ("changed_when_fired/distinct", "changed if misfired (distinct)"),
           ("changed_when_fired/neighbour", "changed if misfired (neighbours)")]


def fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


SMALL_GROWTH = Path(__file__).resolve().parents[1] / "results" / "small" / "metrics" / "growth.csv"
COMMITTED = {"medrek-lm-embedding": "committed (results/small)", "ike": "IKE, its retriever (results/small)"}


def _committed_rows(sizes: set[int]) -> dict[str, dict]:
    """The committed editor's and IKE's growth means from results/small, at the leads' sizes."""
    import pandas as pd

    if not SMALL_GROWTH.exists():
        return {}
    growth = pd.read_csv(SMALL_GROWTH)
    out = {}
    for method, name in COMMITTED.items():
        part = growth[(growth["method"] == method) & (growth["eval_at"].isin(sizes))]
        if len(part):
            out[name] = {"sizes": {str(s): {**dict(zip(g["metric"], g["value"])),
                                            **{f"n/{m}": n for m, n in zip(g["metric"], g["n"])}}
                                   for s, g in part.groupby("eval_at")}}
    return out


def growth_leads_table(data: dict) -> str:
    head = ["lead", "stored", *[c[1] for c in COLUMNS]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sizes = {int(s) for lead in data["leads"].values() for s in lead["sizes"]}
    for name, lead in {**_committed_rows(sizes), **data["leads"]}.items():
        for k, (size, row) in enumerate(sorted(lead["sizes"].items(), key=lambda kv: int(kv[0]))):
            cells = [fmt(row.get(c)) + (f" (n={int(row[f'n/{c}'])})" if c.startswith("changed") and f"n/{c}" in row
                                        else "") for c, _ in COLUMNS]
            out.append("| " + " | ".join([name if k == 0 else "", f"{int(size):,}", *cells]) + " |")
    return "\n".join(out)


def main() -> None:
    print(growth_leads_table(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
