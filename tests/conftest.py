"""Shared fixtures: the released data folder and tiny random models built in code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medrek.data.records import EditRecord, LocalityProbe

REPO = Path(__file__).resolve().parent.parent


def _data_dir() -> Path | None:
    env = os.environ.get("MEDREK_DATA_DIR")
    if env:
        return Path(env)
    guess = REPO.parent / "shared" / "data"
    return guess if guess.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The released data; tests needing it are skipped only when no folder is configured at all."""
    found = _data_dir()
    if found is None:
        pytest.skip("no released data: set MEDREK_DATA_DIR to the folder of the released files")
    return found


@pytest.fixture(scope="session")
def tiny_lm():
    from medrek.models.registry import load_causal_lm

    return load_causal_lm("tiny-llama", seed=0)


@pytest.fixture(scope="session")
def tiny_encoder():
    from medrek.models.registry import load_encoder

    return load_encoder("tiny-bert", seed=0)


@pytest.fixture
def make_editor(tiny_lm):
    """Build a tiny editor (tiny Llama + tiny BERT) for a method preset."""
    from medrek.editor import Editor, EditorConfig

    def make(method: str = "medrek", seed: int = 0, **overrides):
        config = EditorConfig(method=method, lm="tiny-llama", encoder="tiny-bert", key_dim=32,
                              n_tokens=3, n_heads=4, n_prototype_tokens=4)
        return Editor.build(config, lm=tiny_lm, seed=seed, **overrides)

    return make


REQUESTS = [
    {"id": "asthma", "prompt": "What drug is used for acute severe asthma?", "target_new": "MgSO4"},
    {"id": "insulin", "prompt": "Who discovered insulin?", "target_new": "Banting"},
    {"id": "scurvy", "prompt": "Which vitamin prevents scurvy?", "target_new": "Vitamin C"},
]


QUESTIONS = ["What treats asthma?", "Who found insulin?", "What prevents scurvy?", "What causes gout?",
             "Which nerve is cut?", "What lowers fever?", "Which gland makes TSH?"]


def make_records(n: int = 7) -> list[EditRecord]:
    return [EditRecord(f"r{i}", q, f"answer {i}", "old", (f"Tell me: {q.lower()}",), f"subject{i % 2}",
                       {"locality": LocalityProbe(f"Unrelated question {i}?", f"reply {i}")})
            for i, q in enumerate(QUESTIONS[:n])]


def check_growth_grows_and_resumes(method, tiny_lm, tmp_path):
    """Memory growth of a method that edits in order (GRACE, WISE, OneAtATime) on 7 records, 3
    scored: growing reproduces building each size from scratch, a size adds only its new edits,
    the method is restored afterwards, and a rerun loads the saved state and adds the rest.
    Returns the rows of the first run (sizes 3, 5) and of the resumed one (3, 5, 7)."""
    from medrek.editor import EditedModel
    from medrek.evaluate import unedited_locality_predictions
    from medrek.evaluate.growth import run_growth

    records = make_records(7)
    reference = unedited_locality_predictions(EditedModel(*tiny_lm), records[:3])
    edited: list[int] = []
    plain_edit = method.edit
    method.edit = lambda recs: (edited.append(len(recs)), plain_edit(recs))  # count what each size edits

    # one size at a time, each from scratch: what growing must reproduce
    scratch = [run_growth(method, records[:3], records, [n], reference, tmp_path / f"scratch{n}.csv", progress=False)
               for n in (3, 5, 7)]
    edited.clear()
    path, state = tmp_path / "grown.csv", tmp_path / "state"
    first = run_growth(method, records[:3], records, [3, 5], reference, path, progress=False, state_dir=state)
    assert edited == [3, 2]  # the second size adds 2 edits to the 3 held
    assert len(method.history) == 0  # restored afterwards
    edited.clear()
    grown = run_growth(method, records[:3], records, [3, 5, 7], reference, path, progress=False, state_dir=state)
    assert edited == [2]  # a rerun loads the 5 saved edits and adds the last 2
    for n, alone in zip((3, 5, 7), scratch):
        rows = grown[grown["stored"] == n].reset_index(drop=True)
        assert rows[["efficacy", "generality", "locality"]].equals(alone[["efficacy", "generality", "locality"]])
    return first, grown
