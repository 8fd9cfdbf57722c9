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
from typing import Any, Collection, Mapping, Sequence

import torch
from safetensors.torch import save_file

from ..io import CheckpointError, atomic_folder, read_checkpoint_meta, read_tensors, recover_folder, write_json

__all__ = ["save_training_checkpoint", "load_training_state", "optimizer_tensors", "restore_optimizer", "check_resumable",
           "init_fingerprint"]

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


def check_resumable(folder: Path, meta: Mapping[str, Any], config: Mapping[str, Any], defaults: Mapping[str, Any],
                    may_change: Collection[str], data: Mapping[str, Any]) -> None:
    """Refuse to resume from the checkpoint ``folder`` (its ``trainer.json`` is ``meta``) with
    another training ``config`` (fields outside ``may_change``; a field newer than the
    checkpoint counts as its default in ``defaults``) or on other ``data``, naming the fields."""
    saved = {**defaults, **meta["config"]}
    diff = sorted(k for k in config if k not in may_change and saved[k] != config[k])
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {config[k]!r}" for k in diff[:5])
        raise CheckpointError(f"{folder}: checkpoint from another training config ({details})")
    saved_data = meta.get("data") or {}  # absent in checkpoints older than this check
    diff = sorted(k for k in saved_data if saved_data[k] != data.get(k))
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved_data[k]!r} vs now {data.get(k)!r}" for k in diff)
        raise CheckpointError(f"{folder}: checkpoint trained on other data ({details}); resume with the data "
                              "it was trained on, or start a new run (resume: false or another run_dir)")


def init_fingerprint(folder: Path, config: Any, must_match: Sequence[str]) -> str:
    """The fingerprint of the saved editor at ``folder`` a run starts from (``init_from``),
    refused by field if it differs from ``config`` in any of ``must_match``."""
    from ..editor import check_weights, checkpoint_fingerprint, read_editor_config

    meta, saved = read_editor_config(folder)
    check_weights(folder, meta)  # a corrupt file is refused here, as Editor.load refuses it
    diff = [f"{k}: {getattr(saved, k)!r} vs {getattr(config, k)!r}" for k in must_match
            if getattr(saved, k) != getattr(config, k)]
    if diff:
        raise CheckpointError(f"{folder}: init_from an editor of another kind ({'; '.join(diff)})")
    return checkpoint_fingerprint(folder)
