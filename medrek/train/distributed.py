"""Train notebook 02's editors on several processes (GPUs, or CPU processes for a check).

    accelerate launch --multi_gpu --num_processes 2 -m medrek.train.distributed params/small.yaml \\
        --run-dir runs/small-2gpu [--methods medrek] [--set steps=600 precision=bf16]

The parameters are notebook 02's: its defaults, then the params file's ``02_train_medrek``
section, then ``--set`` (values in YAML). ``accelerate`` starts the processes and their group
(NCCL on GPUs; on a machine without GPUs the same command starts gloo CPU processes). Every
process draws the same global batch and computes the LM rows of its share of the records
(``medrek.train.parallel``): the losses equal a one-process run with the same ``batch_size``.
Only the first process writes the run directory (logs, checkpoints, ``train_summary.csv``);
checkpoints resume exactly with the same number of processes. Gate calibration, figures and
the validation tables stay in notebook 02, which finds these checkpoints when run on the same
``run_dir`` afterwards (``resume: true``).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..config import check_keys, load_params, repo_path

__all__ = ["notebook_02_parameters", "main"]

NOTEBOOK = "02_train_medrek"


def notebook_02_parameters(params_path: str | Path | None, run_dir: str | Path,
                           overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Notebook 02's parameter values for a run: declared defaults < params file < ``overrides``."""
    from ..pipeline import NOTEBOOKS_DIR, notebook_parameters

    declared = notebook_parameters(Path(NOTEBOOKS_DIR) / f"{NOTEBOOK}.ipynb")
    values = {name: ast.literal_eval(spec["default"]) for name, spec in declared.items()}
    if params_path is not None:
        section = load_params(params_path).for_notebook(NOTEBOOK, run_dir)
        check_keys(section, declared, f"{params_path}: notebooks.{NOTEBOOK}")
        values.update(section)
    check_keys(overrides or {}, declared, "--set")
    values.update(overrides or {})
    values["run_dir"] = str(run_dir)
    return values


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("params", nargs="?", help="params YAML (its 02_train_medrek section); none: the defaults")
    parser.add_argument("--run-dir", required=True, help="run directory (relative: from the repository root)")
    parser.add_argument("--methods", nargs="+", help="train these presets (default: the params' methods)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override parameters (YAML values)")
    args = parser.parse_args(argv)

    import torch
    from accelerate import Accelerator

    from ..io import write_csv, write_json
    from ..models.registry import load_causal_lm
    from ..rundir import RunDir
    from .parallel import ProcessGroup, SingleProcess
    from .trainer import Trainer, configs_from_parameters, init_from_parameters, records_from_parameters

    run_dir = repo_path(args.run_dir)
    overrides = _overrides(args.set)
    if args.methods:
        overrides["methods"] = args.methods
    values = notebook_02_parameters(args.params, run_dir, overrides)
    if args.methods:  # settings of the presets left out do not apply
        values["method_settings"] = {m: v for m, v in (values.get("method_settings") or {}).items() if m in args.methods}
    accelerator = Accelerator(cpu=values["device"] == "cpu")
    group = ProcessGroup() if accelerator.num_processes > 1 else SingleProcess()
    if values["device"] != "cpu":
        values["device"] = str(accelerator.device)  # this process's GPU
    if values.get("threads"):
        torch.set_num_threads(values["threads"])
    run = RunDir.create(run_dir) if group.is_main else None  # the first process holds the run lock
    if run is not None:
        write_json(run.metrics / "train_distributed_parameters.json", {**values, "processes": group.world_size})
    group.barrier()
    configs = configs_from_parameters(values)
    train_records, valid_records, data = records_from_parameters(values)
    lm_pair = load_causal_lm(values["lm"], seed=values["seed"], device=values["device"])
    summaries = []
    for method in values["methods"]:
        trainer = Trainer(configs[method], train_records, valid_records, run_dir, lm=lm_pair, data=data, group=group,
                          init_from=init_from_parameters(values, method))
        summary = trainer.train(resume=values["resume"])
        summaries.append({"method": method, **summary})
        if group.is_main:
            print(method, summaries[-1], flush=True)
    if run is not None:
        import pandas as pd

        write_csv(run.metrics / "train_summary.csv", pd.DataFrame(summaries))
        run.release()
    group.barrier()
    return summaries


if __name__ == "__main__":
    main()
