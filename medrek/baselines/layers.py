"""Reaching into a Hugging Face decoder: its layers, an MLP projection, partial forwards.

Parameter-editing baselines train or rewrite one projection inside a few layers while every
layer below stays frozen, so the hidden states entering the first edited layer never change.
:func:`hidden_before` computes them once (stopping the forward there) and
:func:`run_from_layer` runs only the layers from there up: an optimisation step then costs
the upper layers only. Both are checked against a full forward by :func:`check_partial_forward`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["decoder_layers", "projection", "hidden_before", "run_from_layer", "check_partial_forward", "logits_at",
           "module_input"]


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The decoder's list of transformer blocks (``model.layers`` for Llama-style LMs)."""
    layers = getattr(lm.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(lm).__name__}: cannot find the decoder layers (expected get_decoder().layers)")
    return layers


def projection(lm: nn.Module, layer: int, path: str) -> nn.Linear:
    """The ``nn.Linear`` at ``layers[layer].<path>``, e.g. ``mlp.down_proj``."""
    layers = decoder_layers(lm)
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer {layer} does not exist: the LM has {len(layers)} layers")
    module: nn.Module = layers[layer]
    for part in path.split("."):
        if not hasattr(module, part):
            raise ValueError(f"layers[{layer}] has no module '{path}' (missing '{part}'); set the method's module path")
        module = getattr(module, part)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"layers[{layer}].{path} is a {type(module).__name__}, not nn.Linear")
    return module


class _Stop(Exception):
    pass


@torch.no_grad()
def hidden_before(lm: nn.Module, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden states [B, L, H] entering ``layers[layer]`` (the layers above are not run)."""
    captured: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    handle = decoder_layers(lm)[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


@contextmanager
def run_from_layer(lm: nn.Module, layer: int) -> Iterator[None]:
    """Within the block, the decoder runs ``layers[layer:]`` only, on ``inputs_embeds`` that
    must be :func:`hidden_before` ``(layer)``."""
    decoder = lm.get_decoder()
    full = decoder.layers
    decoder.layers = nn.ModuleList(list(full)[layer:])
    try:
        yield
    finally:
        decoder.layers = full


@torch.no_grad()
def check_partial_forward(lm: nn.Module, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          atol: float = 1e-4) -> bool:
    """Whether the hidden-states shortcut reproduces the full forward for this LM (some
    architectures scale ``inputs_embeds`` or need state the shortcut does not carry)."""
    decoder = lm.get_decoder()
    full = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    h = hidden_before(lm, layer, input_ids, attention_mask)
    with run_from_layer(lm, layer):
        part = decoder(inputs_embeds=h, attention_mask=attention_mask, use_cache=False).last_hidden_state
    valid = attention_mask.bool()
    return bool(torch.allclose(full[valid], part[valid], atol=atol, rtol=1e-4))


def logits_at(model, layer: int, batch, hidden: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
    """Logits [N, V] of ``model`` (an EditedModel) at the ``positions`` [B, L] of ``batch``: from
    ``hidden`` entering ``layers[layer]`` (:func:`hidden_before`) when given, else a full forward."""
    decoder = model.lm.get_decoder()
    if hidden is not None:
        with run_from_layer(model.lm, layer):
            states = decoder(inputs_embeds=hidden, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
    else:
        states = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
    return model.project(states[positions])


@torch.no_grad()
def module_input(lm: nn.Module, module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """What ``module`` (inside ``lm``'s decoder) reads [B, L, d_in] in a forward of ``input_ids``."""
    captured: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
    try:
        lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    return captured[0]
