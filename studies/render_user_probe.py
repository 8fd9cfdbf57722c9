"""The user-edit probe as Markdown, from ``studies/results/user_probe.json`` (``studies/user_probe.py``):
per editor, how often the edited question and its paraphrases show the new answer and how often a
neighbour question fires an edit and has its answer changed. ``python studies/render_user_probe.py``
prints it; ``tools/render_readme.py`` puts it in docs/evaluation.md."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "user_probe.json"
COLUMNS = [("prompt_shows_target", "edited question shows the new answer"),
           ("paraphrase_fires_own", "paraphrase fires its edit"),
           ("paraphrase_shows_target", "paraphrase shows the new answer"),
           ("neighbour_fires", "neighbour fires an edit"), ("neighbour_changed", "neighbour's answer changed")]


def render(data: dict) -> str:
    head = ["editor", *[c[1] for c in COLUMNS]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in data["editors"].items():
        out.append("| " + " | ".join([f"{name} (`{row['folder']}`)", *[f"{row[c]:.3f}" for c, _ in COLUMNS]]) + " |")
    return "\n".join(out)


def main() -> None:
    print(render(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
