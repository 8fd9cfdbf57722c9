"""What an :class:`~medrek.editor.Editor` is made of: :class:`EditorConfig` (saved next to its
weights) and :func:`build_modules`, which loads and initialises the modules it names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import check_fields
from .memory import SCORES
from .methods import get_preset
from .models.edited_lm import EditedModel, check_chat_template, resolve_chat_template
from .models.encoder import KnowledgeEncoder, KnowledgeEncoderConfig
from .models.prompt import PromptEncoder, PromptEncoderConfig
from .models.registry import load_causal_lm, load_encoder
from .models.verifier import VERIFIER_KINDS, QuestionVerifier, VerifierConfig

__all__ = ["EditorConfig", "RETRIEVAL_DEFAULTS", "build_modules"]


@dataclass
class EditorConfig:
    """Everything needed to rebuild an editor's modules (saved next to its weights)."""

    method: str = "medrek"
    lm: str = "smollm2-135m"
    encoder: str = "minilm-l6"
    key_dim: int = 4096
    n_tokens: int = 3
    n_heads: int = 8
    n_prototype_tokens: int = 10
    max_length: int = 128
    train_backbone: bool = False
    index: str = "flat"
    min_similarity: float | None = None
    min_margin: float | None = None  # fire only if top-1 beats the prototype by this much (calibrate_gate sets it)
    chat_template: str = "auto"  # auto: questions go through the LM tokenizer's chat template, if any; none: plain text
    n_prefix_tokens: int = 4  # learned frame before the edit text (lm_embedding prompt encoders)
    n_suffix_tokens: int = 2  # learned frame after it
    score: str = "dot"  # retrieval score: dot (q.k / sqrt(d), the paper) | cosine
    exact_match: bool = False  # a question equal to a stored prompt (case, spacing folded) always fires it
    prototype_gate: bool = True  # the top-1 must beat the prototype's score (the paper's gate)
    verify_k: int = 0  # > 0: a QuestionVerifier reads the top verify_k edits (train.retriever trains it)
    min_verified: float = 0.5  # the verifier's probability an edit needs to fire
    verifier_layers: int = 2  # top encoder layers of the verifier that are trained and saved
    verifier_kind: str = "top-layers"  # top-layers | cross-encoder (medrek.models.verifier)
    query_prefix: str = ""  # an instruction every question starts with, left out of what retrieval reads

    def __post_init__(self) -> None:
        check_fields(self, EditorConfig, "EditorConfig")  # types and ranges, by field name
        get_preset(self.method)
        check_chat_template(self.chat_template)
        if self.score not in SCORES:
            raise ValueError(f"EditorConfig.score must be one of {SCORES}, got {self.score!r}")
        if self.min_verified > 1:
            raise ValueError(f"EditorConfig.min_verified is a probability, got {self.min_verified!r}")
        if self.verifier_kind not in VERIFIER_KINDS:
            raise ValueError(f"EditorConfig.verifier_kind must be one of {VERIFIER_KINDS}, got {self.verifier_kind!r}")


RETRIEVAL_DEFAULTS = {name: getattr(EditorConfig, name) for name in
                      ("score", "exact_match", "prototype_gate", "verify_k", "min_verified", "verifier_layers",
                       "verifier_kind", "query_prefix")}


def build_modules(config: EditorConfig, *, seed: int = 0, device: str = "cpu",
                  lm: tuple[nn.Module, Any] | None = None
                  ) -> tuple[EditedModel, KnowledgeEncoder, PromptEncoder, QuestionVerifier | None]:
    """The modules ``config`` names: the LM (loaded, or ``lm`` as given) in an :class:`EditedModel`,
    the knowledge encoder over the released sentence encoder, the prompt encoder initialised with
    ``seed`` and, with ``verify_k``, a verifier over a copy of the sentence encoder."""
    lm_model, lm_tok = lm or load_causal_lm(config.lm, seed=seed, device=device)
    backbone, enc_tok = load_encoder(config.encoder, seed=seed, device=device)
    torch.manual_seed(seed)
    enc_cfg = KnowledgeEncoderConfig(config.encoder, config.key_dim, config.n_prototype_tokens,
                                     config.max_length, config.train_backbone)
    encoder = KnowledgeEncoder(backbone, enc_tok, enc_cfg).to(device)
    model = EditedModel(lm_model, lm_tok, resolve_chat_template(lm_tok, config.chat_template))
    prompt_cfg = PromptEncoderConfig(get_preset(config.method).prompt_kind, config.key_dim,
                                     model.hidden_size, config.n_tokens, config.n_heads,
                                     encoder.config.hidden_size, config.n_prefix_tokens, config.n_suffix_tokens)
    prompt_encoder = PromptEncoder.from_config(prompt_cfg).to(device)
    if prompt_encoder.needs_lm_tokens:  # the learned frame starts as IKE's text frame
        prompt_encoder.initialise_frame(model.embed_texts(["New fact:"], prompt_cfg.n_prefix).states[0],
                                        model.embed_texts([".\n"], prompt_cfg.n_suffix).states[0])
    verifier = None
    if config.verify_k > 0:  # a copy of the released sentence encoder, its top layers to be trained
        verifier = QuestionVerifier(backbone, enc_tok, VerifierConfig(config.verifier_layers, config.max_length,
                                                                      config.verify_k, config.verifier_kind)).to(device)
    return model, encoder, prompt_encoder, verifier
