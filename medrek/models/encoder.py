"""KnowledgeEncoder: a text encoder with a query head, a knowledge head and a prototype key.

For a text the encoder's last hidden states are pooled into
``[pooler (or first token), masked mean, masked max, masked min]`` (4 x hidden), then one of two
residual heads maps them to a d-dimensional vector::

    x = Linear(4h -> d)(f);  x = x + ReLU(Linear(d -> d)(x))

The query head q(.) embeds what is asked, the knowledge head k(.) embeds an edit. The
prototype ("no edit") key is ``n_prototype_tokens`` learned embeddings run through the encoder
body and the knowledge head; every query is also compared with it at retrieval time.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn

from .pooling import masked_max, masked_mean, masked_min

__all__ = ["KnowledgeEncoderConfig", "TokenStates", "ResidualHead", "KnowledgeEncoder", "EncoderTruncationWarning"]


class EncoderTruncationWarning(UserWarning):
    """Texts longer than the encoder's ``max_length`` tokens were cut before encoding."""


@dataclass
class KnowledgeEncoderConfig:
    """Sizes of the retriever. ``hidden_size`` is the backbone's, filled in when built."""

    encoder: str = "minilm-l6"
    key_dim: int = 4096
    n_prototype_tokens: int = 10
    max_length: int = 128
    train_backbone: bool = False
    hidden_size: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TokenStates(NamedTuple):
    """Token-level encoder output for a batch of texts."""

    states: torch.Tensor  # [B, L, h]
    mask: torch.Tensor  # [B, L] (1 = token)
    pooled: torch.Tensor  # [B, h] pooler output, or the first token's state


class ResidualHead(nn.Module):
    """``x = proj(f); x + ReLU(mlp(x))``: [B, in_dim] -> [B, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.proj(features)
        return x + torch.relu(self.mlp(x))


class KnowledgeEncoder(nn.Module):
    """Any Hugging Face encoder plus the query head, knowledge head and prototype tokens.

    With a frozen backbone (``train_backbone=False``) the pooled features of each text are
    cached, since they cannot change: training then costs one backbone pass per distinct text.
    The cache keeps the most recently used texts up to ``cache_bytes`` (default 1 GiB: about
    170,000 texts for a 384-wide encoder such as MiniLM-L6), so a long-lived editor that keeps
    meeting new queries does not grow without bound.
    """

    def __init__(self, backbone: nn.Module, tokenizer, config: KnowledgeEncoderConfig,
                 cache_bytes: int = 1 << 30) -> None:
        super().__init__()
        config.hidden_size = int(backbone.config.hidden_size)
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        h, d = config.hidden_size, config.key_dim
        self.query_head = ResidualHead(4 * h, d)
        self.knowledge_head = ResidualHead(4 * h, d)
        self.prototype_tokens = nn.Parameter((torch.rand(1, config.n_prototype_tokens, h) - 0.5) * 0.1)
        self.backbone.requires_grad_(config.train_backbone)
        self._feature_cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # least recently used first
        self.truncated_texts = 0  # texts encoded so far that were longer than max_length tokens
        self.cache_capacity = max(0, cache_bytes // (4 * h * 4))  # texts; features are [4h] float32

    @property
    def device(self) -> torch.device:
        return self.prototype_tokens.device

    def _count_truncated(self, texts: Sequence[str]) -> None:
        """Count (and warn about) texts the backbone will only read the start of. A token spans
        at least one character, so only texts longer than ``max_length`` characters are checked."""
        limit = self.config.max_length
        long = [t for t in texts if len(t) > limit]
        if not long:
            return
        cut = sum(len(ids) > limit for ids in self.tokenizer(long)["input_ids"])
        if cut:
            self.truncated_texts += cut
            warnings.warn(f"the {self.config.encoder} encoder reads at most max_length={limit} tokens: longer texts "
                          "(e.g. edit texts with MedFE's long targets) are cut, and their queries, keys and values "
                          "see only their start (running count: KnowledgeEncoder.truncated_texts)",
                          EncoderTruncationWarning, stacklevel=3)

    def encode_tokens(self, texts: Sequence[str]) -> TokenStates:
        """Run the backbone: token states [B, L, h], mask [B, L] and pooled [B, h]. Texts longer
        than ``max_length`` tokens are cut, counted in ``truncated_texts`` and warned about."""
        self._count_truncated(texts)
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.config.max_length, return_tensors="pt").to(self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_backbone):
            out = self.backbone(**batch)
        return TokenStates(out.last_hidden_state, batch["attention_mask"], self._pooled(out))

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    @staticmethod
    def pool(tokens: TokenStates) -> torch.Tensor:
        """[pooler, mean, max, min] -> [B, 4h]."""
        s, m = tokens.states, tokens.mask
        return torch.cat([tokens.pooled, masked_mean(s, m), masked_max(s, m), masked_min(s, m)], dim=-1)

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled features [B, 4h]; cached per text while the backbone is frozen."""
        if self.config.train_backbone:
            return self.pool(self.encode_tokens(texts))
        cache = self._feature_cache
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            with torch.no_grad():
                # one copy per row, so evicting a text frees its memory (a view would pin the batch)
                fresh = {t: f.clone() for t, f in zip(missing, self.pool(self.encode_tokens(missing)))}
        rows = torch.stack([fresh[t] if t in fresh else cache[t] for t in texts])
        for t in dict.fromkeys(texts):
            if t in cache:
                cache.move_to_end(t)
        cache.update(fresh)
        while len(cache) > self.cache_capacity:
            cache.popitem(last=False)
        return rows

    def clear_cache(self) -> None:
        self._feature_cache.clear()

    def query(self, texts: Sequence[str]) -> torch.Tensor:
        """q(texts): [B, d]."""
        return self.query_head(self.features(texts))

    def knowledge(self, texts: Sequence[str]) -> torch.Tensor:
        """k(texts): [B, d]."""
        return self.knowledge_head(self.features(texts))

    def prototype_key(self) -> torch.Tensor:
        """The "no edit" key [d]: prototype tokens through the encoder body and the k-head."""
        mask = torch.ones(self.prototype_tokens.shape[:2], dtype=torch.long, device=self.device)
        out = self.backbone(inputs_embeds=self.prototype_tokens, attention_mask=mask)
        tokens = TokenStates(out.last_hidden_state, mask, self._pooled(out))
        return self.knowledge_head(self.pool(tokens))[0]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Heads and prototype (and the backbone when it is trained): what a checkpoint stores."""
        return {k: v for k, v in self.state_dict().items()
                if self.config.train_backbone or not k.startswith("backbone.")}
