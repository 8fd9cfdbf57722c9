"""The lifelong baselines' validation search as Markdown, from ``studies/results/lifelong_search.json``
(``studies/lifelong_search.py``): per method and setting, the first N MedVersa valid edits applied in
order, then all scored. ``python studies/render_lifelong_search.py`` prints it;
``tools/render_readme.py`` puts it in docs/evaluation.md."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "lifelong_search.json"


def render(data: dict) -> str:
    out = ["| method | setting | edits | efficacy | generality | locality | Avg | locality prompts it acts on | "
           "seconds per edit (scoring included) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(data["rows"], key=lambda r: (r["method"], r["tag"])):
        setting = ", ".join(f"{k} {v:g}" for k, v in sorted(row["settings"].items()))
        fired = "" if row.get("locality_fires") is None else f"{row['locality_fires']:.3f}"
        out.append(f"| {row['method']} | {setting} | {row['edits']} | {row['efficacy']:.3f} | {row['generality']:.3f} | "
                   f"{row['locality']:.3f} | {row['avg']:.3f} | {fired} | {row['seconds_per_edit']:.2f} |")
    return "\n".join(out)


def main() -> None:
    print(render(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
