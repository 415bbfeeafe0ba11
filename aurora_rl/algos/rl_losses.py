"""Losses that use what the target did with the proposals: accept/discard, OSD, policy
gradient on accepted length, and expected acceptance.

Tensor conventions (see ``divergences`` for ``draft_logits``, ``target_probs``, ``valid_mask``):

- ``proposed``          (B, k) long: the draft's proposed token ids. Ids at positions a loss
  does not use are never read (padding may hold -100 or anything).
- ``accept_mask``       (B, k) bool, prefix-closed, ``accept_mask <= valid_mask``: which
  proposals the target accepted. Checked by ``check_masks`` (ValueError otherwise).
- ``behavior_logprobs`` (B, k) float: log q_old(proposed) under the draft version that
  proposed them.

Position sets, per trace with n accepted proposals:
- accepted: positions 0..n-1;
- first rejected: position n if it is valid -- the proposal the target refused. Later
  positions were discarded without being judged, so they say nothing about the draft;
- ``pg_positions``: accepted | first rejected, the positions whose action changed the outcome.

Every loss returns the mean over the positions it uses (each docstring says which and with
what weights), or (B, k) per-position terms with ``reduction="none"`` (0.0 elsewhere). An
empty selection gives an exact 0.0 with a (zero) gradient, never NaN. Where a loss takes
``trace_weights`` (B,), each trace's terms count that much in both the numerator and the
denominator of the mean (the buffer down-weights stale traces); None weighs them all 1. The
algorithms train on exactly these means.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from aurora_rl.algos import divergences
from aurora_rl.algos.divergences import check_reduction, reduce_positions, upcast, weighted_mean

DISCARD_TERMS = ("unlikelihood", "divergence")
PG_MODES = ("ppo_clip", "truncated_is")

# exp(20) ~ 5e8: log-ratios beyond +-20 are clamped before exp so a stale or corrupt
# behaviour log-prob cannot overflow the ratio to inf (inf·0 = NaN in backward). The clamp
# zeroes the gradient there, which for PPO's clipped branch it already is.
MAX_LOG_RATIO = 20.0


def check_masks(accept_mask: Tensor, valid_mask: Tensor) -> None:
    """Raise ValueError unless the masks are (B, k) bool, accept <= valid and accept is
    prefix-closed (True..True False..False). Costs one device sync."""
    if accept_mask.dtype != torch.bool or valid_mask.dtype != torch.bool:
        raise ValueError(
            f"accept_mask and valid_mask must be bool tensors, got {accept_mask.dtype} and "
            f"{valid_mask.dtype}"
        )
    if accept_mask.shape != valid_mask.shape:
        raise ValueError(
            f"accept_mask shape {tuple(accept_mask.shape)} must equal valid_mask shape "
            f"{tuple(valid_mask.shape)}"
        )
    if bool((accept_mask & ~valid_mask).any()):
        raise ValueError("accept_mask marks a position that valid_mask says does not exist")
    if bool((accept_mask[..., 1:] & ~accept_mask[..., :-1]).any()):
        raise ValueError(
            "accept_mask must be prefix-closed (True..True, False..False) per trace; a "
            "proposal after a rejection is never judged by the target"
        )


def first_rejected(accept_mask: Tensor, valid_mask: Tensor) -> Tensor:
    """(B, k) bool: the first valid, not-accepted position of each trace (at most one)."""
    rejected = valid_mask & ~accept_mask
    return rejected & (rejected.cumsum(-1) == 1)


def pg_positions(accept_mask: Tensor, valid_mask: Tensor) -> Tensor:
    """(B, k) bool: accepted positions plus the first rejected one of each trace -- the
    actions that influenced the accepted length. [T, F, F] -> [T, T, F]."""
    check_masks(accept_mask, valid_mask)
    return (accept_mask & valid_mask) | first_rejected(accept_mask, valid_mask)


def token_logprobs(
    draft_logits: Tensor, proposed: Tensor, valid_mask: Tensor | None = None
) -> Tensor:
    """log q(proposed) per position, shape (B, k), from (B, k, V) logits and (B, k) ids.

    With ``valid_mask``, positions outside it give 0.0 and their ids are not read.
    """
    logits = upcast(draft_logits)
    if valid_mask is not None:
        proposed = torch.where(valid_mask, proposed, torch.zeros_like(proposed))
    # gather - logsumexp avoids materialising a second (B, k, V) tensor of log-probs.
    values = logits.gather(-1, proposed.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    if valid_mask is None:
        return values
    return torch.where(valid_mask, values, torch.zeros_like(values))


def unlikelihood(draft_logits: Tensor, proposed: Tensor, mask: Tensor) -> Tensor:
    """-log(1 - q(proposed)) per position, shape (B, k); 0.0 outside ``mask``.

    Computed as logsumexp over all x minus logsumexp over x != proposed, which is exact and
    finite for any finite logits, even where q(proposed) rounds to 1. No clamp is needed, and
    a clamp on 1 - q would zero the gradient exactly where q(proposed) -> 1, where the push
    matters most. Gradients w.r.t. the logits stay in [-1, 1]. Needs V >= 2.
    """
    if draft_logits.shape[-1] < 2:
        raise ValueError(
            f"unlikelihood needs a vocabulary of at least 2 tokens, got {draft_logits.shape[-1]}"
        )
    logits = upcast(draft_logits)
    ids = torch.where(mask, proposed, torch.zeros_like(proposed)).unsqueeze(-1)
    others = logits.scatter(-1, ids, float("-inf")).logsumexp(-1)
    values = logits.logsumexp(-1) - others
    return torch.where(mask, values, torch.zeros_like(values))


def discarded_positions(accept_mask: Tensor, valid_mask: Tensor) -> Tensor:
    """(B, k) bool: valid proposals the target did not keep -- the refused one and every
    proposal after it, all thrown away. [T, F, F] (all valid) -> [F, T, T]."""
    return valid_mask & ~accept_mask


def accept_discard_loss(
    draft_logits: Tensor,
    target_probs: Tensor,
    proposed: Tensor,
    accept_mask: Tensor,
    valid_mask: Tensor,
    lambda_discard: float,
    divergence: str = "forward_kl",
    discard_term: str = "divergence",
    reduction: str = "mean",
    trace_weights: Tensor | None = None,
    **divergence_kw,
) -> Tensor:
    """Accepted proposals as positive feedback, discarded ones weighted by ``lambda_discard``.

    Per position:
    - accepted: D = ``divergence`` to the target (``divergence_kw``, e.g. ``beta``, go to it);
    - discarded, with ``discard_term="divergence"`` (default): lambda_discard · D at every
      valid proposal the target did not keep (``discarded_positions``). The target scored
      all of them in the same verify pass, so its distribution there is known even though
      the tokens were thrown away -- the implicit feedback of a rejection;
    - refused, with ``discard_term="unlikelihood"``: lambda_discard · U at the *first*
      rejected position only, U = ``unlikelihood`` -log(1 - q(proposed)) (push the refused
      token down; later proposals were never judged, so they are not pushed);
    - everything else: not used.

    Normalisation: a weighted mean with weight 1 per accepted position and lambda_discard
    per discard position,
        loss = (sum_acc D + lambda · sum_disc U) / (n_acc + lambda · n_disc),
    so lambda sets the relative weight of the two parts while the loss keeps the scale of a
    per-position term for every lambda. At lambda = 0 it is exactly the mean divergence over
    accepted positions; with ``discard_term="divergence"`` and lambda = 1 it is the plain
    mean divergence over all valid positions (ordinary distillation). With no accepted
    position and lambda > 0 it is the mean discard term whatever lambda is. Empty
    (denominator 0): exact 0.0. ``reduction="none"`` gives the (B, k) weighted terms (D,
    lambda·U, or 0.0), whose sum over the denominator above is the mean. Raises ValueError
    on a negative or non-finite lambda, an unknown ``discard_term`` or ``divergence`` name,
    or bad masks.
    """
    lam = float(lambda_discard)
    if not (math.isfinite(lam) and lam >= 0.0):
        raise ValueError(f"lambda_discard must be a finite number >= 0, got {lambda_discard}")
    if discard_term not in DISCARD_TERMS:
        raise ValueError(
            f"unknown discard_term {discard_term!r}; valid names are 'unlikelihood', 'divergence'"
        )
    check_reduction(reduction)
    check_masks(accept_mask, valid_mask)
    accepted = accept_mask & valid_mask
    discard = discard_positions_for(discard_term, accept_mask, valid_mask)
    used = accepted | discard
    div = divergences.divergence(
        divergence, draft_logits, target_probs, used, reduction="none", **divergence_kw
    )
    if discard_term == "unlikelihood":
        discard_values = unlikelihood(draft_logits, proposed, discard)
    else:
        discard_values = div
    values = torch.where(accepted, div, lam * discard_values)
    values = torch.where(used, values, torch.zeros_like(values))
    if reduction == "none":
        return values
    return weighted_mean(values, accepted.to(values.dtype) + lam * discard.to(values.dtype), trace_weights)


def discard_positions_for(discard_term: str, accept_mask: Tensor, valid_mask: Tensor) -> Tensor:
    """Where ``accept_discard_loss`` applies its discard term: every discarded position for
    ``"divergence"``, only the first rejected one for ``"unlikelihood"``."""
    if discard_term == "unlikelihood":
        return first_rejected(accept_mask, valid_mask)
    return discarded_positions(accept_mask, valid_mask)


def osd_loss(
    draft_logits: Tensor,
    target_probs: Tensor,
    accept_mask: Tensor,
    valid_mask: Tensor,
    divergence: str = "forward_kl",
    reduction: str = "mean",
    trace_weights: Tensor | None = None,
    **divergence_kw,
) -> Tensor:
    """Online Speculative Decoding (Liu et al. 2023): distil only where the draft was wrong.

    ``divergence`` (with ``divergence_kw``) at each trace's first rejected position, mean over
    those positions (at most one per trace); accepted positions and the never-judged ones
    after the rejection are ignored. A batch with no rejection gives an exact 0.0.
    """
    check_reduction(reduction)
    check_masks(accept_mask, valid_mask)
    refused = first_rejected(accept_mask, valid_mask)
    values = divergences.divergence(
        divergence, draft_logits, target_probs, refused, reduction="none", **divergence_kw
    )
    return values if reduction == "none" else weighted_mean(values, refused, trace_weights)


def reward_to_go(accept_mask: Tensor, valid_mask: Tensor) -> Tensor:
    """Reward-to-go G_i = sum_{j >= i} r_j with r_j = 1 if proposal j was accepted, (B, k) float.

    With prefix-closed acceptance of n proposals, G_i = n - i (0-based i < n) and 0 from the
    first rejection on; 0.0 at invalid positions. [T, T, F, F] -> [2, 1, 0, 0].
    """
    check_masks(accept_mask, valid_mask)
    rewards = (accept_mask & valid_mask).float()
    returns = rewards.flip(-1).cumsum(-1).flip(-1)
    return torch.where(valid_mask, returns, torch.zeros_like(returns))


def per_position_baseline(returns: Tensor, mask: Tensor) -> Tensor:
    """Mean return at each position over the traces where ``mask`` holds, shape (k,), detached.

    b_i = mean_{b: mask[b, i]} returns[b, i], 0.0 at a position no trace has. Broadcasts
    against (B, k): ``advantages = returns - per_position_baseline(returns, mask)``.
    """
    returns = returns.detach()
    total = torch.where(mask, returns, torch.zeros_like(returns)).sum(0)
    return total / mask.sum(0).clamp_min(1)


def policy_gradient_loss(
    logp_new: Tensor,
    behavior_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    mode: str = "ppo_clip",
    rho_max: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Off-policy-corrected policy-gradient surrogate, mean over ``mask`` (usually
    ``pg_positions``). All inputs (B, k); ``logp_new`` = log q_theta(proposed) with grad.

    rho = exp(logp_new - behavior_logprobs) (log-ratio clamped to +-``MAX_LOG_RATIO``).
    - "ppo_clip":     -mean min(rho·A, clip(rho, 1 - clip_eps, 1 + clip_eps)·A); the gradient
      is zero where rho is already past the clip range in the direction A favours;
    - "truncated_is": -mean sg(min(rho, rho_max))·A·logp_new (sg = stop-gradient).
    On-policy (rho = 1) both have the REINFORCE gradient of -mean A·log q (their values
    differ). ``advantages`` and ``behavior_logprobs`` are detached. Positions outside ``mask``
    may hold any values, including -inf behaviour log-probs. Raises ValueError on an unknown
    ``mode``, clip_eps outside (0, 1) or rho_max <= 0.
    """
    if mode not in PG_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes are 'ppo_clip', 'truncated_is'")
    if not 0.0 < clip_eps < 1.0:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
    if not rho_max > 0.0:
        raise ValueError(f"rho_max must be > 0, got {rho_max}")
    check_reduction(reduction)
    # Zero advantages outside the mask: garbage there (NaN, inf) would otherwise reach the
    # gradient of logp_new as NaN·0 through the truncated-IS product.
    advantages = torch.where(mask, advantages.detach(), torch.zeros_like(advantages))
    log_ratio = torch.where(
        mask, logp_new - behavior_logprobs.detach(), torch.zeros_like(logp_new)
    )
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    if mode == "ppo_clip":
        clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
        values = -torch.minimum(ratio * advantages, clipped * advantages)
    else:
        weight = ratio.clamp_max(rho_max).detach()
        values = -weight * advantages * logp_new
    return reduce_positions(values, mask, reduction)


def expected_accepted_length(alpha: Tensor, valid_mask: Tensor) -> Tensor:
    """Expected number of accepted proposals per trace, shape (B,), from (B, k) alpha.

    E[n] = sum_i prod_{j <= i} alpha_j over valid positions: proposal i is accepted iff all of
    0..i are. alpha is taken as 0 from the first invalid position on (nothing to accept
    there). alpha = [0.5, 0.5] -> 0.5 + 0.25 = 0.75.
    """
    alpha = torch.where(valid_mask, alpha, torch.zeros_like(alpha))
    return torch.cumprod(alpha, dim=-1).sum(-1)


def expected_acceptance_loss(
    draft_logits: Tensor,
    target_probs: Tensor,
    valid_mask: Tensor,
    greedy: Tensor | None = None,
    reduction: str = "mean",
    trace_weights: Tensor | None = None,
) -> Tensor:
    """-mean over traces of E[accepted length] / (#valid positions of the trace), in [-1, 0].

    alpha follows the verification rule each trace was judged by: ``acceptance_probs``
    sum_x min(p, q) for sampled traces, and q(argmax p) -- the chance the draft's pick is the
    target's -- for traces marked in ``greedy`` (B,) bool (None = all sampled). It is taken
    along the proposed path. Normalising each trace by its own #valid makes every trace's
    term an acceptance rate in [0, 1], so traces with fewer proposals weigh as much as full
    ones and the scale does not depend on k. Traces with no valid position are left out of
    the mean; if none has one the loss is an exact 0.0. ``reduction="none"`` gives the (B,)
    per-trace terms (0.0 where a trace has no valid position). Minimising it maximises
    expected acceptance.
    """
    divergences.check_shapes(draft_logits, target_probs, valid_mask)
    check_reduction(reduction)
    if greedy is not None:
        one_hot = torch.nn.functional.one_hot(target_probs.argmax(-1), target_probs.shape[-1]).to(target_probs.dtype)
        target_probs = torch.where(greedy[:, None, None], one_hot, target_probs)
    alpha = divergences.acceptance_probs(draft_logits, target_probs)
    length = expected_accepted_length(alpha, valid_mask)
    n_valid = valid_mask.sum(-1)
    values = -length / n_valid.clamp_min(1)
    values = torch.where(n_valid > 0, values, torch.zeros_like(values))
    return values if reduction == "none" else weighted_mean(values, n_valid > 0, trace_weights)
