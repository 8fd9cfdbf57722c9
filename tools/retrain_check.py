"""How close notebook 02's retrain in ``results/small`` comes to the committed editors.

Notebooks 03-05 of the small run evaluate the committed editors (``checkpoints/small/<method>/``,
named by ``editor_checkpoints`` in ``params/small.yaml``); notebook 02 of the same run trains every
editor again from scratch into ``results/small/checkpoints/`` (ignored by git, like every run's
``checkpoints/``: trainer states with optimizer moments). This compares the two, method by method:

- the trajectory: the loss terms logged at every step, committed log against the retrain's, and the
  first step where they differ;
- the validation at the last step (fractions on the fixed subset of 100 validation edits);
- the trained weights (the ``weights_sha256`` each ``editor.json`` records; ``identical_weights`` names
  the retrain's checkpoint, ``best`` or ``last``, that equals the committed editor) and the gate
  that decides whether a retrieved edit fires.

It writes ``results/small/metrics/retrain_check.json``; ``tools/render_readme.py`` renders it in
docs/training.md and ``tests/test_retrain_check.py`` recomputes its log comparison from the committed
CSVs and bounds the differences.

    python tools/retrain_check.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from medrek.io import file_sha256, write_json

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "checkpoints" / "small"
RUN = ROOT / "results" / "small"
OUTPUT = RUN / "metrics" / "retrain_check.json"
TRAINED = ["medrek-lm-embedding", "recipe-lm-embedding", "medrek", "recipe"]
LOSS_COLUMNS = ["loss", "q1", "q2", "q3", "edit_rel", "edit_gen", "locality"]
VALIDATION = ["efficacy", "generality", "locality", "retrieval_prompt", "retrieval_rephrase", "false_retrieval_locality"]


def compare_logs(committed: pd.DataFrame, retrained: pd.DataFrame) -> dict[str, Any]:
    """Steps whose logged loss terms are equal to the bit, and the first that differs."""
    both = committed[["step", *LOSS_COLUMNS]].merge(retrained[["step", *LOSS_COLUMNS]], on="step",
                                                    suffixes=("_committed", "_retrained"))
    equal = pd.concat([both[f"{c}_committed"] == both[f"{c}_retrained"] for c in LOSS_COLUMNS], axis=1).all(axis=1)
    first = None if equal.all() else int(both.loc[~equal, "step"].min())
    row = both[both["step"] == first].iloc[0] if first is not None else None
    return {"steps_compared": int(len(both)), "steps_identical": int(equal.sum()), "first_different_step": first,
            "first_difference_loss": None if row is None else
            {"committed": float(row["loss_committed"]), "retrained": float(row["loss_retrained"])}}


def final_validation(valid: pd.DataFrame) -> dict[str, Any]:
    """The last step's validation fractions."""
    last = valid[valid["step"] == valid["step"].max()].set_index("metric")["value"]
    return {"step": int(valid["step"].max()), **{k: float(last[k]) for k in VALIDATION}}


def editor_facts(folder: Path) -> dict[str, Any]:
    """Weights hash and gate of a saved editor (its ``editor.json``); None where it is not on this disk."""
    path = folder / "editor.json"
    if not path.exists():
        return {"weights_sha256": None, "gate": None}
    saved = json.loads(path.read_text("utf-8"))
    # editors saved before editor.json recorded it: the same sha256 of editor.safetensors
    sha = saved.get("weights_sha256") or file_sha256(folder / "editor.safetensors")
    return {"weights_sha256": sha, "gate": gate_label(saved["config"])}


def gate_label(config: dict[str, Any]) -> str:
    """What decides that a retrieved edit fires: a cross-encoder's threshold, a margin over the
    prototype, or the prototype alone (the paper's gate)."""
    if config.get("verify_k", 0) > 0:
        return f"verifier >= {config['min_verified']:.3f}"
    if config.get("min_margin") is not None:
        return f"margin {config['min_margin']:.2f}"
    return "prototype"


def compare(method: str, committed: Path = COMMITTED, run: Path = RUN) -> dict[str, Any]:
    """Everything the check says of one method (see the module docstring)."""
    logs = [pd.read_csv(committed / method / f"train_log_{method}.csv"), pd.read_csv(run / "metrics" / f"train_log_{method}.csv")]
    valids = [pd.read_csv(committed / method / f"train_valid_{method}.csv"),
              pd.read_csv(run / "metrics" / f"train_valid_{method}.csv")]
    old = editor_facts(committed / method)
    new = {which: editor_facts(run / "checkpoints" / method / which) for which in ("best", "last")}
    on_disk = [which for which in ("best", "last") if new[which]["weights_sha256"] is not None]
    same = [which for which in on_disk if new[which]["weights_sha256"] == old["weights_sha256"]]
    return {"log": compare_logs(*logs),
            "minutes_of_steps": {"committed": round(float(logs[0]["seconds"].sum()) / 60, 1),
                                 "retrained": round(float(logs[1]["seconds"].sum()) / 60, 1)},
            "validation": {"committed": final_validation(valids[0]), "retrained": final_validation(valids[1])},
            # the committed editor is usually the retrain's best checkpoint (RECIPE's is its last one)
            "editor": {"committed": old, "retrained": new,
                       "identical_weights": (same[0] if same else False) if on_disk else None}}


def main() -> int:
    missing = [m for m in TRAINED if not (RUN / "checkpoints" / m / "best" / "editor.json").exists()]
    if missing:
        print(f"no retrained editor for {missing} under {RUN / 'checkpoints'}: run notebook 02 of the small run first "
              "(python -m medrek.pipeline params/small.yaml --run-dir results/small --only 02_train_medrek)", file=sys.stderr)
        return 1
    write_json(OUTPUT, {method: compare(method) for method in TRAINED})
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
