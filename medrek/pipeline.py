"""Run the notebooks in order with papermill, into one run directory.

Usage::

    python -m medrek.pipeline params/small.yaml            # -> runs/small/
    python -m medrek.pipeline params/smoke.yaml --run-dir /tmp/x --only 01_build_medversa

Before anything runs, every key of the params file is checked against the ``parameters``
cell of the notebook it feeds, so a typo fails in a second instead of after an hour.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import COMMON_KEYS, Params, ParamsError, check_keys, check_value, load_params
from .io import write_text
from .executed import clean_file
from .rundir import LOCK_OWNER_ENV, NotARunDir, RunDir, RunDirBusy

__all__ = ["NOTEBOOKS_DIR", "notebook_paths", "notebook_parameters", "validate_params", "run_pipeline",
           "check_parameters"]

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def notebook_paths(notebooks_dir: str | os.PathLike[str] = NOTEBOOKS_DIR) -> dict[str, Path]:
    """Stage notebooks (``NN_name.ipynb``) by name, in pipeline order."""
    paths = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    return {p.stem: p for p in paths}


def notebook_parameters(path: str | os.PathLike[str]) -> dict[str, dict]:
    """A notebook's ``parameters`` cell via papermill: name -> ``inferred_type_name`` (the
    annotation), ``default`` and ``help`` (the trailing comment)."""
    import papermill

    params = papermill.inspect_notebook(str(path))
    if not params:
        raise ParamsError(f"{path}: no cell tagged 'parameters'")
    return params


def _check_types(values: Mapping[str, Any], declared: Mapping[str, dict], where: str) -> None:
    for key, value in values.items():
        if key in declared:
            check_value(key, value, declared[key].get("inferred_type_name"), where)


def _check_training(values: Mapping[str, Any], where: str) -> None:
    """Notebook 02's values that a type cannot say: at least 2 edits a step (its contrastive terms
    compare edits), long_edits' fields and every retrieval_stage's settings, before anything runs."""
    from .train.retriever import stage_config

    if isinstance(values.get("batch_size"), int) and values["batch_size"] < 2:
        raise ParamsError(f"{where}: parameter 'batch_size' must be at least 2 (the contrastive terms compare the "
                          f"edits of a step), got {values['batch_size']!r}")
    long_edits = values.get("long_edits")
    if long_edits:
        check_keys(long_edits, ["n", "target_words", "seed"], f"{where}: long_edits")
        for key, low in (("n", 1), ("target_words", 1), ("seed", 0)):
            item = long_edits.get(key)
            if key in long_edits and (not isinstance(item, int) or isinstance(item, bool) or item < low):
                raise ParamsError(f"{where}: long_edits.{key} must be an integer >= {low}, got {item!r}")
    for method, settings in (values.get("retrieval_stage") or {}).items():
        try:
            stage_config(settings or {}, f"{where}: retrieval_stage.{method}")
        except ValueError as exc:
            raise ParamsError(str(exc)) from None


NOTEBOOK_CHECKS = {"02_train_medrek": _check_training}  # checks a parameters cell's annotations cannot state


def validate_params(params: Params, notebooks: dict[str, Path]) -> None:
    """Every section names a known notebook, and every key exists in its parameters cell with a
    value of the annotated type and in range."""
    check_keys(params.notebooks, notebooks, f"{params.path}: notebooks")
    for name, path in notebooks.items():
        declared = notebook_parameters(path)
        missing = [k for k in COMMON_KEYS if k not in declared]
        if missing:
            raise ParamsError(f"{path}: parameters cell lacks the common key(s) {missing}")
        section = params.notebooks.get(name, {})
        check_keys(section, declared, f"{params.path}: notebooks.{name}")
        _check_types({"data_dir": params.data_dir, "seed": params.seed, **section}, declared,
                     f"{params.path}: notebooks.{name}")
        if name in NOTEBOOK_CHECKS:
            NOTEBOOK_CHECKS[name](section, f"{params.path}: notebooks.{name}")


def check_parameters(notebook: str, values: Mapping[str, Any],
                     notebooks_dir: str | os.PathLike[str] = NOTEBOOKS_DIR) -> dict[str, Any]:
    """Check a running notebook's parameters (``globals()``) against its own parameters cell,
    for runs that bypass the pipeline (``papermill -p``, JupyterLab); returns them (only the
    declared names, so other variables of the kernel never pass for parameters)."""
    declared = notebook_parameters(Path(notebooks_dir) / f"{notebook}.ipynb")
    params = {k: values[k] for k in declared if k in values}
    _check_types(params, declared, f"notebook {notebook}")
    if notebook in NOTEBOOK_CHECKS:
        NOTEBOOK_CHECKS[notebook](params, f"notebook {notebook}")
    return params


def run_pipeline(
    params_path: str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None = None,
    only: Sequence[str] | None = None,
    notebooks_dir: str | os.PathLike[str] = NOTEBOOKS_DIR,
    log_output: bool = False,
) -> RunDir:
    """Validate the params, then execute each notebook into ``run_dir/notebooks/``."""
    params = load_params(params_path)
    notebooks = notebook_paths(notebooks_dir)
    if not notebooks:
        raise ParamsError(f"{notebooks_dir}: no stage notebooks found")
    validate_params(params, notebooks)
    if only:
        check_keys(only, notebooks, "--only")
        notebooks = {k: v for k, v in notebooks.items() if k in only}
    run = RunDir.create(run_dir or Path("runs") / params.name)  # takes the run dir's lock
    write_text(run.params, Path(params_path).read_text("utf-8"))
    shared = os.environ.get(LOCK_OWNER_ENV)
    os.environ[LOCK_OWNER_ENV] = str(os.getpid())  # the notebooks' kernels share this process's lock
    try:
        _execute(notebooks, params, run, log_output)
    finally:
        if shared is None:
            os.environ.pop(LOCK_OWNER_ENV, None)
        else:
            os.environ[LOCK_OWNER_ENV] = shared
    return run


def _execute(notebooks: dict[str, Path], params: Params, run: RunDir, log_output: bool) -> None:
    import papermill

    for name, path in notebooks.items():
        start = time.perf_counter()
        print(f"[medrek] {name} -> {run.notebooks / path.name}", flush=True)
        out = run.notebooks / path.name
        if out.resolve() == path.resolve():
            raise NotARunDir(f"{out}: the executed copy would replace the notebook it runs; choose another run_dir")
        tmp = out.with_name(f".{out.stem}.running.ipynb")
        try:
            papermill.execute_notebook(
                str(path), str(tmp), parameters=params.for_notebook(name, run.root.resolve()),
                cwd=str(path.parent), log_output=log_output, progress_bar=False,
            )
        except BaseException:
            if tmp.exists():  # the partly executed copy shows where it failed; the last good one stays
                clean_file(tmp)
                os.replace(tmp, out.with_name(f"{out.stem}.failed.ipynb"))
            raise
        clean_file(tmp)  # progress bars rendered live; the saved copy leaves them out
        os.replace(tmp, out)
        print(f"[medrek] {name} done in {time.perf_counter() - start:.1f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medrek.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("params", help="params YAML, e.g. params/small.yaml")
    parser.add_argument("--run-dir", default=None, help="default: runs/<params name>")
    parser.add_argument("--only", nargs="*", default=None, help="notebook names to run (default: all)")
    parser.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
    args = parser.parse_args(argv)
    try:
        run = run_pipeline(args.params, args.run_dir, args.only, log_output=args.log_output)
    except (ParamsError, RunDirBusy, NotARunDir) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[medrek] run directory: {run.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
