"""Metric functions on hand-built logits: padding, multi-token targets, locality agreement."""

import math

import pytest
import torch

from medrek.evaluate.metrics import agreement, avg_score, prediction_positions, teacher_forced


def _logits_predicting(tokens, vocab=6):
    """Logits [L, V] whose argmax at position t is tokens[t]."""
    out = torch.zeros(len(tokens), vocab)
    out[torch.arange(len(tokens)), torch.tensor(tokens)] = 5.0
    return out


def test_prediction_positions_shift_left():
    mask = torch.tensor([[False, False, True, True, False]])
    assert prediction_positions(mask).tolist() == [[False, True, True, False, False]]


def test_multi_token_targets_with_padding():
    # row 0: prompt [1, 2], target [3, 4]; row 1: prompt [1], target [5, 2, 3], no padding
    input_ids = torch.tensor([[1, 2, 3, 4, 0], [1, 5, 2, 3, 0]])
    target = torch.tensor([[False, False, True, True, False], [False, True, True, True, False]])
    # row 0 predicts 3 (right) then 0 (wrong); row 1 predicts 5, 2 (right) and 4 (wrong)
    logits = torch.stack([_logits_predicting([0, 3, 0, 1, 1]), _logits_predicting([5, 2, 4, 1, 1])])
    tf = teacher_forced(logits, input_ids, target)
    assert tf.accuracy.tolist() == pytest.approx([1 / 2, 2 / 3])
    assert [p.tolist() for p in tf.predictions] == [[3, 0], [5, 2, 4]]
    # padding positions do not count: changing logits there changes nothing
    logits[:, 4] = torch.randn(2, 6)
    assert teacher_forced(logits, input_ids, target).accuracy.tolist() == pytest.approx([1 / 2, 2 / 3])


def test_nll_is_the_mean_over_target_tokens():
    input_ids = torch.tensor([[1, 2, 3]])
    target = torch.tensor([[False, True, True]])
    logits = torch.zeros(1, 3, 4)  # uniform: NLL log(4) everywhere
    assert teacher_forced(logits, input_ids, target).nll.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())


def test_locality_agreement_and_avg():
    before = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    after = [torch.tensor([1, 0, 3]), torch.tensor([4])]
    assert agreement(before, after).tolist() == pytest.approx([2 / 3, 1.0])
    with pytest.raises(ValueError, match="positions"):
        agreement(before, [torch.tensor([1, 2]), torch.tensor([4])])
    assert avg_score(0.8, 0.6, 0.9) == pytest.approx(0.8)


def test_ngram_entropy_on_known_strings():
    from medrek.evaluate import fluency, ngram_entropy

    # bigrams ab, ba, ab -> H = h(1/3) bits; trigrams aba, bab -> 1 bit; weights 2/3 and 4/3
    h = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("the the the the the") == 0.0  # degenerate repetition
    assert ngram_entropy("") == 0.0 and ngram_entropy("one") == 0.0
    assert ngram_entropy("Fever, cough.") == ngram_entropy("Fever , cough .")  # punctuation is a word
    varied = "insulin lowers blood glucose by moving it into muscle and fat cells"
    assert fluency([varied, "the the the the"]) == pytest.approx(ngram_entropy(varied) / 2)
    with pytest.raises(ValueError):
        fluency([])
