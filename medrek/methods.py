"""Method presets: how an edit is keyed and which prompt encoder turns it into prompt tokens.

* ``medrek``: key = q(prompt) (shared query-key space), value = k(prompt + " " + target),
  the paper's attention prompt encoder;
* ``recipe``: key = value = k(prompt + " " + target), RECIPE's MLP prompt encoder;
* ``medrek-no-shared-qk``: RECIPE-style keys with the attention prompt encoder (ablation);
* ``medrek-no-attention``: shared keys with a linear prompt encoder (ablation);
* ``token_attention``: shared keys with the token-level attention prompt encoder (kit variant);
* ``medrek-lm-embedding``: shared keys; the prompt is the LM's own embeddings of the edit text in
  a learned frame (the kit's working variant: see ``studies/capacity_ladder.py`` for why);
* ``recipe-lm-embedding``: RECIPE's key k(prompt + target) with the working variant's prompt
  encoder: ``medrek-lm-embedding`` without the shared query-key space (its twin in the claims table).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MethodPreset", "PRESETS", "get_preset", "edit_text"]


@dataclass(frozen=True)
class MethodPreset:
    name: str
    shared_query_key: bool  # key = q(prompt) instead of k(prompt + target)
    prompt_kind: str  # PromptEncoder kind


PRESETS: dict[str, MethodPreset] = {
    p.name: p
    for p in (
        MethodPreset("medrek", True, "attention"),
        MethodPreset("recipe", False, "mlp"),
        MethodPreset("medrek-no-shared-qk", False, "attention"),
        MethodPreset("medrek-no-attention", True, "linear"),
        MethodPreset("token_attention", True, "token_attention"),
        MethodPreset("medrek-lm-embedding", True, "lm_embedding"),
        MethodPreset("recipe-lm-embedding", False, "lm_embedding"),
    )
}


def get_preset(name: str) -> MethodPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def edit_text(prompt: str, target: str) -> str:
    """The text the knowledge head reads for an edit."""
    return f"{prompt} {target}"
