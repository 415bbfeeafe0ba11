"""Divergences between the draft and the target at the proposal positions.

Pure functions over the trace tensor conventions:

- ``draft_logits``  (B, k, V) float: raw draft logits at the k proposal positions, with grad.
  q = softmax(draft_logits).
- ``target_probs``  (B, k, V) float: target distribution p. Rows sum to 1 and may hold exact
  zeros (traces may keep only the target's top-K and renormalise). Never has grad; it is
  detached here so a caller's mistake cannot leak gradient into the target.
- ``valid_mask``    (B, k) bool: which positions exist (False = padding).

Reductions: ``reduction="mean"`` returns the mean of the per-position value over the positions
in the mask; ``reduction="none"`` returns the (B, k) per-position values with 0.0 wherever the
mask is False. When the mask is empty the mean is an exact 0.0 that still carries a (zero)
gradient, never NaN. Padding may hold any finite values: it changes neither the value nor the
gradient at real positions, and receives exactly zero gradient.

Half-precision inputs are computed in float32: log-softmax and p·log p lose too much in
bf16/fp16 for a KL of a few hundredths to mean anything.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Floor for target probabilities inside log p (reverse KL, and generalized JSD at beta=1). A
# zero in target_probs usually means "outside the stored top-K", i.e. small but unknown, not
# impossible; flooring at 1e-8 charges draft mass there about -log(1e-8) ~ 18.4 nats per unit
# instead of infinity, keeping the loss and its gradient finite.
PROB_EPS = 1e-8

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tv")
REDUCTIONS = ("mean", "none")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the True entries of ``mask`` (same shape), as a 0-d tensor.

    Returns an exact 0.0 when ``mask`` is empty; it stays connected to ``values`` so
    ``backward()`` works and gives zero gradient. ``torch.where`` (not multiplication) keeps
    non-finite values at masked-out entries from turning the sum into NaN.
    """
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1)


def weighted_mean(values: Tensor, position_weight: Tensor, trace_weights: Tensor | None = None) -> Tensor:
    """``sum(values * w) / sum(position_weight * w)``, ``w`` the per-trace weights ``(B,)``
    broadcast over positions (None = every trace weighs 1), as a 0-d tensor.

    ``values`` (``(B,)`` per trace or ``(B, k)`` per position) already hold each term with its
    weight (0.0 where unused); ``position_weight`` (same shape, bool or float) is each term's
    share of the denominator. An empty denominator gives an exact 0.0 that keeps a gradient path.
    """
    if trace_weights is None:
        trace_weights = torch.ones(values.shape[0], dtype=values.dtype, device=values.device)
    w = trace_weights.to(values.dtype).reshape(-1, *[1] * (values.dim() - 1))
    denominator = (position_weight.to(values.dtype) * w).sum()
    return (values * w).sum() / denominator.clamp_min(1e-12) if denominator > 0 else (values * 0).sum()


def check_reduction(reduction: str) -> None:
    """Raise ValueError unless ``reduction`` is one of ``REDUCTIONS``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def reduce_positions(values: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` to (B, k) per-position ``values`` over the positions in ``mask``."""
    check_reduction(reduction)
    if reduction == "mean":
        return masked_mean(values, mask)
    return torch.where(mask, values, torch.zeros_like(values))


def upcast(x: Tensor) -> Tensor:
    """``x`` in float32 if it is half precision, else unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_shapes(draft_logits: Tensor, target_probs: Tensor, valid_mask: Tensor | None) -> None:
    if target_probs.shape != draft_logits.shape:
        raise ValueError(
            f"target_probs shape {tuple(target_probs.shape)} must equal draft_logits shape "
            f"{tuple(draft_logits.shape)} (B, k, V); store the target over the draft's vocabulary"
        )
    if valid_mask is None:
        return
    if valid_mask.shape != draft_logits.shape[:-1]:
        raise ValueError(
            f"valid_mask shape {tuple(valid_mask.shape)} must be draft_logits shape without the "
            f"vocab axis, {tuple(draft_logits.shape[:-1])}"
        )
    if valid_mask.dtype != torch.bool:
        raise ValueError(f"valid_mask must be a bool tensor, got dtype {valid_mask.dtype}")


def _prepare(draft_logits: Tensor, target_probs: Tensor, valid_mask: Tensor | None):
    """Checked (log q, p), both (B, k, V)."""
    check_shapes(draft_logits, target_probs, valid_mask)
    log_q = torch.log_softmax(upcast(draft_logits), dim=-1)
    p = upcast(target_probs.detach()).to(log_q.dtype)
    return log_q, p


def forward_kl(
    draft_logits: Tensor, target_probs: Tensor, valid_mask: Tensor, reduction: str = "mean"
) -> Tensor:
    """KL(p || q) = sum_x p(x) (log p(x) - log q(x)) per position; mean over valid positions.

    Mass-covering: the draft is charged for missing target mass. Zeros in p contribute
    0 (0·log 0 = 0, via ``xlogy``). Shapes: (B, k, V), (B, k, V), (B, k) -> scalar, or (B, k)
    with ``reduction="none"``.
    """
    check_reduction(reduction)
    log_q, p = _prepare(draft_logits, target_probs, valid_mask)
    values = (torch.xlogy(p, p) - p * log_q).sum(-1)
    return reduce_positions(values, valid_mask, reduction)


def reverse_kl(
    draft_logits: Tensor,
    target_probs: Tensor,
    valid_mask: Tensor,
    reduction: str = "mean",
    eps: float = PROB_EPS,
) -> Tensor:
    """KL(q || p) = sum_x q(x) (log q(x) - log p(x)) per position; mean over valid positions.

    Mode-seeking. log p is taken of ``p.clamp_min(eps)`` (see ``PROB_EPS``), so draft mass on
    a token with p = 0 costs ``-log(eps)`` nats per unit instead of infinity. Shapes as in
    ``forward_kl``.
    """
    check_reduction(reduction)
    log_q, p = _prepare(draft_logits, target_probs, valid_mask)
    values = (log_q.exp() * (log_q - torch.log(p.clamp_min(eps)))).sum(-1)
    return reduce_positions(values, valid_mask, reduction)


def generalized_jsd(
    draft_logits: Tensor,
    target_probs: Tensor,
    valid_mask: Tensor,
    beta: float = 0.5,
    reduction: str = "mean",
    eps: float = PROB_EPS,
) -> Tensor:
    """Generalized Jensen-Shannon divergence with TRL GKD semantics; mean over valid positions.

    - beta = 0: exactly ``forward_kl`` KL(p || q);
    - beta = 1: exactly ``reverse_kl`` KL(q || p) (uses ``eps``);
    - 0 < beta < 1: beta·KL(p || m) + (1 - beta)·KL(q || m), m = beta·p + (1 - beta)·q.
      beta = 0.5 is the textbook JS divergence, bounded by log 2.

    As in TRL, the endpoints are special cases, not limits: the mixture form tends to 0 as beta
    tends to 0 or 1. m > 0 wherever q > 0, so no clamp is needed strictly inside (0, 1).
    Raises ValueError unless 0 <= beta <= 1. Shapes as in ``forward_kl``.
    """
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(draft_logits, target_probs, valid_mask, reduction=reduction)
    if beta == 1.0:
        return reverse_kl(draft_logits, target_probs, valid_mask, reduction=reduction, eps=eps)
    check_reduction(reduction)
    log_q, p = _prepare(draft_logits, target_probs, valid_mask)
    # log m in log space: log q is finite for finite logits, so log m is finite even where
    # p = 0 (log p = -inf) or where q underflows in probability space.
    log_m = torch.logaddexp(log_q + math.log1p(-beta), torch.log(p) + math.log(beta))
    kl_p_m = (torch.xlogy(p, p) - p * log_m).sum(-1)
    kl_q_m = (log_q.exp() * (log_q - log_m)).sum(-1)
    values = beta * kl_p_m + (1.0 - beta) * kl_q_m
    return reduce_positions(values, valid_mask, reduction)


def total_variation(
    draft_logits: Tensor, target_probs: Tensor, valid_mask: Tensor, reduction: str = "mean"
) -> Tensor:
    """TV(p, q) = 1/2 sum_x |p(x) - q(x)| per position, in [0, 1]; mean over valid positions.

    1 - TV is the acceptance probability of the rejection rule, sum_x min(p, q)
    (``acceptance_probs``), so minimising TV maximises per-position acceptance.
    Shapes as in ``forward_kl``.
    """
    check_reduction(reduction)
    log_q, p = _prepare(draft_logits, target_probs, valid_mask)
    values = 0.5 * (p - log_q.exp()).abs().sum(-1)
    return reduce_positions(values, valid_mask, reduction)


def acceptance_probs(draft_logits: Tensor, target_probs: Tensor) -> Tensor:
    """Per-position acceptance probability alpha = sum_x min(p(x), q(x)), shape (B, k).

    The probability that the Leviathan/Chen rule accepts a token sampled from q at that
    position (= 1 - TV). Not masked: padding positions hold whatever their inputs give.
    """
    log_q, p = _prepare(draft_logits, target_probs, None)
    return torch.minimum(p, log_q.exp()).sum(-1)


def divergence(
    name: str, draft_logits: Tensor, target_probs: Tensor, valid_mask: Tensor, **kw
) -> Tensor:
    """The divergence called ``name`` ("forward_kl", "reverse_kl", "jsd", "tv").

    ``kw`` goes to that function (``reduction``; ``beta`` for "jsd"; ``eps`` for
    "reverse_kl" and "jsd"). Raises ValueError listing the valid names.
    """
    if name == "forward_kl":
        return forward_kl(draft_logits, target_probs, valid_mask, **kw)
    elif name == "reverse_kl":
        return reverse_kl(draft_logits, target_probs, valid_mask, **kw)
    elif name == "jsd":
        return generalized_jsd(draft_logits, target_probs, valid_mask, **kw)
    elif name == "tv":
        return total_variation(draft_logits, target_probs, valid_mask, **kw)
    raise ValueError(
        f"unknown divergence {name!r}; valid names are {', '.join(map(repr, DIVERGENCES))}"
    )
