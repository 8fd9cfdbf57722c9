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
