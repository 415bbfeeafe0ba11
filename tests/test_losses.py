"""Closed-form and behavioural tests of the pure loss functions (aurora_rl.algos.losses).

Hand-computed numbers are written out with the arithmetic that produces them, so a reader can
check them without running anything.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F

from aurora_rl.algos import AlgoConfig, make_algorithm
from aurora_rl.algos import losses as L
from aurora_rl.core.batch import TraceBatch
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.policies.small_lm import SmallLMDrafter

T, F_ = True, False

# (B=3, k=4): a full trace, a trace with 2 proposals, a trace with 1 proposal.
VALID = torch.tensor([[T, T, T, T], [T, T, F_, F_], [T, F_, F_, F_]])


def random_inputs(seed: int = 0, zeros: bool = False, scale: float = 2.0, V: int = 7):
    """(draft_logits with grad, target_probs, valid_mask) with the shapes of VALID."""
    g = torch.Generator().manual_seed(seed)
    B, k = VALID.shape
    logits = (torch.randn(B, k, V, generator=g) * scale).requires_grad_()
    p = torch.softmax(torch.randn(B, k, V, generator=g) * 2.0, dim=-1)
    if zeros:
        # What a top-3 trace stores: the 3 largest target probs renormalised, exact zeros
        # elsewhere.
        top = p.topk(3, dim=-1)
        p = torch.zeros_like(p).scatter(-1, top.indices, top.values)
        p = p / p.sum(-1, keepdim=True)
    return logits, p, VALID.clone()


def dist_logits(*probs: float) -> torch.Tensor:
    """(1, 1, V) draft logits whose softmax is ``probs``."""
    return torch.tensor(probs, dtype=torch.float64).log().view(1, 1, -1).requires_grad_()


def dist(*probs: float) -> torch.Tensor:
    """(1, 1, V) target probs."""
    return torch.tensor(probs, dtype=torch.float64).view(1, 1, -1)


ONE = torch.ones(1, 1, dtype=torch.bool)


def raises(message: str):
    """pytest.raises for a ValueError whose message contains ``message`` verbatim."""
    return pytest.raises(ValueError, match=re.escape(message))

# Every divergence as (name, kwargs); jsd at an interior beta exercises the mixture branch.
DIVERGENCE_CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 0.3}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 1.0}),
    ("tv", {}),
]


# ----------------------------------------------------------------------------- divergences


@pytest.mark.parametrize("name,kw", DIVERGENCE_CASES)
def test_identical_distributions_give_zero(name, kw):
    logits, _, valid = random_inputs(scale=3.0)
    p = torch.softmax(logits.detach(), dim=-1)
    value = L.divergence(name, logits, p, valid, **kw)
    assert abs(value.item()) < 1e-6
    per_pos = L.divergence(name, logits, p, valid, reduction="none", **kw)
    assert per_pos.abs().max().item() < 1e-6


@pytest.mark.parametrize("zeros", [False, True])
def test_forward_kl_equals_torch_kl_div(zeros):
    logits, p, valid = random_inputs(seed=1, zeros=zeros)
    log_q = torch.log_softmax(logits.detach(), dim=-1)
    # F.kl_div(input=log q, target=p) is KL(p || q); "batchmean" over the valid rows is the
    # mean over valid positions.
    expected = F.kl_div(log_q[valid], p[valid], reduction="batchmean")
    torch.testing.assert_close(L.forward_kl(logits, p, valid), expected)
    per_pos = F.kl_div(log_q, p, reduction="none").sum(-1) * valid
    torch.testing.assert_close(L.forward_kl(logits, p, valid, reduction="none"), per_pos)


def test_reverse_kl_equals_torch_kl_div():
    logits, p, valid = random_inputs(seed=2)
    q = torch.softmax(logits.detach(), dim=-1)
    expected = F.kl_div(p[valid].log(), q[valid], reduction="batchmean")  # KL(q || p)
    torch.testing.assert_close(L.reverse_kl(logits, p, valid), expected)


def test_reverse_kl_floors_zero_target_probs_at_eps():
    # p = [1, 0], q = [.5, .5]: .5 ln(.5 / 1) + .5 ln(.5 / 1e-8) = ln .5 + .5 ln 1e8 = 8.517193
    value = L.reverse_kl(dist_logits(0.5, 0.5), dist(1.0, 0.0), ONE)
    assert value.item() == pytest.approx(math.log(0.5) + 0.5 * math.log(1e8), rel=1e-12)
    assert value.item() == pytest.approx(8.517193, abs=1e-6)
    assert L.PROB_EPS == 1e-8


@pytest.mark.parametrize("zeros", [False, True])
def test_jsd_endpoints_are_exactly_the_kls(zeros):
    logits, p, valid = random_inputs(seed=3, zeros=zeros)
    forward, reverse = L.forward_kl(logits, p, valid), L.reverse_kl(logits, p, valid)
    assert torch.equal(L.generalized_jsd(logits, p, valid, beta=0.0), forward)
    assert torch.equal(L.generalized_jsd(logits, p, valid, beta=1), reverse)


def test_jsd_half_is_textbook_js_divergence():
    # p = [.5, .5], q = [.9, .1], m = [.7, .3]
    # KL(p||m) = .5 ln(.5/.7) + .5 ln(.5/.3) = .5 ln(25/21)
    # KL(q||m) = .9 ln(.9/.7) + .1 ln(.1/.3) = .9 ln(9/7) - .1 ln 3
    # JS = .5 KL(p||m) + .5 KL(q||m) = .25 ln(25/21) + .45 ln(9/7) - .05 ln 3 = 0.1017492
    by_hand = 0.25 * math.log(25 / 21) + 0.45 * math.log(9 / 7) - 0.05 * math.log(3)
    assert by_hand == pytest.approx(0.1017492, abs=1e-7)
    value = L.generalized_jsd(dist_logits(0.9, 0.1), dist(0.5, 0.5), ONE, beta=0.5)
    assert value.item() == pytest.approx(by_hand, rel=1e-12)
    # beta = 0.5 is symmetric: swap which side is the draft.
    swapped = L.generalized_jsd(dist_logits(0.5, 0.5), dist(0.9, 0.1), ONE, beta=0.5)
    assert swapped.item() == pytest.approx(by_hand, rel=1e-12)
    assert value.item() <= math.log(2)


def test_jsd_interior_beta_matches_probability_space_formula():
    logits, p, valid = random_inputs(seed=4)
    beta = 0.3
    q = torch.softmax(logits.detach(), dim=-1)
    m = beta * p + (1 - beta) * q
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    expected = (beta * kl(p, m) + (1 - beta) * kl(q, m))[valid].mean()
    torch.testing.assert_close(L.generalized_jsd(logits, p, valid, beta=beta), expected)


def test_total_variation_hand_example_and_acceptance():
    # p = [.5, .5], q = [.9, .1]: TV = .5 (|.5-.9| + |.5-.1|) = .4; alpha = min sum = .5 + .1 = .6
    logits, p = dist_logits(0.9, 0.1), dist(0.5, 0.5)
    assert L.total_variation(logits, p, ONE).item() == pytest.approx(0.4, rel=1e-12)
    assert L.acceptance_probs(logits, p).item() == pytest.approx(0.6, rel=1e-12)
    logits, p, valid = random_inputs(seed=5, zeros=True)
    tv = L.total_variation(logits, p, valid, reduction="none")
    alpha = L.acceptance_probs(logits, p)
    torch.testing.assert_close((1 - tv)[valid], alpha[valid])


@pytest.mark.parametrize("name,kw", DIVERGENCE_CASES)
def test_invalid_positions_change_neither_value_nor_gradient(name, kw):
    logits, p, valid = random_inputs(seed=6)
    value = L.divergence(name, logits, p, valid, **kw)
    (grad,) = torch.autograd.grad(value, logits)

    g = torch.Generator().manual_seed(99)
    wild_logits = logits.detach().clone()
    wild_logits[~valid] = torch.randn(int((~valid).sum()), 7, generator=g) * 1e4
    wild_p = p.clone()
    wild_p[~valid] = torch.rand(int((~valid).sum()), 7, generator=g) * 50  # not even normalised
    wild_p[2, 3] = 0.0  # an all-zero padding row
    wild_logits.requires_grad_()
    wild_value = L.divergence(name, wild_logits, wild_p, valid, **kw)
    (wild_grad,) = torch.autograd.grad(wild_value, wild_logits)

    torch.testing.assert_close(wild_value, value)
    torch.testing.assert_close(wild_grad[valid], grad[valid])
    assert torch.equal(wild_grad[~valid], torch.zeros_like(wild_grad[~valid]))


@pytest.mark.parametrize("name,kw", DIVERGENCE_CASES)
@pytest.mark.parametrize("scale", [2.0, 1e4])
def test_zero_target_probs_and_huge_logits_stay_finite(name, kw, scale):
    logits, p, valid = random_inputs(seed=7, zeros=True, scale=scale)
    value = L.divergence(name, logits, p, valid, **kw)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name,kw", DIVERGENCE_CASES)
def test_empty_mask_gives_exact_zero_with_grad_path(name, kw):
    logits, p, valid = random_inputs(seed=8)
    value = L.divergence(name, logits, p, torch.zeros_like(valid), **kw)
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("name,kw", DIVERGENCE_CASES)
def test_reduction_none_is_per_position_with_zero_padding(name, kw):
    logits, p, valid = random_inputs(seed=9)
    per_pos = L.divergence(name, logits, p, valid, reduction="none", **kw)
    assert per_pos.shape == valid.shape
    assert torch.equal(per_pos[~valid], torch.zeros_like(per_pos[~valid]))
    torch.testing.assert_close(per_pos[valid].mean(), L.divergence(name, logits, p, valid, **kw))


def test_divergence_errors_are_exact():
    logits, p, valid = random_inputs()
    with raises("unknown divergence 'kl'; valid names are 'forward_kl', 'reverse_kl', 'jsd', 'tv'"):
        L.divergence("kl", logits, p, valid)
    for beta in (1.5, -0.1):
        with raises(f"beta must be in [0, 1], got {beta}"):
            L.generalized_jsd(logits, p, valid, beta=beta)
    with raises("beta must be in [0, 1], got nan"):
        L.divergence("jsd", logits, p, valid, beta=float("nan"))
    with raises("reduction must be 'mean' or 'none', got 'sum'"):
        L.forward_kl(logits, p, valid, reduction="sum")
    with raises("target_probs shape (3, 4, 6) must equal draft_logits shape (3, 4, 7)"):
        L.forward_kl(logits, p[..., :6], valid)
    with raises("valid_mask must be a bool tensor, got dtype torch.float32"):
        L.total_variation(logits, p, valid.float())


# ----------------------------------------------------------------------------- masks and returns


def test_pg_positions_and_first_rejected():
    accept = torch.tensor([[T, F_, F_], [T, T, T], [F_, F_, F_], [T, F_, F_]])
    valid = torch.tensor([[T, T, T], [T, T, T], [T, T, T], [T, F_, F_]])
    assert L.pg_positions(accept[:1], valid[:1]).tolist() == [[T, T, F_]]
    assert L.first_rejected(accept, valid).tolist() == [
        [F_, T, F_],
        [F_, F_, F_],  # all accepted: nothing refused
        [T, F_, F_],
        [F_, F_, F_],  # the only proposal was accepted; position 1 does not exist
    ]
    assert L.pg_positions(accept, valid).tolist() == [
        [T, T, F_],
        [T, T, T],
        [T, F_, F_],
        [T, F_, F_],
    ]


def test_reward_to_go_closed_form():
    accept = torch.tensor([[T, T, F_, F_], [T, T, T, T], [F_, F_, F_, F_], [T, F_, F_, F_]])
    valid = torch.tensor([[T, T, T, T], [T, T, T, T], [T, T, F_, F_], [T, T, F_, F_]])
    assert L.reward_to_go(accept, valid).tolist() == [
        [2.0, 1.0, 0.0, 0.0],
        [4.0, 3.0, 2.0, 1.0],
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
    ]


def test_mask_errors_are_exact():
    with raises("accept_mask must be prefix-closed"):
        L.reward_to_go(torch.tensor([[T, F_, T]]), torch.tensor([[T, T, T]]))
    with raises("accept_mask marks a position that valid_mask says does not exist"):
        L.pg_positions(torch.tensor([[T, T, F_]]), torch.tensor([[T, F_, F_]]))
    with raises("accept_mask and valid_mask must be bool tensors, got torch.int64 and torch.bool"):
        L.check_masks(torch.tensor([[1, 0]]), torch.tensor([[T, T]]))


def test_per_position_baseline_closed_form():
    returns = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [3.0, 2.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[T, T, T], [T, F_, F_], [T, T, F_]])
    # position 0: (2 + 0 + 3) / 3; position 1: (1 + 2) / 2; position 2: 0 / 1
    b = L.per_position_baseline(returns, mask)
    torch.testing.assert_close(b, torch.tensor([5 / 3, 1.5, 0.0]))
    assert not b.requires_grad
    assert L.per_position_baseline(returns, torch.zeros_like(mask)).tolist() == [0.0, 0.0, 0.0]
    assert (returns - b).shape == returns.shape


def test_token_logprobs_is_log_softmax_gather():
    logits, _, valid = random_inputs(seed=10)
    proposed = torch.randint(0, 7, valid.shape, generator=torch.Generator().manual_seed(0))
    expected = torch.log_softmax(logits, -1).gather(-1, proposed[..., None]).squeeze(-1)
    torch.testing.assert_close(L.token_logprobs(logits, proposed), expected)
    padded = torch.where(valid, proposed, torch.full_like(proposed, -100))
    masked = L.token_logprobs(logits, padded, valid)
    torch.testing.assert_close(masked, expected * valid)


# ----------------------------------------------------------------------------- accept/discard, OSD

# Traces: 2 accepted then refused; 1 proposal, accepted; refused at once (2 proposals).
ACCEPT = torch.tensor([[T, T, F_, F_], [T, F_, F_, F_], [F_, F_, F_, F_]])
VALID_AD = torch.tensor([[T, T, T, T], [T, F_, F_, F_], [T, T, F_, F_]])
PROPOSED = torch.tensor([[1, 2, 3, 4], [5, -100, -100, -100], [6, 0, -100, -100]])


def unlikelihood_by_hand(logits, proposed, b, i):
    q = torch.softmax(logits.detach().double()[b, i], -1)
    return -math.log(1.0 - q[proposed[b, i]].item())


@pytest.mark.parametrize("name,kw", DIVERGENCE_CASES)
@pytest.mark.parametrize("discard_term", ["unlikelihood", "divergence"])
def test_accept_discard_lambda_zero_is_divergence_over_accepted(name, kw, discard_term):
    logits, p, _ = random_inputs(seed=11, zeros=True)
    loss = L.accept_discard_loss(
        logits, p, PROPOSED, ACCEPT, VALID_AD, 0.0, divergence=name, discard_term=discard_term, **kw
    )
    torch.testing.assert_close(loss, L.divergence(name, logits, p, ACCEPT, **kw))


def test_accept_discard_weighted_mean_normalisation():
    logits, p, _ = random_inputs(seed=12)
    lam = 0.5
    d = L.forward_kl(logits, p, VALID_AD, reduction="none")
    # accepted: (0,0), (0,1), (1,0); first rejected: (0,2), (2,0)
    num = d[0, 0] + d[0, 1] + d[1, 0] + lam * (
        unlikelihood_by_hand(logits, PROPOSED, 0, 2) + unlikelihood_by_hand(logits, PROPOSED, 2, 0)
    )
    expected = num / (3 + lam * 2)
    loss = L.accept_discard_loss(logits, p, PROPOSED, ACCEPT, VALID_AD, lam, discard_term="unlikelihood")
    torch.testing.assert_close(loss, expected)
    per_pos = L.accept_discard_loss(
        logits, p, PROPOSED, ACCEPT, VALID_AD, lam, discard_term="unlikelihood", reduction="none"
    )
    torch.testing.assert_close(per_pos.sum() / (3 + lam * 2), expected)
    assert per_pos[0, 3].item() == 0.0 and per_pos[2, 1].item() == 0.0  # never judged


def test_accept_discard_divergence_term_weights_every_discarded_position():
    logits, p, _ = random_inputs(seed=12)
    lam = 0.5
    d = L.forward_kl(logits, p, VALID_AD, reduction="none")
    # accepted: (0,0), (0,1), (1,0); discarded: (0,2), (0,3), (2,0), (2,1)
    num = d[0, 0] + d[0, 1] + d[1, 0] + lam * (d[0, 2] + d[0, 3] + d[2, 0] + d[2, 1])
    loss = L.accept_discard_loss(logits, p, PROPOSED, ACCEPT, VALID_AD, lam)
    torch.testing.assert_close(loss, num / (3 + lam * 4))
    assert L.discarded_positions(ACCEPT, VALID_AD).sum().item() == 4


def test_accept_discard_divergence_term_at_lambda_one_is_plain_distillation():
    logits, p, _ = random_inputs(seed=13)
    loss = L.accept_discard_loss(
        logits, p, PROPOSED, ACCEPT, VALID_AD, 1.0,
        divergence="reverse_kl", discard_term="divergence",
    )
    torch.testing.assert_close(loss, L.reverse_kl(logits, p, VALID_AD))


def test_accept_discard_without_accepted_positions_is_lambda_invariant():
    logits, p, _ = random_inputs(seed=14)
    accept = torch.zeros_like(ACCEPT)
    a = L.accept_discard_loss(logits, p, PROPOSED, accept, VALID_AD, 0.1, discard_term="unlikelihood")
    b = L.accept_discard_loss(logits, p, PROPOSED, accept, VALID_AD, 10.0, discard_term="unlikelihood")
    torch.testing.assert_close(a, b)
    # every trace's first proposal is its first rejected position
    by_hand = sum(unlikelihood_by_hand(logits, PROPOSED, b, 0) for b in range(3)) / 3
    assert a.item() == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("discard_term", ["unlikelihood", "divergence"])
def test_accept_discard_gradient_lowers_refused_token(discard_term):
    # One trace, k=2: proposal 0 accepted, proposal 1 (token 0) refused; the target puts no
    # mass on the refused token (greedy target picked token 1 there).
    logits = torch.tensor([[[1.0, 0.0, 0.0], [2.0, 0.5, 0.0]]], requires_grad=True)
    p = torch.tensor([[[0.6, 0.3, 0.1], [0.0, 1.0, 0.0]]])
    proposed = torch.tensor([[0, 0]])
    accept, valid = torch.tensor([[T, F_]]), torch.tensor([[T, T]])
    q_before = torch.softmax(logits.detach(), -1)[0, 1, 0].item()
    loss = L.accept_discard_loss(logits, p, proposed, accept, valid, 1.0, discard_term=discard_term)
    loss.backward()
    with torch.no_grad():
        q_after = torch.softmax(logits - 0.5 * logits.grad, -1)[0, 1, 0].item()
    assert q_after < q_before
    # lambda = 0: the refused position gets no gradient at all
    logits.grad = None
    loss = L.accept_discard_loss(logits, p, proposed, accept, valid, 0.0, discard_term=discard_term)
    loss.backward()
    assert torch.equal(logits.grad[0, 1], torch.zeros(3))


def test_unlikelihood_is_exact_and_finite_when_q_rounds_to_one():
    # Token 0 has logit 1e4, the other 4 have 0: -log(1 - q0) = lse(all) - lse(others)
    # = log(e^1e4 + 4) - log 4 = 1e4 - log 4 (to float precision), although 1 - q0 == 0 in float.
    logits = torch.tensor([[[1e4, 0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    value = L.unlikelihood(logits, torch.tensor([[0]]), ONE)
    assert value.item() == pytest.approx(1e4 - math.log(4), rel=1e-6)
    value.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() <= 1.0
    assert logits.grad[0, 0, 0] > 0  # descent lowers the refused token's logit


def test_osd_uses_only_first_rejected_positions():
    logits, p, _ = random_inputs(seed=15)
    refused = torch.tensor([[F_, F_, T, F_], [F_, F_, F_, F_], [T, F_, F_, F_]])
    loss = L.osd_loss(logits, p, ACCEPT, VALID_AD)
    torch.testing.assert_close(loss, L.forward_kl(logits, p, refused))
    # perturbing accepted (and never-judged) positions changes nothing
    wild = logits.detach().clone()
    wild[ACCEPT] += 100.0 * torch.randn_like(wild[ACCEPT])
    wild[0, 3] = -wild[0, 3] * 50
    torch.testing.assert_close(L.osd_loss(wild, p, ACCEPT, VALID_AD), loss)
    jsd = L.osd_loss(logits, p, ACCEPT, VALID_AD, divergence="jsd", beta=0.5, reduction="none")
    expected = L.generalized_jsd(logits, p, refused, beta=0.5, reduction="none")
    torch.testing.assert_close(jsd, expected)


def test_empty_selections_give_exact_zero():
    logits, p, _ = random_inputs(seed=16)
    all_accepted = VALID_AD.clone()
    osd = L.osd_loss(logits, p, all_accepted, VALID_AD)
    no_accept = torch.zeros_like(ACCEPT)
    none_accepted = L.accept_discard_loss(logits, p, PROPOSED, no_accept, VALID_AD, 0.0)
    nothing_valid = L.accept_discard_loss(
        logits, p, PROPOSED, torch.zeros_like(ACCEPT), torch.zeros_like(VALID_AD), 2.0
    )
    for value in (osd, none_accepted, nothing_valid):
        assert value.item() == 0.0
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("scale", [2.0, 1e4])
def test_rl_losses_finite_with_zero_target_probs(scale):
    logits, p, _ = random_inputs(seed=17, zeros=True, scale=scale)
    for loss in (
        L.accept_discard_loss(logits, p, PROPOSED, ACCEPT, VALID_AD, 1.0, divergence="reverse_kl"),
        L.accept_discard_loss(logits, p, PROPOSED, ACCEPT, VALID_AD, 1.0, "jsd", beta=0.9),
        L.osd_loss(logits, p, ACCEPT, VALID_AD, divergence="reverse_kl"),
        L.expected_acceptance_loss(logits, p, VALID_AD),
    ):
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_accept_discard_errors_are_exact():
    logits, p, _ = random_inputs()
    with raises("lambda_discard must be a finite number >= 0, got -1.0"):
        L.accept_discard_loss(logits, p, PROPOSED, ACCEPT, VALID_AD, -1.0)
    with raises("unknown discard_term 'ul'; valid names are 'unlikelihood', 'divergence'"):
        L.accept_discard_loss(logits, p, PROPOSED, ACCEPT, VALID_AD, 1.0, discard_term="ul")
    with raises("unknown divergence 'js'"):
        L.osd_loss(logits, p, ACCEPT, VALID_AD, divergence="js")


# ----------------------------------------------------------------------------- policy gradient


def two_token_step(mode, advantage, behavior_shift=0.0, lr=0.5):
    """One SGD step on a single position with logits [a, b] that proposed token 0.

    Returns (q0 before, q0 after, grad). behavior_shift sets log rho = behavior_shift.
    """
    logits = torch.tensor([[[0.3, -0.2]]], requires_grad=True)
    proposed = torch.tensor([[0]])
    logp = L.token_logprobs(logits, proposed)
    behavior = logp.detach() - behavior_shift
    loss = L.policy_gradient_loss(logp, behavior, torch.tensor([[advantage]]), ONE, mode=mode)
    loss.backward()
    q_before = torch.softmax(logits.detach(), -1)[0, 0, 0].item()
    with torch.no_grad():
        q_after = torch.softmax(logits - lr * logits.grad, -1)[0, 0, 0].item()
    return q_before, q_after, logits.grad.clone()


@pytest.mark.parametrize("mode", ["ppo_clip", "truncated_is"])
def test_pg_gradient_sign_on_two_token_toy(mode):
    q0, q1, _ = two_token_step(mode, +1.0)
    assert q1 > q0
    q0, q1, _ = two_token_step(mode, -1.0)
    assert q1 < q0


@pytest.mark.parametrize("mode", ["ppo_clip", "truncated_is"])
def test_pg_on_policy_is_reinforce(mode):
    logits, _, valid = random_inputs(seed=18)
    g = torch.Generator().manual_seed(1)
    proposed = torch.randint(0, 7, valid.shape, generator=g)
    adv = torch.randn(valid.shape, generator=g)
    logp = L.token_logprobs(logits, proposed, valid)
    loss = L.policy_gradient_loss(logp, logp.detach(), adv, valid, mode=mode)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    reinforce = -(adv * logp)[valid].mean()
    (expected,) = torch.autograd.grad(reinforce, logits)
    torch.testing.assert_close(grad, expected)


def test_ppo_clip_zero_gradient_past_the_clip_range():
    log_15 = math.log(1.5)
    # rho = 1.5 > 1.2 with A = +1: clipped, value -1.2, no gradient
    _, _, grad = two_token_step("ppo_clip", +1.0, behavior_shift=log_15)
    assert torch.equal(grad, torch.zeros_like(grad))
    # rho = 0.5 < 0.8 with A = -1: clipped, no gradient
    _, _, grad = two_token_step("ppo_clip", -1.0, behavior_shift=math.log(0.5))
    assert torch.equal(grad, torch.zeros_like(grad))
    # rho = 1.5 with A = -1: min picks the unclipped -1.5, gradient = rho * grad(log q0)
    _, _, grad = two_token_step("ppo_clip", -1.0, behavior_shift=log_15)
    q0 = torch.softmax(torch.tensor([0.3, -0.2]), -1)[0].item()
    # d log q0 / d logits = [1 - q0, -(1 - q0)]; loss = -rho*A = rho -> grad = rho * that
    torch.testing.assert_close(grad[0, 0], 1.5 * torch.tensor([1 - q0, -(1 - q0)]))
    # value check of the clipped case
    logp = torch.tensor([[0.0]], requires_grad=True)
    value = L.policy_gradient_loss(logp, torch.tensor([[-log_15]]), torch.tensor([[1.0]]), ONE)
    assert value.item() == pytest.approx(-1.2, rel=1e-6)


def test_truncated_is_caps_rho_at_rho_max():
    logits = torch.tensor([[[0.3, -0.2]]], requires_grad=True)
    logp = L.token_logprobs(logits, torch.tensor([[0]]))
    (reinforce,) = torch.autograd.grad(-logp.sum(), logits, retain_graph=True)  # A = 1, rho = 1
    for log_rho, weight in ((math.log(3.0), 1.0), (math.log(0.5), 0.5)):
        loss = L.policy_gradient_loss(
            logp, logp.detach() - log_rho, torch.tensor([[1.0]]), ONE,
            mode="truncated_is", rho_max=1.0,
        )
        assert loss.item() == pytest.approx(-weight * logp.item(), rel=1e-6)
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        torch.testing.assert_close(grad, weight * reinforce)


@pytest.mark.parametrize("mode", ["ppo_clip", "truncated_is"])
def test_pg_empty_mask_and_padding_garbage(mode):
    logp = torch.tensor([[-0.5, -1.0, 0.0]], requires_grad=True)
    behavior = torch.tensor([[-0.4, float("-inf"), float("nan")]])
    adv = torch.tensor([[1.0, 2.0, float("nan")]])
    nothing = torch.zeros(1, 3, dtype=torch.bool)
    empty = L.policy_gradient_loss(logp, behavior, adv, nothing, mode=mode)
    assert empty.item() == 0.0
    (grad,) = torch.autograd.grad(empty, logp)
    assert torch.equal(grad, torch.zeros_like(grad))
    some = L.policy_gradient_loss(logp, behavior, adv, torch.tensor([[T, F_, F_]]), mode=mode)
    (grad,) = torch.autograd.grad(some, logp)
    assert torch.isfinite(some) and torch.isfinite(grad).all() and grad[0, 1:].eq(0).all()


def test_pg_pipeline_prefers_longer_acceptance():
    # k=2, two traces: the first had both proposals accepted, the second was refused at once.
    # REINFORCE with the per-position baseline must raise the first trace's opening token and
    # lower the second's.
    logits = torch.zeros(2, 2, 3, requires_grad=True)
    proposed = torch.tensor([[0, 1], [2, 1]])
    accept = torch.tensor([[T, T], [F_, F_]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    mask = L.pg_positions(accept, valid)
    returns = L.reward_to_go(accept, valid)
    adv = returns - L.per_position_baseline(returns, mask)
    logp = L.token_logprobs(logits, proposed, valid)
    L.policy_gradient_loss(logp, logp.detach(), adv, mask).backward()
    # position 0: returns 2 and 0, baseline 1; position 1: only trace 0 counts, baseline 1
    assert adv[mask].tolist() == [1.0, 0.0, -1.0]
    assert logits.grad[0, 0, 0] < 0 and logits.grad[1, 0, 2] > 0  # descent: up token 0, down 2


def test_pg_errors_are_exact():
    x, m = torch.zeros(1, 1), ONE
    with raises("unknown mode 'ppo'; valid modes are 'ppo_clip', 'truncated_is'"):
        L.policy_gradient_loss(x, x, x, m, mode="ppo")
    with raises("clip_eps must be in (0, 1), got 1.5"):
        L.policy_gradient_loss(x, x, x, m, clip_eps=1.5)
    with raises("rho_max must be > 0, got 0.0"):
        L.policy_gradient_loss(x, x, x, m, mode="truncated_is", rho_max=0.0)


# ----------------------------------------------------------------------------- expected acceptance


def test_expected_accepted_length_closed_form():
    alpha = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    valid = torch.tensor([[T, T], [T, F_], [T, T], [T, T], [F_, F_]])
    # .5 + .25; .5 (second position absent); 1 + 1; 0 (first refused surely); nothing valid
    torch.testing.assert_close(
        L.expected_accepted_length(alpha, valid), torch.tensor([0.75, 0.5, 2.0, 0.0, 0.0])
    )


def test_expected_acceptance_loss_closed_form():
    # q = [.5, .5], p = [1, 0] at every position -> alpha = min sum = .5 + 0 = .5
    logits = torch.tensor([0.5, 0.5]).log().expand(2, 2, 2).clone().requires_grad_()
    p = torch.tensor([1.0, 0.0]).expand(2, 2, 2).clone()
    valid = torch.tensor([[T, T], [T, F_]])
    # trace 0: (.5 + .25) / 2 = .375; trace 1: .5 / 1 = .5; loss = -(.375 + .5) / 2 = -.4375
    loss = L.expected_acceptance_loss(logits, p, valid)
    assert loss.item() == pytest.approx(-0.4375, rel=1e-6)
    empty = L.expected_acceptance_loss(logits, p, torch.zeros_like(valid))
    assert empty.item() == 0.0 and not math.copysign(1.0, empty.item()) < 0
    (grad,) = torch.autograd.grad(empty, logits)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_gradient_descent_on_expected_acceptance_raises_alpha():
    logits, p, valid = random_inputs(seed=19, zeros=True)
    start = L.expected_accepted_length(L.acceptance_probs(logits, p), valid).detach()
    alpha_start = L.acceptance_probs(logits, p)[valid].detach()
    for _ in range(50):  # plain SGD, lr = 1 (torch.optim's first step costs ~2 s of imports)
        (grad,) = torch.autograd.grad(L.expected_acceptance_loss(logits, p, valid), logits)
        with torch.no_grad():
            logits -= grad
    end = L.expected_accepted_length(L.acceptance_probs(logits, p), valid).detach()
    alpha_end = L.acceptance_probs(logits, p)[valid].detach()
    assert (end > start).all()
    assert alpha_end.mean() > alpha_start.mean() + 0.1


def test_expected_acceptance_loss_follows_each_traces_verification_rule():
    # q = [.5, .5], p = [.7, .3]: a sampled verdict accepts with sum min(p, q) = .5 + .3 = .8,
    # a greedy one only when the draft's pick is argmax p, with probability q(0) = .5.
    logits = torch.tensor([0.5, 0.5]).log().expand(2, 1, 2).clone()
    p = torch.tensor([0.7, 0.3]).expand(2, 1, 2).clone()
    valid = torch.tensor([[T], [T]])
    greedy = torch.tensor([True, False])
    per_trace = L.expected_acceptance_loss(logits, p, valid, greedy=greedy, reduction="none")
    torch.testing.assert_close(per_trace, torch.tensor([-0.5, -0.8]))
    assert L.expected_acceptance_loss(logits, p, valid, greedy=greedy).item() == pytest.approx(-0.65)
    assert L.expected_acceptance_loss(logits, p, valid).item() == pytest.approx(-0.8)


def trace_batch(p, valid, accept, weights, temperature=None) -> TraceBatch:
    B, k, _ = p.shape
    return TraceBatch(
        context_ids=torch.zeros(B, 1, dtype=torch.long), context_mask=torch.ones(B, 1, dtype=torch.bool),
        context_features=None, proposed=torch.zeros(B, k, dtype=torch.long), valid_mask=valid, accept_mask=accept,
        behavior_logprobs=torch.zeros(B, k), target_probs=p,
        temperature=torch.ones(B) if temperature is None else temperature, draft_version=torch.zeros(B, dtype=torch.long),
        weights=weights, domains=[None] * B,
    )  # fmt: skip


# Trace 0 accepts 2 of 4, trace 1 none of 2, trace 2 its only proposal.
TRACE_ACCEPT = torch.tensor([[T, T, F_, F_], [F_, F_, F_, F_], [T, F_, F_, F_]])


def test_the_expected_acceptance_algorithm_trains_on_the_tested_loss(random_target_model):
    drafter = SmallLMDrafter(random_target_model)
    logits, p, valid = random_inputs(seed=23)
    B = p.shape[0]
    temperature = torch.tensor([0.0, 1.0] * (B // 2) + [1.0] * (B % 2))
    batch = trace_batch(p, valid, torch.zeros_like(valid), torch.ones(B), temperature)
    algorithm = make_algorithm(drafter, AlgoConfig(name="expected_acceptance"))
    loss, _ = algorithm.loss(logits, batch)
    expected = L.expected_acceptance_loss(logits, p, valid, greedy=batch.temperature == 0)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(
    "config, pure",
    [
        (AlgoConfig(name="accept_discard", lambda_discard=0.3),
         lambda lg, p, b, w: L.accept_discard_loss(lg, p, b.proposed, b.accept_mask, b.valid_mask, 0.3, trace_weights=w)),
        (AlgoConfig(name="accept_discard", lambda_discard=0.5, discard_term="unlikelihood"),
         lambda lg, p, b, w: L.accept_discard_loss(lg, p, b.proposed, b.accept_mask, b.valid_mask, 0.5,
                                                   discard_term="unlikelihood", trace_weights=w)),
        (AlgoConfig(name="osd"), lambda lg, p, b, w: L.osd_loss(lg, p, b.accept_mask, b.valid_mask, trace_weights=w)),
        (AlgoConfig(name="expected_acceptance"),
         lambda lg, p, b, w: L.expected_acceptance_loss(lg, p, b.valid_mask, b.temperature == 0, trace_weights=w)),
    ],
    ids=["accept_discard", "accept_discard_unlikelihood", "osd", "expected_acceptance"],
)  # fmt: skip
def test_algorithms_train_on_the_pure_losses_and_trace_weights_mean_what_they_say(random_target_model, config, pure):
    logits, p, valid = random_inputs(seed=5)
    weights = torch.tensor([0.5, 2.0, 0.0])
    batch = trace_batch(p, valid, TRACE_ACCEPT, weights)
    loss, _ = make_algorithm(SmallLMDrafter(random_target_model), config).loss(logits, batch)
    torch.testing.assert_close(loss, pure(logits, p, batch, weights))
    # Equal weights are no weights; a zero weight drops the trace as if it were not there.
    torch.testing.assert_close(pure(logits, p, batch, torch.full((3,), 4.0)), pure(logits, p, batch, None))
    first_two = trace_batch(p[:2], valid[:2], TRACE_ACCEPT[:2], weights[:2])
    torch.testing.assert_close(pure(logits, p, batch, weights), pure(logits[:2], p[:2], first_two, weights[:2]))
    # Weight 2 on a trace is that trace counted twice.
    doubled = trace_batch(p[[0, 1, 1]], valid[[0, 1, 1]], TRACE_ACCEPT[[0, 1, 1]], torch.ones(3))
    torch.testing.assert_close(pure(logits[:2], p[:2], first_two, torch.tensor([1.0, 2.0])),
                               pure(logits[[0, 1, 1]], p[[0, 1, 1]], doubled, None))  # fmt: skip


def test_expected_acceptance_trains_on_alpha_under_the_rule_each_verdict_used(random_target_model):
    # One position, q = [.6, .4], p = [.7, .3]. At temperature 0.5 both square and renormalise:
    # q' = [.36, .16] / .52, p' = [.49, .09] / .58, so alpha = min summed = .36/.52 + .09/.58.
    logits = torch.tensor([0.6, 0.4]).log().view(1, 1, 2).requires_grad_()
    p = torch.tensor([0.7, 0.3]).view(1, 1, 2)
    valid = torch.tensor([[T]])
    batch = dataclasses.replace(trace_batch(p, valid, torch.tensor([[F_]]), torch.ones(1)),
                                temperature=torch.tensor([0.5]), samplings=(SamplingParams(0.5),))  # fmt: skip
    algorithm = make_algorithm(SmallLMDrafter(random_target_model), AlgoConfig(name="expected_acceptance"))
    loss, _ = algorithm.loss(logits, batch)
    assert loss.item() == pytest.approx(-(0.36 / 0.52 + 0.09 / 0.58), abs=1e-6)
    # At temperature 1 the rule changes nothing: alpha = .6 + .3.
    plain = dataclasses.replace(batch, temperature=torch.tensor([1.0]), samplings=(SamplingParams(1.0),))
    assert algorithm.loss(logits, plain)[0].item() == pytest.approx(-0.9, abs=1e-6)
    # top-k = 1 keeps one token on both sides (q' = p' = [1, 0]): alpha = 1, and the gradient
    # through the cut-off token is zero, not NaN.
    top1 = dataclasses.replace(batch, temperature=torch.tensor([1.0]), samplings=(SamplingParams(1.0, top_k=1),))
    loss, _ = algorithm.loss(logits, top1)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0) and torch.isfinite(logits.grad).all()
