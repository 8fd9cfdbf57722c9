"""QuestionVerifier: a second look at the top-k edits, reading the question and a stored prompt together.

A bi-encoder compares one vector per question; with thousands of medical questions stored, a
question on the same organ or drug as an edit but asking another fact scores as high as a
paraphrase of it. The verifier is a cross-encoder over the pair, in one of two kinds:

* ``top-layers`` (the first one the kit had)::

      [CLS] question [SEP] stored prompt [SEP] -> encoder -> masked mean -> Linear(h -> 1) -> logit

  its top ``trained_layers`` layers and the head are trained by the kit's own loop
  (:func:`medrek.train.retriever.train_verifier`) and stored in float16;
* ``cross-encoder``: the sequence classifier that ``sentence-transformers``' ``CrossEncoder``
  trains (``[CLS]`` pooler -> Linear(h -> 1)), its top ``trained_layers`` layers, pooler and
  classifier trained for several epochs on mined hard negatives
  (:mod:`medrek.train.cross_encoder`) and stored as int8 rows (a symmetric scale per output row):
  a MiniLM with every layer trained is then about 11 MB.

Either way the logit gives the probability that both ask the same thing; the layers that are
not trained stay the released weights and are not stored.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from .pooling import masked_mean

__all__ = ["VerifierConfig", "QuestionVerifier", "VERIFIER_KINDS", "quantize_rows", "dequantize_rows"]

VERIFIER_KINDS = ("top-layers", "cross-encoder")
QUANTIZED = ".int8"  # a stored int8 matrix; its scales are stored under name + ".scale"


@dataclass
class VerifierConfig:
    trained_layers: int = 2  # top encoder layers fine-tuned and saved; the others stay the released ones
    max_length: int = 96  # tokens of one (question, stored prompt) pair
    candidates: int = 5  # top-k edits by key score that the verifier reads
    kind: str = "top-layers"  # top-layers | cross-encoder (see the module docstring)

    def __post_init__(self) -> None:
        for name in ("trained_layers", "max_length", "candidates"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VerifierConfig.{name} must be an integer >= 1, got {value!r}")
        if self.kind not in VERIFIER_KINDS:
            raise ValueError(f"VerifierConfig.kind must be one of {VERIFIER_KINDS}, got {self.kind!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A matrix [out, in] as int8 [out, in] and one float16 scale per row [out] (symmetric)."""
    scale = (weight.abs().amax(1) / 127.0).clamp_min(1e-12).half()  # [out]
    q = torch.round(weight / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


class QuestionVerifier(nn.Module):
    """P(question asks what the stored prompt asks), from a copy of a BERT-like encoder."""

    def __init__(self, backbone: nn.Module, tokenizer, config: VerifierConfig) -> None:
        super().__init__()
        layers = backbone.encoder.layer
        if config.trained_layers > len(layers):
            raise ValueError(f"trained_layers={config.trained_layers}, but the encoder has {len(layers)} layers")
        self.config = config
        self.tokenizer = tokenizer
        n, k = len(layers), config.trained_layers
        if config.kind == "cross-encoder":
            self.classifier = _sequence_classifier(backbone)
            root = f"classifier.{self.classifier.base_model_prefix}."
            extra = (f"{root}pooler.", "classifier.classifier.")
        else:
            self.backbone = copy.deepcopy(backbone)
            self.head = nn.Linear(int(backbone.config.hidden_size), 1)
            root, extra = "backbone.", ("head.",)
        self._trained = tuple(f"{root}encoder.layer.{i}." for i in range(n - k, n)) + extra  # what trains and is saved
        self.requires_grad_(False)
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(self._trained))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, questions: Sequence[str], stored: Sequence[str]) -> torch.Tensor:
        """Logits [B] for B (question, stored prompt) pairs."""
        batch = self.tokenizer(list(questions), list(stored), padding=True, truncation=True,
                               max_length=self.config.max_length, return_tensors="pt").to(self.device)
        if self.config.kind == "cross-encoder":
            return self.classifier(**batch).logits[:, 0]
        states = self.backbone(**batch).last_hidden_state  # [B, L, h]
        return self.head(masked_mean(states, batch["attention_mask"]))[:, 0]

    @torch.no_grad()
    def probabilities(self, questions: Sequence[str], stored: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """P(same question) [B], in batches, on CPU."""
        out = [torch.sigmoid(self(questions[s:s + batch_size], stored[s:s + batch_size])).float().cpu()
               for s in range(0, len(questions), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained layers and the head: what a checkpoint stores (in full precision)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(self._trained)}

    def stored_state_dict(self) -> dict[str, torch.Tensor]:
        """What an editor checkpoint holds: float16 (``top-layers``), or int8 rows with their
        scales for every matrix and float16 for the rest (``cross-encoder``)."""
        out = {}
        for name, value in self.trainable_state_dict().items():
            if self.config.kind == "cross-encoder" and value.dim() == 2:
                out[name + QUANTIZED], out[name + QUANTIZED + ".scale"] = quantize_rows(value.float())
            else:
                out[name] = value.half()
        return out

    def load_stored_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`stored_state_dict` gives (missing or unexpected names refused)."""
        state = {}
        for name, value in tensors.items():
            if name.endswith(QUANTIZED + ".scale"):
                continue
            if name.endswith(QUANTIZED):
                state[name[: -len(QUANTIZED)]] = dequantize_rows(value, tensors[name + ".scale"])
            else:
                state[name] = value.float()
        own = self.trainable_state_dict()
        if set(state) != set(own):
            raise KeyError(f"verifier tensors do not fit: missing {sorted(set(own) - set(state))[:3]}, "
                           f"unexpected {sorted(set(state) - set(own))[:3]}")
        self.load_state_dict(state, strict=False)

    @torch.no_grad()
    def round_to_stored(self) -> None:
        """Round the trained weights as a checkpoint stores them, so that the verifier used right
        after training is the one that a reload gives."""
        self.load_stored_state_dict(self.stored_state_dict())



def _sequence_classifier(backbone: nn.Module) -> nn.Module:
    """A one-logit sequence classifier of the backbone's architecture, holding its weights (the
    pooler too, where the backbone has one; the classifier starts as transformers initialises it)."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(backbone.config)
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config)
    model.base_model.load_state_dict(backbone.state_dict(), strict=False)
    return model.to(next(backbone.parameters()).device).eval()  # as the backbone comes: no dropout until trained
