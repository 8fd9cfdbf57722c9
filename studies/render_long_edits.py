"""The long-edits study as Markdown, from ``studies/results/long_edits.json``
(``studies/long_edits.py``): per dataset and lead, efficacy, generality, locality, how often the
own edit fires and how many edit-text tokens the prompt could not carry, against IKE.
``tools/render_readme.py`` puts it in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "long_edits.json"


def fmt_opt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def long_edits_table(data: dict | None) -> list[str]:
    if not data:
        return []
    own = {r["lead"]: r["settings"]["checkpoint"] for r in data["rows"] if "checkpoint" in (r.get("settings") or {})}
    others = "".join(f"; `{lead}` loads `{path}`" for lead, path in sorted(own.items()))
    out = [f"**Long edits** (long_edits.json; `{data['checkpoint']}` loaded with each lead's settings, no retraining"
           f"{others}; single protocol, chat template; IKE through the lead's retriever; edit tokens dropped = total over the "
           "requests of edit-text tokens the prompt could not carry):", "",
           "| dataset | lead | method | n | efficacy | generality | locality | own edit fires (prompt) "
           "| own edit fires (rephrase) | edit tokens dropped | efficacy minus IKE's [95% CI] |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in data["rows"]:
        diff = r.get("minus_ike", {}).get("efficacy")
        paired = f"{diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]" if diff else "-"
        out.append(f"| {r['dataset']} {r['split']} | {r['lead']} | {r['method']} | {r['n']} | {r['efficacy']:.3f} "
                   f"| {r['generality']:.3f} | {r['locality']:.3f} | {fmt_opt(r.get('retrieved_prompt'))} "
                   f"| {fmt_opt(r.get('retrieved_rephrase'))} | {int(r.get('edit_tokens_dropped', 0)):,} | {paired} |")
    return out + ["", "The interval is a percentile bootstrap over requests of the paired difference (2,000 "
                      "resamples, seeded); IKE runs through the lead's retriever settings.", ""]


if __name__ == "__main__":
    print("\n".join(long_edits_table(json.loads(RESULTS.read_text()))))
