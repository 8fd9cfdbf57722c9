"""Every method the kit evaluates, behind one interface (:class:`EditMethod`).

``build_method(name, ...)`` makes any of: ``unedited``; the retrieval editors ``medrek``,
``recipe``, ``medrek-no-shared-qk``, ``medrek-no-attention``, ``token_attention`` (from a
trained checkpoint); ``ike`` (in-context editing with a trained retriever); and the
parameter-editing baselines ``ft-l`` and ``memit``; and the lifelong editor ``grace`` (a
codebook at one layer) and ``wise`` (a routed side copy of one FFN projection), the LM's
weights untouched by both. :func:`one_at_a_time` turns FT-L or MEMIT into their sequential
form (one edit at a time, on the weights the earlier edits left), for memory growth.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from ..config import check_settings
from ..editor import EditedModel, Editor, resolve_chat_template
from ..methods import PRESETS
from .base import EditMethod, ParameterEditingMethod, RetrievalMethod, UneditedMethod
from .ft import FTConfig, FTLMethod
from .grace import GRACEConfig, GRACEMethod
from .ike import InContextMethod
from .memit import MEMITConfig, MEMITMethod
from .sequential import OneAtATime, one_at_a_time
from .wise import WISEConfig, WISEMethod, locality_pairs

__all__ = ["EditMethod", "ParameterEditingMethod", "RetrievalMethod", "UneditedMethod", "FTConfig", "FTLMethod",
           "GRACEConfig", "GRACEMethod", "InContextMethod", "MEMITConfig", "MEMITMethod", "OneAtATime", "one_at_a_time", "WISEConfig", "WISEMethod", "locality_pairs",
           "METHODS", "build_method", "config_from"]

METHODS = ("unedited", *PRESETS, "ike", "ft-l", "memit", "grace", "wise")


def config_from(cls, values: Mapping[str, Any] | None, where: str):
    """A dataclass config from a params mapping; unknown keys are refused by name."""
    values = dict(values or {})
    check_settings(values, cls, where)
    return cls(**values)


def build_method(name: str, lm: tuple[Any, Any], *, checkpoints: Mapping[str, str | os.PathLike[str]] | None = None,
                 ike_retriever: str = "medrek", ft: Mapping[str, Any] | None = None,
                 memit: Mapping[str, Any] | None = None, grace: Mapping[str, Any] | None = None,
                 wise: Mapping[str, Any] | None = None, irrelevant: Sequence[tuple[str, str]] = (),
                 memit_texts: Sequence[str] = (), lm_name: str = "lm",
                 cache_dir: str | os.PathLike[str] | None = None, device: str = "cpu",
                 chat_template: str = "none",
                 editor_settings: Mapping[str, Mapping[str, Any]] | None = None) -> EditMethod:
    """Build method ``name`` on the loaded ``lm`` (model, tokenizer), shared by all methods.

    ``checkpoints`` maps a retrieval method's name to its trained editor folder
    (``Editor.save``); ``ike`` uses the one of ``ike_retriever``. ``chat_template`` (auto | none)
    is how every method's LM is asked; a trained editor must have been trained the same way.
    ``editor_settings`` maps a retrieval method's name to :class:`~medrek.EditorConfig` fields
    that override its saved ones at load (e.g. ``{"n_tokens": 518, "exact_match": True}``); the
    editor's fingerprint, and so every result row's signature, then says so. ``ft``, ``memit``,
    ``grace`` and ``wise`` are the baselines' settings (their config dataclasses, keys checked by
    name); ``irrelevant``: the (question, answer) pairs WISE keeps its side memory quiet on.
    """
    checkpoints = dict(checkpoints or {})
    editor_settings = dict(editor_settings or {})
    use_template = resolve_chat_template(lm[1], chat_template)

    def editor(method: str) -> Editor:
        if method not in checkpoints:
            raise ValueError(f"method {name!r} needs a trained {method!r} editor: none given in checkpoints "
                             f"(have {sorted(checkpoints)})")
        loaded = Editor.load(checkpoints[method], lm=lm, device=device, **dict(editor_settings.get(method, {})))
        if loaded.model.chat_template != use_template:
            raise ValueError(f"{checkpoints[method]}: this {method!r} editor was trained with chat_template="
                             f"{loaded.config.chat_template!r}, but this evaluation uses chat_template={chat_template!r}: "
                             f"retrain it, or evaluate with the setting it was trained with")
        return loaded

    def plain() -> EditedModel:
        return EditedModel(*lm, chat_template=use_template)

    if name == "unedited":
        return UneditedMethod(plain())
    if name in PRESETS:
        return RetrievalMethod(editor(name), name)
    if name == "ike":
        return InContextMethod(editor(ike_retriever))
    if name == "ft-l":
        return FTLMethod(plain(), config_from(FTConfig, ft, "ft-l settings"))
    if name == "memit":
        return MEMITMethod(plain(), memit_texts, config_from(MEMITConfig, memit, "memit settings"),
                           lm_name=lm_name, cache_dir=cache_dir)
    if name == "grace":
        return GRACEMethod(plain(), config_from(GRACEConfig, grace, "grace settings"))
    if name == "wise":
        return WISEMethod(plain(), irrelevant, config_from(WISEConfig, wise, "wise settings"))
    raise ValueError(f"unknown method {name!r}; expected one of {list(METHODS)}")
