"""Acceptance rules and the sampling transform, as pure functions."""

import re

import pytest
import torch
from scipy import stats
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from aurora_rl.core.acceptance import greedy_verdict, rejection_verdict
from aurora_rl.core.sampling import SamplingParams, probs_from_logits


def one_hot_logits(tokens, vocab):
    return torch.nn.functional.one_hot(torch.tensor(tokens), vocab).float()[None] * 10


def test_greedy_accepts_the_matching_prefix_then_corrects():
    # target argmax per position: 3, 4, 5, bonus 6
    logits = one_hot_logits([3, 4, 5, 6], vocab=8)
    verdict = greedy_verdict(torch.tensor([[3, 4, 0]]), logits)
    assert verdict.accept_mask.tolist() == [[True, True, False]]
    assert verdict.num_accepted.tolist() == [2]
    assert verdict.next_token.tolist() == [5]


def test_greedy_bonus_token_when_all_accepted_and_no_acceptance_after_a_miss():
    logits = one_hot_logits([3, 4, 5, 6], vocab=8)
    assert greedy_verdict(torch.tensor([[3, 4, 5]]), logits).next_token.tolist() == [6]
    # position 1 matches but position 0 does not: nothing is accepted
    verdict = greedy_verdict(torch.tensor([[0, 4, 5]]), logits)
    assert verdict.accept_mask.tolist() == [[False, False, False]]
    assert verdict.next_token.tolist() == [3]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=0.9, top_k=12, top_p=0.6),
    ],
)
def test_sampling_transform_matches_transformers_warpers(params):
    logits = torch.randn(64, 40, generator=torch.Generator().manual_seed(0)) * 3
    expected = TemperatureLogitsWarper(params.temperature)(None, logits.clone())
    if params.top_k:
        expected = TopKLogitsWarper(params.top_k)(None, expected)
    if params.top_p < 1:
        expected = TopPLogitsWarper(params.top_p)(None, expected)
    torch.testing.assert_close(probs_from_logits(logits, params), expected.softmax(-1))


def test_greedy_transform_is_one_hot_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0]])
    assert probs_from_logits(logits, SamplingParams()).tolist() == [[0.0, 1.0, 0.0]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.5}, "temperature=-0.5 must be >= 0 (0 = greedy)"),
        ({"top_k": -1}, "top_k=-1 must be >= 0 (0 = off)"),
        ({"top_p": 0.0}, "top_p=0.0 must be in (0, 1] (1 = off)"),
    ],
)
def test_sampling_params_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SamplingParams(**kwargs)


def _random_dist(gen, rows, vocab, sharpness):
    return (torch.randn(rows, vocab, generator=gen) * sharpness).softmax(-1)


def _expected_counts(probs, total):
    probs = probs.double()
    return probs / probs.sum() * total


def test_rejection_rule_emits_the_target_distribution():
    """Vectorised check of the rule itself with 400k draws (cheap, high power).

    Target rows are fixed, so the first emitted token must follow p_0 and, given the
    first proposal was accepted, the second must follow p_1.
    """
    gen = torch.Generator().manual_seed(0)
    vocab, k, n = 6, 3, 400_000
    p = _random_dist(gen, k + 1, vocab, 1.5)
    q = _random_dist(gen, k, vocab, 1.5)
    proposed = torch.stack([torch.multinomial(q[i], n, replacement=True, generator=gen) for i in range(k)], 1)
    verdict = rejection_verdict(proposed, q.expand(n, k, vocab), p.expand(n, k + 1, vocab), gen)

    first = torch.where(verdict.num_accepted > 0, proposed[:, 0], verdict.next_token)
    counts = torch.bincount(first, minlength=vocab).double()
    assert stats.chisquare(counts, _expected_counts(p[0], n)).pvalue > 1e-3

    took_first = verdict.num_accepted > 0
    second = torch.where(verdict.num_accepted > 1, proposed[:, 1], verdict.next_token)[took_first]
    counts = torch.bincount(second, minlength=vocab).double()
    assert stats.chisquare(counts, _expected_counts(p[1], len(second))).pvalue > 1e-3

    # acceptance rate of position 0 is sum_x min(p, q)
    expected_alpha = torch.minimum(p[0], q[0]).sum()
    assert abs(took_first.double().mean() - expected_alpha) < 0.005


def test_rejection_rule_accepts_everything_when_draft_equals_target():
    gen = torch.Generator().manual_seed(1)
    p = _random_dist(gen, 4, 5, 1.0)
    proposed = torch.stack([torch.multinomial(p[i], 1000, replacement=True, generator=gen) for i in range(3)], 1)
    verdict = rejection_verdict(proposed, p[:3].expand(1000, 3, 5), p.expand(1000, 4, 5), gen)
    assert bool(verdict.accept_mask.all())


def test_rejection_rule_is_deterministic_under_its_generator():
    gen = torch.Generator().manual_seed(2)
    p = _random_dist(gen, 3, 7, 1.0).expand(50, 3, 7)
    q = _random_dist(gen, 2, 7, 1.0).expand(50, 2, 7)
    proposed = torch.randint(0, 7, (50, 2), generator=gen)
    a = rejection_verdict(proposed, q, p, torch.Generator().manual_seed(9))
    b = rejection_verdict(proposed, q, p, torch.Generator().manual_seed(9))
    assert torch.equal(a.accept_mask, b.accept_mask) and torch.equal(a.next_token, b.next_token)
