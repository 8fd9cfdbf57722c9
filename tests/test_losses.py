"""Each loss term on small hand-computed cases (d = 4, so the 1/sqrt(d) scale is 1/2)."""

import math

import pytest
import torch

from medrek.train import losses

K = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0]])  # two edit keys
P = torch.tensor([0, 0, 2.0, 0])  # prototype key


def test_q1_is_infonce_over_keys_and_prototype():
    q = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 2.0]])
    # row 0 scores [2, 0, 0] -> p(own) = e^2 / (e^2 + 2); row 1 scores [0, 0, 0] -> 1/3
    expected = -(math.log(math.e**2 / (math.e**2 + 2)) + math.log(1 / 3)) / 2
    assert losses.contrastive_q1(q, K, P).item() == pytest.approx(expected, rel=1e-6)
    # temperature multiplies the scores
    hot = -(math.log(math.e**4 / (math.e**4 + 2)) + math.log(1 / 3)) / 2
    assert losses.contrastive_q1(q, K, P, temperature=2.0).item() == pytest.approx(hot, rel=1e-6)


def test_q2_prototype_replaces_own_key_with_hinge():
    # row 0: own key removed, prototype score 0, other key score 0 -> p(proto) = 1/2 < 1.2 x 1/2: kept
    # row 1: prototype score 2 vs other key 0 -> p = e^2/(e^2+1) = 0.88 > 1.2 x 0.12: dropped by the hinge
    q = torch.tensor([[2.0, 0, 0, 0], [0, 0, 2.0, 0]])
    assert losses.prototype_q2(q, K, P).item() == pytest.approx(-math.log(0.5), rel=1e-6)
    # without the hinge (scale huge) both rows count
    both = (-math.log(0.5) - math.log(math.e**2 / (math.e**2 + 1))) / 2
    assert losses.prototype_q2(q, K, P, hinge_scale=1e9).item() == pytest.approx(both, rel=1e-6)


def test_q3_pushes_locality_queries_to_the_prototype():
    q = torch.tensor([[2.0, 0, 0, 0], [0, 0, 4.0, 0]])
    # row 0 scores [2, 0, 0] on [K; p] -> p(proto) = 1/(e^2+2): kept; row 1 -> e^4/(e^4+2) dominant: dropped
    expected = -math.log(1 / (math.e**2 + 2))
    assert losses.locality_q3(q, K, P).item() == pytest.approx(expected, rel=1e-6)


def test_q_terms_are_zero_but_differentiable_when_all_rows_are_satisfied():
    q = torch.tensor([[0, 0, 8.0, 0], [0, 0, 8.0, 0]], requires_grad=True)
    loss = losses.locality_q3(q, K, P)
    assert loss.item() == 0.0
    loss.backward()
    assert q.grad is not None


def test_hinge_token_nll_drops_confident_tokens():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.3, 0.6]]))
    labels = torch.tensor([0, 0, 0])
    # token 0: 0.7 > 1.2 x 0.2 -> dropped; token 1: 0.4 < 1.2 x 0.35 -> kept; token 2: 0.1 -> kept
    expected = -(math.log(0.4) + math.log(0.1)) / 2
    assert losses.hinge_token_nll(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    all_tokens = -(math.log(0.7) + math.log(0.4) + math.log(0.1)) / 3
    assert losses.hinge_token_nll(logits, labels, hinge_scale=1e9).item() == pytest.approx(all_tokens, rel=1e-5)


def test_locality_kl_matches_the_definition():
    pre = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    post = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]]))
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert losses.locality_kl(pre, post).item() == pytest.approx(kl0 / 2, rel=1e-5)
    assert losses.locality_kl(pre, pre).item() == pytest.approx(0.0, abs=1e-7)
