"""The capacity ladder and the leads table as Markdown, from ``studies/results/capacity_ladder.json``
and ``studies/results/leads.json`` (each lead: what was tried, where it was measured, the number,
and what it says). ``python studies/render_ladder.py`` prints both tables."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = [("efficacy", "efficacy"), ("generality", "generality"), ("locality", "locality"),
           ("edit_nll", "edit NLL"), ("prompt_norm", "prompt norm"), ("retrieval_prompt", "retr. prompt")]
RUNG_ORDER = {"ceiling": 0, "seen": 1, "unseen": 2}


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def ladder_table(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda r: (RUNG_ORDER[r["rung"]], r["variant"], r["n"], r["steps"]))
    head = ["rung", "variant", "edits", "steps", *[c[1] for c in COLUMNS], "s/step", "template"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        edits = f"{r['n']} train / {r['eval_n']} valid" if r["rung"] == "unseen" else str(r["n"])
        out.append("| " + " | ".join([r["rung"], r["variant"], edits, str(r["steps"]),
                                      *[fmt(r.get(k)) for k, _ in COLUMNS],
                                      fmt(r.get("seconds_per_step")), r["chat_template"]]) + " |")
    return "\n".join(out)


def leads_table(leads: list[dict]) -> str:
    head = ["lead", "change", "measured on", "result", "verdict"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lead in leads:
        out.append("| " + " | ".join(lead[k] for k in ("lead", "change", "measured_on", "result", "verdict")) + " |")
    return "\n".join(out)


def main() -> None:
    ladder = json.loads((RESULTS / "capacity_ladder.json").read_text())
    print(ladder_table(ladder))
    leads = RESULTS / "leads.json"
    if leads.exists():
        print()
        print(leads_table(json.loads(leads.read_text())))


if __name__ == "__main__":
    main()
