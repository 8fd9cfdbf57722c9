"""PromptEncoder: an edit's value vector -> T continuous prompt tokens of the LM's hidden size.

Variants behind one interface (``PromptEncoder.from_config``):

* ``attention`` (the paper's): T query vectors ``query_proj(v)`` attend, with 8-head
  ``nn.MultiheadAttention``, over ``key_proj(v)`` / ``value_proj(v)``. The key/value sequence has
  length 1, so every softmax weight is 1 and the T output tokens are identical
  (``out_proj(W_v value_proj(v))``): the queries have no effect. Implemented faithfully; the
  property is documented and tested.
* ``mlp`` (RECIPE's): ``x = x + ReLU(Linear(x)); Linear(d -> T * H)``.
* ``linear`` (the paper's "without attention prompt encoder" ablation): ``Linear(d -> T * H)``.
* ``token_attention``: the T queries ``query_proj(v)`` attend over the encoder's token-level
  states of the edit text (projected to H), so attention is not degenerate and the T tokens differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .encoder import TokenStates

__all__ = ["PromptEncoderConfig", "PromptEncoder", "PROMPT_KINDS"]

PROMPT_KINDS = ("attention", "mlp", "linear", "token_attention")


@dataclass
class PromptEncoderConfig:
    kind: str = "attention"
    value_dim: int = 4096  # d, the knowledge head's output
    lm_hidden: int = 4096  # H, the LM's embedding size
    n_tokens: int = 3  # T
    n_heads: int = 8
    token_dim: int = 0  # encoder hidden size h (token_attention only)

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"unknown prompt encoder kind {self.kind!r}; choose one of {PROMPT_KINDS}")
        if self.kind in ("attention", "token_attention") and self.lm_hidden % self.n_heads:
            raise ValueError(f"lm_hidden {self.lm_hidden} is not divisible by n_heads {self.n_heads}")
        if self.kind == "token_attention" and self.token_dim <= 0:
            raise ValueError("token_attention needs token_dim (the encoder's hidden size)")

    def to_dict(self) -> dict:
        return asdict(self)


class PromptEncoder(nn.Module):
    """Base class: ``forward(values [B, d], tokens) -> prompts [B, T, H]``."""

    needs_tokens: bool = False

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__()
        self.config = config

    @staticmethod
    def from_config(config: PromptEncoderConfig) -> "PromptEncoder":
        cls = {"attention": AttentionPromptEncoder, "mlp": MLPPromptEncoder,
               "linear": LinearPromptEncoder, "token_attention": TokenAttentionPromptEncoder}[config.kind]
        return cls(config)

    def forward(self, values: torch.Tensor, tokens: TokenStates | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T * H] -> [B, T, H]."""
        return x.view(x.shape[0], self.config.n_tokens, self.config.lm_hidden)


class AttentionPromptEncoder(PromptEncoder):
    """The paper's encoder (single-key attention; see the module docstring)."""

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__(config)
        d, H = config.value_dim, config.lm_hidden
        self.query_proj = nn.Linear(d, config.n_tokens * H)
        self.key_proj = nn.Linear(d, H)
        self.value_proj = nn.Linear(d, H)
        self.attn = nn.MultiheadAttention(H, config.n_heads, batch_first=True)

    def forward(self, values: torch.Tensor, tokens: TokenStates | None = None) -> torch.Tensor:
        queries = self._split(self.query_proj(values))  # [B, T, H]
        keys = self.key_proj(values).unsqueeze(1)  # [B, 1, H]
        vals = self.value_proj(values).unsqueeze(1)  # [B, 1, H]
        out, _ = self.attn(queries, keys, vals, need_weights=False)  # [B, T, H]
        return out


class MLPPromptEncoder(PromptEncoder):
    """RECIPE's encoder."""

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__(config)
        d = config.value_dim
        self.mlp = nn.Linear(d, d)
        self.out = nn.Linear(d, config.n_tokens * config.lm_hidden)

    def forward(self, values: torch.Tensor, tokens: TokenStates | None = None) -> torch.Tensor:
        x = values + torch.relu(self.mlp(values))  # [B, d]
        return self._split(self.out(x))  # [B, T, H]


class LinearPromptEncoder(PromptEncoder):
    """The "without attention" ablation: ``query_proj(v)`` alone."""

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__(config)
        self.query_proj = nn.Linear(config.value_dim, config.n_tokens * config.lm_hidden)

    def forward(self, values: torch.Tensor, tokens: TokenStates | None = None) -> torch.Tensor:
        return self._split(self.query_proj(values))  # [B, T, H]


class TokenAttentionPromptEncoder(PromptEncoder):
    """T value-conditioned queries attend over the edit text's token states."""

    needs_tokens = True

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__(config)
        d, H, h = config.value_dim, config.lm_hidden, config.token_dim
        self.query_proj = nn.Linear(d, config.n_tokens * H)
        self.key_proj = nn.Linear(h, H)
        self.value_proj = nn.Linear(h, H)
        self.attn = nn.MultiheadAttention(H, config.n_heads, batch_first=True)

    def forward(self, values: torch.Tensor, tokens: TokenStates | None = None) -> torch.Tensor:
        if tokens is None:
            raise ValueError("token_attention needs the token states of the edit text")
        queries = self._split(self.query_proj(values))  # [B, T, H]
        keys = self.key_proj(tokens.states)  # [B, L, H]
        vals = self.value_proj(tokens.states)  # [B, L, H]
        padding = tokens.mask == 0  # [B, L], True = ignore
        out, _ = self.attn(queries, keys, vals, key_padding_mask=padding, need_weights=False)
        return out  # [B, T, H]
