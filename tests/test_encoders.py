import warnings

import pytest
import torch
from transformers import BertConfig, BertModel

from medrek.models.encoder import KnowledgeEncoder, KnowledgeEncoderConfig, TokenStates
from medrek.models.pooling import masked_max, masked_mean, masked_min
from medrek.models.prompt import PromptEncoder, PromptEncoderConfig
from medrek.models.registry import char_tokenizer


def test_masked_pooling_ignores_padding():
    states = torch.tensor([[[1.0, -1.0], [3.0, 5.0], [100.0, -100.0]]])  # last position is padding
    mask = torch.tensor([[1, 1, 0]])
    assert masked_mean(states, mask).tolist() == [[2.0, 2.0]]
    assert masked_max(states, mask).tolist() == [[3.0, 5.0]]
    assert masked_min(states, mask).tolist() == [[1.0, -1.0]]


def test_features_do_not_depend_on_batch_padding(tiny_encoder):
    backbone, tok = tiny_encoder
    enc = KnowledgeEncoder(backbone, tok, KnowledgeEncoderConfig("tiny-bert", key_dim=16, n_prototype_tokens=2))
    alone = enc.pool(enc.encode_tokens(["short"]))
    padded = enc.pool(enc.encode_tokens(["short", "a much longer sentence with padding"]))[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)
    assert enc.query(["a"]).shape == (1, 16) and enc.prototype_key().shape == (16,)


def test_encoder_without_pooler_uses_first_token():
    tok = char_tokenizer("bert")
    torch.manual_seed(0)
    backbone = BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32), add_pooling_layer=False)
    enc = KnowledgeEncoder(backbone, tok, KnowledgeEncoderConfig("x", key_dim=8, n_prototype_tokens=2))
    tokens = enc.encode_tokens(["abc"])
    assert torch.equal(tokens.pooled, tokens.states[:, 0])
    assert enc.knowledge(["abc"]).shape == (1, 8) and enc.prototype_key().shape == (8,)


def test_frozen_backbone_features_are_cached_and_heads_still_train(tiny_encoder):
    backbone, tok = tiny_encoder
    enc = KnowledgeEncoder(backbone, tok, KnowledgeEncoderConfig("tiny-bert", key_dim=8, n_prototype_tokens=2))
    q = enc.query(["abc", "de"])
    assert set(enc._feature_cache) == {"abc", "de"}
    q.sum().backward()
    assert enc.query_head.proj.weight.grad is not None
    assert all(p.grad is None for p in enc.backbone.parameters())


def test_feature_cache_keeps_the_most_recent_texts_within_its_budget(tiny_encoder):
    backbone, tok = tiny_encoder
    cfg = KnowledgeEncoderConfig("tiny-bert", key_dim=8, n_prototype_tokens=2)
    h = backbone.config.hidden_size
    enc = KnowledgeEncoder(backbone, tok, cfg, cache_bytes=2 * 4 * h * 4)  # room for 2 texts
    assert enc.cache_capacity == 2
    first = enc.features(["abc", "de", "f"])  # more new texts than fit: still answered
    assert list(enc._feature_cache) == ["de", "f"]
    enc.features(["de"])  # a hit makes "de" the most recent
    enc.features(["gh"])
    assert list(enc._feature_cache) == ["de", "gh"]
    again = enc.features(["abc", "de", "f"])  # evicted texts are recomputed, to the same values
    torch.testing.assert_close(again, first)


def _prompt_encoder(kind):
    torch.manual_seed(0)
    return PromptEncoder.from_config(PromptEncoderConfig(kind, value_dim=16, lm_hidden=24, n_tokens=3,
                                                         n_heads=4, token_dim=8))


def test_paper_attention_encoder_emits_identical_tokens():
    values = torch.randn(5, 16)
    out = _prompt_encoder("attention")(values)  # [5, 3, 24]
    assert out.shape == (5, 3, 24)
    # single-key attention: softmax over one key is 1, so every query yields the same token
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 0], out[:, 2], atol=1e-6, rtol=0)
    assert not torch.allclose(out[0, 0], out[1, 0])  # but tokens differ across edits


def test_token_attention_emits_distinct_tokens_and_respects_padding():
    enc = _prompt_encoder("token_attention")
    states, mask = torch.randn(2, 6, 8), torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    out = enc(torch.randn(2, 16), TokenStates(states, mask, states[:, 0]))
    assert out.shape == (2, 3, 24)
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3
    changed = states.clone()
    changed[1, 3:] = 1000.0  # padding must not matter
    values = torch.randn(2, 16)
    a = enc(values, TokenStates(states, mask, states[:, 0]))
    b = enc(values, TokenStates(changed, mask, changed[:, 0]))
    torch.testing.assert_close(a[1], b[1])
    with pytest.raises(ValueError, match="token states"):
        enc(values)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_other_prompt_encoders_shapes(kind):
    out = _prompt_encoder(kind)(torch.randn(4, 16))
    assert out.shape == (4, 3, 24)


def test_bad_prompt_config_is_refused():
    with pytest.raises(ValueError, match="unknown prompt encoder kind"):
        PromptEncoderConfig("transformer", 16, 24)
    with pytest.raises(ValueError, match="not divisible"):
        PromptEncoderConfig("attention", 16, 25, n_heads=4)


def test_texts_longer_than_max_length_are_counted_and_warned_about(tiny_encoder):
    from medrek.models.encoder import EncoderTruncationWarning

    backbone, tok = tiny_encoder
    encoder = KnowledgeEncoder(backbone, tok, KnowledgeEncoderConfig("tiny-bert", 8, 2, max_length=16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EncoderTruncationWarning)
        encoder.features(["short", "x" * 14])  # fits: no warning
    assert encoder.truncated_texts == 0
    with pytest.warns(EncoderTruncationWarning, match="max_length=16"):
        encoder.features(["a long explanation " * 3, "short", "another long one, " * 4])
    assert encoder.truncated_texts == 2
