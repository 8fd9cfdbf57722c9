"""The notebooks as users meet them: documented parameters, defaults that are the small params,
and papermill from the repository root with nothing but a limit."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from medrek.config import REPO_ROOT, load_params
from medrek.pipeline import notebook_parameters, notebook_paths


def test_every_notebook_parameter_has_a_type_and_a_description():
    for name, path in notebook_paths().items():
        for param, spec in notebook_parameters(path).items():
            assert spec["inferred_type_name"] not in ("None", ""), f"{name}: {param} has no type"
            assert len(spec["help"]) > 10, f"{name}: {param} has no description"


def test_notebook_defaults_are_the_small_params():
    """Stepping through a notebook in JupyterLab trains and evaluates what the README describes:
    every default equals params/small.yaml, unless the parameter's description says how it differs."""
    small = load_params(REPO_ROOT / "params" / "small.yaml")
    for name, path in notebook_paths().items():
        declared = notebook_parameters(path)
        for key, value in small.notebooks.get(name, {}).items():
            default = ast.literal_eval(declared[key]["default"])
            if isinstance(default, tuple):
                default = list(default)
            assert default == value or "small.yaml" in declared[key]["help"], \
                f"{name}: {key} defaults to {default!r}, small.yaml has {value!r}"


@pytest.mark.slow
def test_notebook_03_runs_from_the_repository_root_with_only_a_limit(tmp_path):
    """`papermill notebooks/03_single_edit.ipynb out.ipynb -p limit 5` from the repository root:
    the run goes to runs/interactive (not a folder outside the clone) and uses the committed
    editors, saying so."""
    out = tmp_path / "03.ipynb"
    run_dir = tmp_path / "run"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, "-m", "papermill", "notebooks/03_single_edit.ipynb", str(out), "-p", "limit", "3",
                    "-p", "run_dir", str(run_dir), "-p", "generation_n", "2", "-p", "fluency_n", "1",
                    "-y", "{methods: [unedited, medrek-lm-embedding, recipe, ike]}"],
                   cwd=REPO_ROOT, env=env, check=True, capture_output=True, text=True)
    text = out.read_text()
    assert "checkpoints/small/medrek-lm-embedding (the committed editor)" in text
    assert "checkpoints/small/recipe (the committed editor)" in text
    assert (run_dir / "metrics" / "results.csv").is_file()


def test_notebooks_are_valid_nbformat():
    """A schema error (e.g. cell ids in an nbformat 4.4 notebook) makes Jupyter log errors on every run."""
    import nbformat

    for name, path in notebook_paths().items():
        nbformat.validate(nbformat.read(path, as_version=4))
