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
* ``lm_embedding`` (the kit's working variant): the prompt is the LM's *own* input embeddings of
  the edit text (``prompt + " " + target``), each passed through a zero-initialised residual
  ``e + W e``, framed by learned prefix and suffix tokens::

      [P_1 .. P_p][pad .. pad][e(x_1) .. e(x_n)][S_1 .. S_s]

  T = p + s + the longest edit text of the batch, at most ``n_tokens`` (the text gets at most
  ``text_slots`` = n_tokens - p - s of them: a cap, not a size). Pad slots are all-zero vectors,
  which :class:`~medrek.editor.EditedModel` masks out like left padding. The target's own tokens are then reachable by the LM (a pooled sentence vector
  cannot name a rare drug exactly), and the tokens stay at the embedding scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .encoder import TokenStates

__all__ = ["PromptEncoderConfig", "PromptEncoder", "PROMPT_KINDS", "EditTextCutWarning"]

class EditTextCutWarning(UserWarning):
    """Edit texts longer than an ``lm_embedding`` prompt's text slots lost their first tokens."""


PROMPT_KINDS = ("attention", "mlp", "linear", "token_attention", "lm_embedding")


@dataclass
class PromptEncoderConfig:
    kind: str = "attention"
    value_dim: int = 4096  # d, the knowledge head's output
    lm_hidden: int = 4096  # H, the LM's embedding size
    n_tokens: int = 3  # T
    n_heads: int = 8
    token_dim: int = 0  # encoder hidden size h (token_attention only)
    n_prefix: int = 4  # learned tokens before the edit text (lm_embedding only)
    n_suffix: int = 2  # learned tokens after it (lm_embedding only)

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"unknown prompt encoder kind {self.kind!r}; choose one of {PROMPT_KINDS}")
        if self.kind in ("attention", "token_attention") and self.lm_hidden % self.n_heads:
            raise ValueError(f"lm_hidden {self.lm_hidden} is not divisible by n_heads {self.n_heads}")
        if self.kind == "token_attention" and self.token_dim <= 0:
            raise ValueError("token_attention needs token_dim (the encoder's hidden size)")
        if self.kind == "lm_embedding" and self.n_tokens <= self.n_prefix + self.n_suffix:
            raise ValueError(f"lm_embedding needs n_tokens > n_prefix + n_suffix "
                             f"({self.n_tokens} <= {self.n_prefix} + {self.n_suffix}): no slot is left for the edit text")

    @property
    def text_slots(self) -> int:
        """Slots for the edit text's LM tokens (lm_embedding only)."""
        return self.n_tokens - self.n_prefix - self.n_suffix

    def to_dict(self) -> dict:
        return asdict(self)


class PromptEncoder(nn.Module):
    """Base class: ``forward(values [B, d], tokens) -> prompts [B, T, H]``."""

    needs_tokens: bool = False  # reads the knowledge encoder's token states of the edit text
    needs_lm_tokens: bool = False  # reads the LM's own input embeddings of the edit text

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__()
        self.config = config

    @staticmethod
    def from_config(config: PromptEncoderConfig) -> "PromptEncoder":
        cls = {"attention": AttentionPromptEncoder, "mlp": MLPPromptEncoder,
               "linear": LinearPromptEncoder, "token_attention": TokenAttentionPromptEncoder,
               "lm_embedding": LMEmbeddingPromptEncoder}[config.kind]
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


class LMEmbeddingPromptEncoder(PromptEncoder):
    """The edit text's own LM embeddings, framed by learned tokens (see the module docstring).

    ``tokens``: the LM input embeddings of the edit text, *left*-padded to at most
    ``text_slots`` positions (``states`` [B, n, H], ``mask`` [B, n]); the value vector is not used.
    """

    needs_lm_tokens = True

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__(config)
        H = config.lm_hidden
        self.prefix = nn.Parameter(torch.randn(config.n_prefix, H) * 0.02)
        self.suffix = nn.Parameter(torch.randn(config.n_suffix, H) * 0.02)
        self.text_proj = nn.Linear(H, H, bias=False)  # residual; zero at init: the prompt starts as the text
        nn.init.zeros_(self.text_proj.weight)

    @torch.no_grad()
    def initialise_frame(self, prefix: torch.Tensor, suffix: torch.Tensor) -> None:
        """Start the learned frame from token embeddings (e.g. of "New fact:" and "\\n"):
        [k, H] each; the last min(k, n) rows of ``prefix`` and the first of ``suffix`` are used."""
        if len(prefix) and len(self.prefix):
            k = min(len(prefix), len(self.prefix))
            self.prefix[-k:] = prefix[-k:].to(self.prefix)
        if len(suffix) and len(self.suffix):
            k = min(len(suffix), len(self.suffix))
            self.suffix[:k] = suffix[:k].to(self.suffix)

    def forward(self, values: torch.Tensor | None, tokens: TokenStates | None = None) -> torch.Tensor:
        if tokens is None:
            raise ValueError("lm_embedding needs the LM embeddings of the edit text")
        B, n, H = tokens.states.shape
        slots = self.config.text_slots
        if n > slots:
            raise ValueError(f"edit text has {n} LM tokens for {slots} slots; truncate it first")
        text = tokens.states + self.text_proj(tokens.states)  # [B, n, H]
        text = text * tokens.mask[..., None].to(text.dtype)  # pads stay exactly zero (masked later)
        prefix = self.prefix.expand(B, -1, -1)
        suffix = self.suffix.expand(B, -1, -1)
        return torch.cat([prefix, text, suffix], dim=1)  # [B, p + n + s, H]
