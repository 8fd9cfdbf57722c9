"""QuestionVerifier: a second look at the top-k edits, reading the question and a stored prompt together.

A bi-encoder compares one vector per question; with thousands of medical questions stored, a
question on the same organ or drug as an edit but asking another fact scores as high as a
paraphrase of it. The verifier is a cross-encoder over the pair::

    [CLS] question [SEP] stored prompt [SEP] -> encoder -> masked mean -> Linear(h -> 1) -> logit

giving the probability that both ask the same thing. It starts from the retriever's own
sentence encoder (MiniLM); only its top ``trained_layers`` layers and the head are trained
and saved, the rest are the released weights.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from .pooling import masked_mean

__all__ = ["VerifierConfig", "QuestionVerifier"]


@dataclass
class VerifierConfig:
    trained_layers: int = 2  # top encoder layers fine-tuned and saved; the others stay the released ones
    max_length: int = 96  # tokens of one (question, stored prompt) pair
    candidates: int = 5  # top-k edits by key score that the verifier reads

    def __post_init__(self) -> None:
        for name in ("trained_layers", "max_length", "candidates"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VerifierConfig.{name} must be an integer >= 1, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class QuestionVerifier(nn.Module):
    """P(question asks what the stored prompt asks), from a copy of a BERT-like encoder."""

    def __init__(self, backbone: nn.Module, tokenizer, config: VerifierConfig) -> None:
        super().__init__()
        layers = backbone.encoder.layer
        if config.trained_layers > len(layers):
            raise ValueError(f"trained_layers={config.trained_layers}, but the encoder has {len(layers)} layers")
        self.config = config
        self.backbone = copy.deepcopy(backbone)
        self.tokenizer = tokenizer
        self.head = nn.Linear(int(backbone.config.hidden_size), 1)
        self.backbone.requires_grad_(False)
        for layer in self.backbone.encoder.layer[-config.trained_layers:]:
            layer.requires_grad_(True)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, questions: Sequence[str], stored: Sequence[str]) -> torch.Tensor:
        """Logits [B] for B (question, stored prompt) pairs."""
        batch = self.tokenizer(list(questions), list(stored), padding=True, truncation=True,
                               max_length=self.config.max_length, return_tensors="pt").to(self.device)
        states = self.backbone(**batch).last_hidden_state  # [B, L, h]
        return self.head(masked_mean(states, batch["attention_mask"]))[:, 0]

    @torch.no_grad()
    def probabilities(self, questions: Sequence[str], stored: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """P(same question) [B], in batches, on CPU."""
        out = [torch.sigmoid(self(questions[s:s + batch_size], stored[s:s + batch_size])).float().cpu()
               for s in range(0, len(questions), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def round_to_half(self) -> None:
        """Round the trained weights to float16, as a checkpoint stores them, so that the
        verifier used right after training is the one that a reload gives."""
        for value in self.trainable_state_dict().values():
            value.copy_(value.half().float())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained top layers and the head: what a checkpoint stores."""
        first = len(self.backbone.encoder.layer) - self.config.trained_layers
        keep = tuple(f"backbone.encoder.layer.{i}." for i in range(first, len(self.backbone.encoder.layer)))
        return {k: v for k, v in self.state_dict().items() if k.startswith(keep) or k.startswith("head.")}
