"""An :class:`~medrek.editor.Editor` on disk: ``editor.safetensors`` (its trained weights),
``editor.json`` (its config, sizes and checksums) and, if asked, its memory folder.

Saving stages every part under a temporary name and commits them with a journal
(:func:`medrek.io.commit_staged`), so a kill leaves the previous editor or the new one; loading
refuses, by file and field, a config that is not an editor's, weights whose sha256 differs, an LM
other than the one trained with, and a memory another editor (or another save) made.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from .config import check_keys
from .editor_config import RETRIEVAL_DEFAULTS, EditorConfig
from .io import (CheckpointError, check_replaceable, commit_staged, file_sha256, finish_staged, folder_lock,
                 read_checkpoint_meta, read_tensors, resolve_link, staged_name, writable, write_json)
from .memory import EditMemory

if TYPE_CHECKING:
    from .editor import Editor

__all__ = ["FORMAT", "adopt_memory", "check_saved_together", "check_weights", "checkpoint_fingerprint",
           "finish_interrupted_save", "load_editor", "load_editor_weights", "read_editor_config", "save_editor",
           "weights_fingerprint"]

FORMAT = "medrek.Editor/1"


def check_saved_together(meta: Mapping[str, Any], memory: EditMemory, meta_path: Path, memory_path: Path) -> None:
    """Refuse a memory folder that is not the one saved with the editor's weights (editor.json
    names its content checksum; editors saved before that name none and are not checked)."""
    if "memory_sha256" not in meta:
        return
    if meta["memory_sha256"] is None:
        raise CheckpointError(f"{meta_path}: the editor was last saved without its memory, so {memory_path} is left "
                              "from an earlier save (edits made since are not in it); load with with_memory=False, "
                              "or save with with_memory=True")
    if memory.content_sha256 != meta["memory_sha256"]:
        raise CheckpointError(f"{memory_path}: not the memory saved with these weights ({meta_path} names memory "
                              f"{str(meta['memory_sha256'])[:12]}, the folder holds {str(memory.content_sha256)[:12]})")


def weights_fingerprint(config: EditorConfig, tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of an editor's config and trained weights (:meth:`Editor.fingerprint`)."""
    config = asdict(config)
    for name, default in RETRIEVAL_DEFAULTS.items():  # settings added later: absent at their default,
        if config[name] == default:  # so editors, memories and results saved before them keep their fingerprint
            del config[name]
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8"))
    for name, value in sorted(tensors.items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode("utf-8"))
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def checkpoint_fingerprint(folder: str | os.PathLike[str]) -> str:
    """The fingerprint of a saved editor, read from its files without loading any model (the
    identity its results and memories record)."""
    _, config = read_editor_config(Path(folder))
    return weights_fingerprint(config, read_tensors(Path(folder) / "editor.safetensors"))


def read_editor_config(folder: Path) -> tuple[dict[str, Any], EditorConfig]:
    """``editor.json``'s contents and its config, refused by file and field if not ours."""
    meta_path = folder / "editor.json"
    meta = read_checkpoint_meta(meta_path, FORMAT, "editor checkpoint")
    config = {"chat_template": "none", **meta["config"]}  # editors saved before the setting asked plainly
    check_keys(config, [f.name for f in fields(EditorConfig)], f"{meta_path}: config")
    try:
        return meta, EditorConfig(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from None


EDITOR_NAMES = frozenset({"editor.json", "editor.safetensors", "memory"})


def _check_editor_folder(folder: Path, with_memory: bool) -> None:
    """Refuse a save whose target names are taken by something else (a folder named
    ``editor.json``, a file named ``memory``, a memory folder holding a user's files)."""
    for name in EDITOR_NAMES:
        target = folder / name
        if target.exists() and (target.is_dir() != (name == "memory")):
            raise FileExistsError(f"{target}: is a {'folder' if target.is_dir() else 'file'}, where the editor's "
                                  f"{name} would go; nothing was written")
    if with_memory:
        check_replaceable(folder / "memory", {"memory.json", "memory.safetensors"})  # a user's files there stay


def finish_interrupted_save(folder: Path) -> None:
    """Before a load: finish an editor save that a kill interrupted after its commit, or clear the
    parts of one killed before it. A read-only folder is never written: an interrupted save
    there is reported instead."""
    from .io import JOURNAL

    if not writable(folder):
        if (folder / JOURNAL).exists():
            raise CheckpointError(f"{folder}: a save was interrupted after it committed and the folder is read-only, "
                                  "so it cannot be finished; copy the folder somewhere writable and load it there")
        return
    if (folder / JOURNAL).exists() or any(folder.glob(".staged-*")):
        with folder_lock(folder):
            finish_staged(folder)


def check_weights(folder: Path, meta: Mapping[str, Any]) -> Path:
    """``folder/editor.safetensors``, refused if its sha256 is not the one ``editor.json``
    records (editors saved before the checksum record none and are not checked)."""
    weights = folder / "editor.safetensors"
    if meta.get("weights_sha256") and file_sha256(weights) != meta["weights_sha256"]:
        raise CheckpointError(f"{weights}: sha256 differs from the one recorded in {folder / 'editor.json'} (a corrupt "
                              "file, or weights from another save)")
    return weights


def save_editor(editor: "Editor", folder: str | os.PathLike[str], with_memory: bool = False) -> Path:
    """``folder/editor.safetensors`` + ``folder/editor.json`` (config, sizes and the sha256
    of the weights file) and, if asked, the memory folder ``folder/memory`` tagged with
    :meth:`fingerprint`, as one step: every part is written under a staged name first, then
    a journal commits them (:func:`medrek.io.commit_staged`), so a kill or a full disk at any
    point leaves the previous editor or the new one, memory included. Saves of one folder
    from threads or processes wait for each other (an OS lock)."""
    folder = resolve_link(folder)
    if folder.is_symlink() and not folder.exists():
        raise FileNotFoundError(f"{folder}: a symbolic link that leads nowhere (a loop, or a missing target); "
                                "nothing was written")
    folder.mkdir(parents=True, exist_ok=True)
    _check_editor_folder(folder, with_memory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in editor.trainable_state_dict().items()}
    with folder_lock(folder):
        finish_staged(folder)  # a save a kill interrupted: finished or cleared first
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        moves: dict[str, str] = {}
        memory_sha256 = None
        try:
            if with_memory:  # first: a memory that cannot be saved changes nothing
                editor.memory.owner, editor.memory.lm_identity = editor.fingerprint(), editor.model.identity()
                moves["memory"] = staged_name(tag, "memory")
                editor.memory.save(folder / moves["memory"], lock=False)
                memory_sha256 = editor.memory.content_sha256
            moves["editor.safetensors"] = staged_name(tag, "editor.safetensors")
            save_file(tensors, str(folder / moves["editor.safetensors"]))
            os.chmod(folder / moves["editor.safetensors"], 0o644)  # an ordinary readable file, as before
            weights_sha256 = file_sha256(folder / moves["editor.safetensors"])
            moves["editor.json"] = staged_name(tag, "editor.json")
            write_json(folder / moves["editor.json"], {
                "format": FORMAT, "config": asdict(editor.config), "lm_hidden": editor.model.hidden_size,
                "encoder_hidden": editor.encoder.config.hidden_size, "lm_identity": editor.model.identity(),
                "weights_sha256": weights_sha256,
                "memory_sha256": memory_sha256})  # None: saved without its memory
        except BaseException as exc:
            finish_staged(folder)  # no journal yet: the staged parts go, the previous editor stays
            if isinstance(exc, OSError) and exc.filename is None:
                raise OSError(exc.errno, f"{folder}: the editor could not be saved ({exc.strerror or exc}); "
                              "the previous version, if any, is untouched") from exc
            raise
        commit_staged(folder, moves)
    return folder


def load_editor_weights(editor: "Editor", tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Load trained weights, refusing missing, unexpected or mis-shaped tensors by name."""
    own = editor.trainable_state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: does not fit this editor (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, value in tensors.items():
        if value.shape != own[name].shape:
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(value.shape)}, "
                                  f"this editor needs {tuple(own[name].shape)}")
    enc = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    editor.encoder.load_state_dict(enc, strict=False)
    editor.prompt_encoder.load_state_dict({k[len("prompt_encoder."):]: v for k, v in tensors.items()
                                         if k.startswith("prompt_encoder.")})
    if editor.verifier is not None:
        editor.verifier.load_stored_state_dict({k[len("verifier."):]: v for k, v in tensors.items()
                                              if k.startswith("verifier.")})
    if editor.config.train_backbone:  # cached features came from the old backbone
        editor.encoder.clear_cache()
    editor.memory = editor.new_memory()


def load_editor(cls: type["Editor"], folder: str | os.PathLike[str], *, device: str = "cpu",
                lm: tuple[nn.Module, Any] | None = None, with_memory: bool = False,
                **overrides: Any) -> "Editor":
    """Rebuild an editor from ``save``; the LM may be passed in to avoid reloading it."""
    folder = Path(folder)
    meta_path = folder / "editor.json"
    if folder.is_dir():
        finish_interrupted_save(folder)
    meta, config = read_editor_config(folder)
    weights = check_weights(folder, meta)
    editor = cls.build(config, device=device, lm=lm, **overrides)
    if editor.model.hidden_size != meta["lm_hidden"]:
        raise CheckpointError(f"{meta_path}: trained for an LM of hidden size {meta['lm_hidden']}, "
                              f"got {editor.model.hidden_size}")
    if meta.get("lm_identity") and meta["lm_identity"] != editor.model.identity():  # editors saved before: none
        raise CheckpointError(f"{meta_path}: saved over another LM than the one given (LM identity "
                              f"{meta['lm_identity'][:12]} vs {editor.model.identity()[:12]}: same name and size, "
                              "other config or weights); load it with the LM it was trained with")
    tensors = read_tensors(weights)
    editor.load_weights(tensors, str(weights))
    if with_memory:
        memory = EditMemory.load(folder / "memory", key_dim=editor.config.key_dim, n_tokens=editor.config.n_tokens,
                                 lm_hidden=editor.model.hidden_size)
        editor.memory = editor.adopt_memory(memory, folder / "memory")  # another editor's: says what differs
        check_saved_together(meta, memory, meta_path, folder / "memory")  # this editor's, but another save
    return editor


def adopt_memory(editor: "Editor", memory: EditMemory, source: str | os.PathLike[str]) -> EditMemory:
    """``memory`` if this editor made it (same fingerprint and gate settings), else an error
    naming what differs: keys and prompts from another editor would retrieve wrongly."""
    own = asdict(editor.new_memory().config)
    if memory.config.prompt_store == "vectors":  # saved before token-id memories: its stored prompts still serve
        own["prompt_store"] = "vectors"
    diff = {k: (v, own.get(k)) for k, v in asdict(memory.config).items() if own.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: memory {a!r} vs editor {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"{source}: memory saved with other settings than this editor's ({details})")
    own_fingerprint = editor.fingerprint()
    if memory.lm_identity is not None and memory.lm_identity != editor.model.identity():
        raise CheckpointError(f"{source}: memory was made over another LM (identity {memory.lm_identity[:12]} vs "
                              f"{editor.model.identity()[:12]}); its prompts were built for that LM")
    if memory.owner != own_fingerprint:
        raise CheckpointError(f"{source}: memory was made by another editor (fingerprint {str(memory.owner)[:12]} "
                              f"vs this editor's {own_fingerprint[:12]}); its keys and prompts do not fit")
    memory.verify = editor._verify()
    memory.build_prompts = editor.build_prompts
    return memory
