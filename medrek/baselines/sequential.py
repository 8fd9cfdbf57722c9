"""The sequential protocol for a parameter editor: one edit at a time, each on the weights the
earlier ones left (as EasyEdit's sequential editing runs FT-L and MEMIT).

``FTLMethod.edit(records)`` and ``MEMITMethod.edit(records)`` edit a list as one batch (one
fine-tune, one least-squares update). :class:`OneAtATime` wraps either so that ``edit``
applies the requests one by one instead; editing A then B then equals editing [A, B], so
memory growth (:func:`~medrek.evaluate.growth.run_growth`) grows it as it grows GRACE and
WISE, and saves and resumes its state (the edited weights, safetensors) after every size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from ..data.records import EditRecord
from ..editor import ScoreResult
from ..io import CheckpointError, atomic_folder, read_checkpoint_meta, read_tensors, write_json
from .base import EditMethod, ParameterEditingMethod, ReplayedEdits, edits_json

__all__ = ["OneAtATime", "one_at_a_time"]

FORMAT = "medrek.OneAtATime/1"


class OneAtATime(EditMethod):
    """``inner`` (a :class:`ParameterEditingMethod`) edited one request at a time, in order.

    Its name is the inner method's; its identity adds ``"edits": "one at a time"``, so rows
    made this way are never read back as the batch protocol's."""

    edits_in_order = True

    def __init__(self, inner: ParameterEditingMethod) -> None:
        if not isinstance(inner, ParameterEditingMethod):
            raise TypeError(f"OneAtATime wraps a parameter editor (FT-L, MEMIT), not {type(inner).__name__}")
        super().__init__(inner.model)
        self.inner = inner
        self.name = inner.name
        self.history: list[EditRecord] = []

    def identity(self) -> dict[str, Any]:
        return {**self.inner.identity(), "edits": "one at a time"}

    def edit(self, records: Sequence[EditRecord]) -> None:
        for record in records:
            self.inner.edit([record])
            self.history.append(record)

    def restore(self) -> None:
        self.inner.restore()
        self.history.clear()

    def score(self, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32,
              max_length: int | None = None) -> ScoreResult:
        return self.inner.score(prompts, targets, batch_size, max_length)

    def generate(self, texts: Sequence[str], max_new_tokens: int = 32, **kwargs: Any) -> list[str]:
        return self.inner.generate(texts, max_new_tokens, **kwargs)

    # ---- state: the edited weights and the edits so far -----------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """``folder/one_at_a_time.safetensors`` (every weight the edits changed, as it is now) and
        ``folder/one_at_a_time.json`` (method, identity, which weight is which, the edits in
        order), swapped in as one folder."""
        names = {id(p): n for n, p in self.model.lm.named_parameters()}
        touched = {key: (names[id(param)], param) for key, (param, _) in self.inner._originals.items()}
        with atomic_folder(folder) as tmp:
            save_file({qual: param.detach().cpu().contiguous() for qual, param in touched.values()},
                      str(tmp / "one_at_a_time.safetensors"))
            write_json(tmp / "one_at_a_time.json", {
                "format": FORMAT, "method": self.name, "identity": self.identity(),
                "weights": {key: qual for key, (qual, _) in touched.items()},
                "history": edits_json(self.history)})
        return Path(folder)

    def load(self, folder: str | os.PathLike[str]) -> None:
        """Put the LM's weights and the edit history back as saved, refused by file and field if
        another method or other settings saved them."""
        folder = Path(folder)
        meta_path, tensor_path = folder / "one_at_a_time.json", folder / "one_at_a_time.safetensors"
        meta = read_checkpoint_meta(meta_path, FORMAT, "sequential parameter-editing state")
        missing = [k for k in ("method", "identity", "weights", "history") if k not in meta]
        if missing:
            raise CheckpointError(f"{meta_path}: field(s) {missing} missing")
        if meta["method"] != self.name or meta["identity"] != json.loads(json.dumps(self.identity(), default=str)):
            raise CheckpointError(f"{meta_path}: saved by {meta['method']!r} with identity {meta['identity']}, "
                                  f"not this {self.name!r} ({self.identity()})")
        tensors = read_tensors(tensor_path)
        params = dict(self.model.lm.named_parameters())
        for key, qual in meta["weights"].items():
            if qual not in params or qual not in tensors or tensors[qual].shape != params[qual].shape:
                raise CheckpointError(f"{tensor_path}: weight {qual!r} is missing or does not fit this LM")
        self.restore()
        with torch.no_grad():
            for key, qual in meta["weights"].items():
                self.inner._touch(key, params[qual]).copy_(tensors[qual].to(params[qual].device, params[qual].dtype))
        self.history = ReplayedEdits.history_from_json(meta["history"])


def one_at_a_time(method: EditMethod) -> EditMethod:
    """``method`` for the sequential protocol: a parameter editor wrapped in :class:`OneAtATime`;
    a method that already edits in order (GRACE, WISE) or stores edits (the retrieval
    editors, IKE: storing in order equals storing all at once) as it is."""
    return OneAtATime(method) if isinstance(method, ParameterEditingMethod) else method
