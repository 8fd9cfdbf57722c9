"""The retrieval ladder as Markdown, from ``studies/results/retrieval_ladder.json``: one row per lead
and memory size (own edit fires for prompt and paraphrase, unrelated and neighbour questions that
fire an edit), the calibrated threshold, and the best numbers per size.
``python studies/render_retrieval_ladder.py`` prints it; ``tools/render_readme.py`` puts it in the docs."""

from __future__ import annotations

import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "retrieval_ladder.json"
COLUMNS = [("prompt_own", "prompt fires own"), ("rephrase_own", "paraphrase fires own"),
           ("rephrase_top1_own", "paraphrase top-1 own"), ("locality_fires", "locality fires"),
           ("locality_fires_distinct", "locality fires (distinct)"), ("neighbour_fires", "neighbour fires")]


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def threshold(lead: dict) -> str:
    cal = lead.get("calibration")
    if not cal:
        return "-"
    if cal["threshold"] is None:
        return f"{cal['setting']}: none needed"
    return f"{cal['setting']} {cal['threshold']:.3f}"


def ladder_table(data: dict) -> str:
    head = ["lead", "stored", *[c[1] for c in COLUMNS], "neighbour questions", "gate (calibrated on valid)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lead in data["leads"]:
        for k, row in enumerate(lead["rows"]):
            out.append("| " + " | ".join([lead["lead"] if k == 0 else "", f"{row['stored']:,}",
                                          *[fmt(row.get(c)) for c, _ in COLUMNS],
                                          str(lead.get("neighbours", "-")) if k == 0 else "",
                                          threshold(lead) if k == 0 else ""]) + " |")
    return "\n".join(out)


def changes_table(data: dict) -> str:
    out = ["| lead | what changes | seconds |", "|---|---|---|"]
    for lead in data["leads"]:
        out.append(f"| {lead['lead']} | {lead['change']} | {lead['seconds']:.0f} |")
    return "\n".join(out)


def main() -> None:
    data = json.loads(RESULTS.read_text())
    print(ladder_table(data))
    print()
    print(changes_table(data))


if __name__ == "__main__":
    main()
