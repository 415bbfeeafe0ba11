"""Pure loss functions of the algorithm zoo, in one import.

``divergences``: draft-vs-target divergences per proposal position (forward/reverse KL,
generalized JSD, total variation, acceptance probability). ``rl_losses``: losses that use the
verification outcome (accept/discard, OSD, policy gradient on accepted length, expected
acceptance). Tensor conventions are in those modules' docstrings.
"""

from aurora_rl.algos.divergences import (
    DIVERGENCES,
    PROB_EPS,
    acceptance_probs,
    divergence,
    forward_kl,
    generalized_jsd,
    masked_mean,
    reverse_kl,
    total_variation,
)
from aurora_rl.algos.rl_losses import (
    MAX_LOG_RATIO,
    accept_discard_loss,
    check_masks,
    discard_positions_for,
    discarded_positions,
    expected_accepted_length,
    expected_acceptance_loss,
    first_rejected,
    osd_loss,
    per_position_baseline,
    pg_positions,
    policy_gradient_loss,
    reward_to_go,
    token_logprobs,
    unlikelihood,
)

__all__ = [
    "DIVERGENCES",
    "MAX_LOG_RATIO",
    "PROB_EPS",
    "accept_discard_loss",
    "acceptance_probs",
    "check_masks",
    "discard_positions_for",
    "discarded_positions",
    "divergence",
    "expected_accepted_length",
    "expected_acceptance_loss",
    "first_rejected",
    "forward_kl",
    "generalized_jsd",
    "masked_mean",
    "osd_loss",
    "per_position_baseline",
    "pg_positions",
    "policy_gradient_loss",
    "reverse_kl",
    "reward_to_go",
    "token_logprobs",
    "total_variation",
    "unlikelihood",
]
