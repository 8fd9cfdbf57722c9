import pytest
import torch

from medrek.models.registry import ModelLoadError, char_tokenizer, load_causal_lm, load_encoder


def test_char_tokenizer_round_trip():
    tok = char_tokenizer("llama")
    ids = tok("Hi, there?").input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == 11
    assert tok.decode(ids, skip_special_tokens=True) == "Hi, there?"


def test_tiny_models_are_seeded_and_frozen(tiny_lm):
    model, tok = tiny_lm
    again, _ = load_causal_lm("tiny-llama", seed=0)
    other, _ = load_causal_lm("tiny-llama", seed=1)
    x = tok(["abc"], return_tensors="pt")
    assert torch.equal(model(**x).logits, again(**x).logits)
    assert not torch.equal(model(**x).logits, other(**x).logits)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    enc, etok = load_encoder("tiny-bert")
    assert enc(**etok(["abc"], return_tensors="pt")).last_hidden_state.shape == (1, 5, 32)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load causal LM"):
        load_causal_lm(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="could not load encoder"):
        load_encoder(str(tmp_path / "no-such-encoder"))


@pytest.mark.slow
def test_offline_smollm2_is_converted_once_and_reloads_identically(tmp_path, monkeypatch):
    from medrek.data.sources import cache_dir

    model, tok = load_causal_lm("smollm2-135m")
    assert (cache_dir() / "models" / "smollm2-135m-instruct-fp32" / "config.json").is_file()
    again, _ = load_causal_lm("smollm2-135m")
    x = tok(["What drug is used for acute severe asthma?"], return_tensors="pt")
    assert model.config.hidden_size == 576 and model.dtype == torch.float32
    assert torch.equal(model(**x).logits, again(**x).logits)


@pytest.mark.slow
def test_offline_minilm_loads():
    model, tok = load_encoder("minilm-l6")
    out = model(**tok(["aspirin"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384 and out.pooler_output is not None
