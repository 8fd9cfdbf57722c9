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
           ("fired/neighbour", "neighbours fire"), ("changed_when_fired/distinct", "changed | misfire (distinct)"),
           ("changed_when_fired/neighbour", "changed | misfire (neighbours)")]


def fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def growth_leads_table(data: dict) -> str:
    head = ["lead", "stored", *[c[1] for c in COLUMNS]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, lead in data["leads"].items():
        for k, (size, row) in enumerate(sorted(lead["sizes"].items(), key=lambda kv: int(kv[0]))):
            out.append("| " + " | ".join([name if k == 0 else "", f"{int(size):,}",
                                          *[fmt(row.get(c)) for c, _ in COLUMNS]]) + " |")
    return "\n".join(out)


def main() -> None:
    print(growth_leads_table(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
