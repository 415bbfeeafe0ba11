"""The algorithm zoo: each class maps a ``TraceBatch`` and draft logits to one loss.

The math lives in ``divergences`` / ``rl_losses`` as pure functions, and these classes train
on their means -- the ones the closed-form tests check -- passing the buffer's per-trace
weights (stale traces down-weighted) as ``trace_weights``; they only choose the function
and its arguments.
"""

from __future__ import annotations

import torch

from aurora_rl.algos import losses as L
from aurora_rl.algos.base import Algorithm, weighted_mean
from aurora_rl.core.batch import TraceBatch


class Distillation(Algorithm):
    """Divergence to the target at every verified position (forward/reverse KL, JSD, TV)."""

    def loss(self, logits: torch.Tensor, batch: TraceBatch):
        kw = {"beta": self.config.beta} if self.config.name == "jsd" else {}
        values = L.divergence(self.config.name, logits, batch.target_probs, batch.valid_mask, reduction="none", **kw)
        return weighted_mean(values, batch.valid_mask, batch.weights), {}


class AcceptDiscard(Algorithm):
    """Accepted proposals as positive feedback; discarded ones weighted by lambda_discard."""

    def loss(self, logits: torch.Tensor, batch: TraceBatch):
        c = self.config
        kw = {"beta": c.beta} if c.divergence == "jsd" else {}
        loss = L.accept_discard_loss(
            logits, batch.target_probs, batch.proposed, batch.accept_mask, batch.valid_mask, c.lambda_discard,
            divergence=c.divergence, discard_term=c.discard_term, trace_weights=batch.weights, **kw,
        )  # fmt: skip
        return loss, {}


class OnlineSpeculativeDecoding(Algorithm):
    """OSD (Liu et al. 2023): distil only at the position where the draft was wrong."""

    def loss(self, logits: torch.Tensor, batch: TraceBatch):
        c = self.config
        kw = {"beta": c.beta} if c.divergence == "jsd" else {}
        loss = L.osd_loss(logits, batch.target_probs, batch.accept_mask, batch.valid_mask, c.divergence,
                          trace_weights=batch.weights, **kw)  # fmt: skip
        return loss, {}


class PolicyGradient(Algorithm):
    """REINFORCE on accepted length: reward-to-go per position, a per-position baseline,
    and a clipped importance ratio for traces proposed by older draft versions."""

    needs_exploration = True

    def loss(self, logits: torch.Tensor, batch: TraceBatch):
        c = self.config
        logp = L.token_logprobs(logits, batch.proposed, batch.valid_mask)
        returns = L.reward_to_go(batch.accept_mask, batch.valid_mask)
        mask = L.pg_positions(batch.accept_mask, batch.valid_mask)
        advantages = returns - L.per_position_baseline(returns, mask)
        values = L.policy_gradient_loss(
            logp, batch.behavior_logprobs, advantages, mask, c.clip_eps, c.pg_mode, c.rho_max, reduction="none"
        )
        loss = weighted_mean(values, mask, batch.weights)
        if c.pg_kl_coef > 0:
            anchor = L.forward_kl(logits, batch.target_probs, batch.valid_mask, reduction="none")
            loss = loss + c.pg_kl_coef * weighted_mean(anchor, batch.valid_mask, batch.weights)
        return loss, {"losses/mean_return": float(returns[mask].mean()) if mask.any() else 0.0}


class ExpectedAcceptance(Algorithm):
    """Maximise the differentiable expected accepted length sum_i prod_{j<=i} alpha_j
    (``expected_acceptance_loss``), trace-weighted, with alpha under each trace's own
    verification rule: greedy, or sampled with its temperature, top-k and top-p."""

    def loss(self, logits: torch.Tensor, batch: TraceBatch):
        greedy = batch.temperature == 0
        draft, target = batch.under_sampling_rules(logits)  # alpha as each verdict computed it
        loss = L.expected_acceptance_loss(draft, target, batch.valid_mask, greedy, trace_weights=batch.weights)
        with torch.no_grad():  # minus each trace's expected acceptance rate, (B,)
            per_trace = L.expected_acceptance_loss(draft, target, batch.valid_mask, greedy, reduction="none")
        expected = -per_trace * batch.valid_mask.sum(-1)
        return loss, {"losses/expected_accepted": float(expected.mean())}


def make_algorithm(policy, config, accelerator=None) -> Algorithm:
    """The one place a config name becomes an algorithm."""
    name = config.name
    if name in ("forward_kl", "reverse_kl", "jsd", "tv"):
        return Distillation(policy, config, accelerator)
    elif name == "accept_discard":
        return AcceptDiscard(policy, config, accelerator)
    elif name == "osd":
        return OnlineSpeculativeDecoding(policy, config, accelerator)
    elif name == "pg":
        return PolicyGradient(policy, config, accelerator)
    elif name == "expected_acceptance":
        return ExpectedAcceptance(policy, config, accelerator)
    raise ValueError(f"unknown algorithm {name!r}")
