"""Training checkpoints: editor weights + optimizer state + RNG state, safetensors and JSON only.

A checkpoint folder holds ``editor.safetensors`` / ``editor.json`` (loadable by
:meth:`medrek.Editor.load`) plus ``trainer.safetensors`` (optimizer moments, RNG state, the
current epoch's permutation) and ``trainer.json`` (step, position, config, scheduler). The
folder is written next to its destination and swapped in by renames
(:func:`medrek.io.atomic_folder`), so a killed run never leaves a half-written checkpoint, and
the next start finishes or undoes an interrupted swap. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..io import atomic_folder, read_checkpoint_meta, read_tensors, recover_folder, write_json

__all__ = ["save_training_checkpoint", "load_training_state", "optimizer_tensors", "restore_optimizer"]

FORMAT = "medrek.TrainerState/1"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer's state into named tensors plus JSON-able metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_checkpoint(folder: str | os.PathLike[str], editor, optimizer: torch.optim.Optimizer,
                             extra_tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a complete checkpoint folder atomically (:func:`medrek.io.atomic_folder`): a crash
    at any point leaves the previous checkpoint or the new one, never neither."""
    with atomic_folder(folder) as tmp:
        editor.save(tmp)
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        save_file({**opt_tensors, **{k: v.contiguous() for k, v in extra_tensors.items()}}, str(tmp / "trainer.safetensors"))
        write_json(tmp / "trainer.json", {"format": FORMAT, "optimizer": opt_meta, **meta})
    return Path(folder)


def load_training_state(folder: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``trainer.safetensors`` / ``trainer.json``; refuse anything that is not ours."""
    folder = recover_folder(folder)  # a save interrupted between its renames
    meta = read_checkpoint_meta(folder / "trainer.json", FORMAT, "training checkpoint")
    return read_tensors(folder / "trainer.safetensors"), meta
