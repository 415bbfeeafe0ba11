"""Acceptance rules: which draft proposals the target keeps, and the token it adds.

Pure, batched functions; all randomness comes from an explicit ``torch.Generator``.

Shapes: ``B`` sequences, ``k`` proposals each, vocabulary ``V``. ``target_probs`` has
``k + 1`` rows: row ``i`` is the target's distribution for the token *at* proposal
position ``i`` (given the context and proposals ``< i``); row ``k`` is the bonus position
used when every proposal is accepted.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Verdict(NamedTuple):
    """Outcome of verifying ``k`` proposals per sequence.

    Attributes:
        accept_mask: ``(B, k)`` bool, prefix-closed: True for the accepted proposals.
        num_accepted: ``(B,)`` long, the number of leading accepted proposals ``n``.
        next_token: ``(B,)`` long, the token the target adds after the accepted prefix:
            the correction at position ``n`` when ``n < k``, else the bonus token.
    """

    accept_mask: torch.Tensor
    num_accepted: torch.Tensor
    next_token: torch.Tensor


def _leading_true(mask: torch.Tensor) -> torch.Tensor:
    """``(B, k)`` bool -> prefix-closed mask keeping only the leading run of True."""
    return mask.long().cumprod(dim=-1).bool()


def greedy_verdict(proposed: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """Temperature-0 rule: accept while the proposal equals the target's argmax.

    Args:
        proposed: ``(B, k)`` long draft tokens.
        target_logits: ``(B, k + 1, V)`` target logits (or probabilities: only argmax is used).
    """
    target_choice = target_logits.argmax(-1)  # (B, k + 1)
    accept_mask = _leading_true(proposed == target_choice[:, :-1])
    num_accepted = accept_mask.sum(-1)
    next_token = target_choice.gather(1, num_accepted[:, None]).squeeze(1)
    return Verdict(accept_mask, num_accepted, next_token)


def rejection_verdict(
    proposed: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> Verdict:
    """The lossless speculative-sampling rule (Leviathan et al. 2023; Chen et al. 2023).

    Proposal ``i`` is accepted with probability ``min(1, p_i(x) / q_i(x))``; at the first
    rejection the target's token is drawn from ``norm(max(0, p_i - q_i))``; when all ``k``
    are accepted a bonus token is drawn from ``p_k``. If every proposal ``x_i ~ q_i``, the
    emitted tokens are distributed exactly as sampling from ``p`` alone.

    Args:
        proposed: ``(B, k)`` long tokens, each drawn from the matching ``draft_probs`` row.
        draft_probs: ``(B, k, V)`` the distributions the proposals were drawn from.
        target_probs: ``(B, k + 1, V)`` the target's distributions, shaped by the same
            temperature / top-k / top-p transform as ``draft_probs``.
        generator: the only source of randomness.
    """
    batch, k = proposed.shape
    p = target_probs.float()
    q = draft_probs.float()
    p_of_x = p[:, :k].gather(-1, proposed[..., None]).squeeze(-1)
    q_of_x = q.gather(-1, proposed[..., None]).squeeze(-1)
    # q(x) > 0 whenever x was really drawn from q; the clamp only keeps a malformed
    # proposal from producing NaN (such a token is then accepted iff p(x) > 0).
    ratio = p_of_x / q_of_x.clamp_min(torch.finfo(torch.float32).tiny)
    uniform = torch.rand((batch, k), generator=generator, device=proposed.device)
    accept_mask = _leading_true(uniform < ratio)
    num_accepted = accept_mask.sum(-1)

    rows = torch.arange(batch, device=proposed.device)
    p_next = p[rows, num_accepted]  # (B, V): p at the first rejection, or the bonus row
    q_padded = torch.cat([q, q.new_zeros(batch, 1, q.shape[-1])], dim=1)  # bonus row: residual = p
    residual = (p_next - q_padded[rows, num_accepted]).clamp_min(0.0)
    mass = residual.sum(-1, keepdim=True)
    # The residual has zero mass only when p == q at that row, in which case the row was
    # accepted with probability 1; fall back to p for numerical safety.
    next_dist = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_next)
    next_token = torch.multinomial(next_dist, 1, generator=generator).squeeze(1)
    return Verdict(accept_mask, num_accepted, next_token)
