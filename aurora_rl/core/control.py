"""The draft-length seam: a ``DraftController`` decides, online and per request, how far
the draft runs before the target verifies.

It can only change *when verification happens* -- never which tokens are emitted -- so
every controller is lossless by construction (any proposal length is; tested).

Per step, a controller's session is asked three things, all by ``core/spec.py``:

1. ``budget(limit, context_len)`` before drafting: how many proposals at most (``0`` = a
   plain target step, ``limit`` = ``min(decode.k, remaining budget - 1)``);
2. ``stop(position, raw_logits, token)`` after each proposal but the last allowed one (it
   is the draft loop's :data:`~aurora_rl.core.draft.StopRule`): stop here?
3. ``observe(num_proposed, num_accepted)`` after the verdict.

The features a learned policy sees are computed here, by one pure function shared by the
``DraftLength-v0`` env (where the policy is trained) and the decoder (where it runs), so
training and serving see exactly the same numbers.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np
import torch

FEATURES = (
    "draft_prob",  # the draft's temperature-1 probability of its last proposal (0 before any)
    "draft_entropy",  # entropy of that distribution / log V (0 before any)
    "position",  # proposals drawn this step / max_draft
    "prefix_prob",  # product of draft_prob over this step's proposals (1 before any)
    "running_acceptance",  # this request's acceptance rate so far, with a 1-of-2 prior
    "context",  # tokens before the step / the target's context size
)


@runtime_checkable
class ControllerSession(Protocol):
    """A controller's state for one request."""

    def budget(self, limit: int, context_len: int) -> int:
        """Proposals to draw this step, in ``0 .. limit``."""
        ...

    def stop(self, position: int, raw_logits: torch.Tensor | None, token: int) -> bool:
        """After the ``position``-th proposal (1-based) ``token``: stop drafting?"""
        ...

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        """The verdict on this step's proposals."""
        ...


@runtime_checkable
class DraftController(Protocol):
    """Chooses draft lengths. One instance per serving arm; state shared across requests
    (a bandit's statistics, a re-fitted threshold) lives on it, per-request state on the
    sessions it starts.

    Attributes:
        name: the ``decode.controller`` name it is selected by.
    """

    name: str

    def start(self) -> ControllerSession:
        """A session for a new request."""
        ...


def token_stats(raw_logits: torch.Tensor | None, token: int) -> tuple[float, float]:
    """``(probability of token, entropy / log V)`` of the temperature-1 draft distribution;
    ``(1, 0)`` for a drafter without logits (a lookup proposal is all-or-nothing). Tokens
    a drafter can never propose (logit -inf, e.g. outside an EAGLE-3 head's reduced draft
    vocabulary) contribute 0 to the entropy, not 0 * -inf = nan."""
    if raw_logits is None:
        return 1.0, 0.0
    probs = torch.softmax(raw_logits.float(), -1)
    entropy = float(-torch.special.xlogy(probs, probs).sum())
    return float(probs[token]), entropy / math.log(max(raw_logits.shape[-1], 2))


def draft_features(
    prob: float,
    entropy: float,
    position: int,
    max_draft: int,
    prefix_prob: float,
    running_acceptance: float,
    context_len: int,
    max_positions: int,
) -> np.ndarray:
    """The ``(len(FEATURES),)`` float32 observation of a draft-length decision, each in [0, 1]."""
    return np.array(
        [prob, entropy, position / max_draft, prefix_prob, running_acceptance, min(context_len / max_positions, 1.0)],
        dtype=np.float32,
    ).clip(0.0, 1.0)


class AcceptanceTally:
    """A request's running acceptance: accepted / judged proposals with a 1-of-2 prior.

    A proposal is *judged* when the target looked at it: every accepted one and the first
    rejected one (later proposals were never compared).
    """

    def __init__(self) -> None:
        self.accepted = 0
        self.judged = 0

    @property
    def rate(self) -> float:
        return (self.accepted + 1) / (self.judged + 2)

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        self.accepted += num_accepted
        self.judged += num_accepted + (1 if num_accepted < num_proposed else 0)


class StepFeatures:
    """The features of the draft decisions within one request, step by step: what the
    learned controller's session and the env both keep."""

    def __init__(self, max_draft: int, max_positions: int) -> None:
        self.max_draft, self.max_positions = max_draft, max_positions
        self.tally = AcceptanceTally()
        self.context_len = 0
        self._begin()

    def _begin(self) -> None:
        self.position, self.prob, self.entropy, self.prefix_prob = 0, 0.0, 0.0, 1.0

    def begin_step(self, context_len: int) -> None:
        self.context_len = context_len
        self._begin()

    def proposed(self, raw_logits: torch.Tensor | None, token: int) -> None:
        self.prob, self.entropy = token_stats(raw_logits, token)
        self.position += 1
        self.prefix_prob *= self.prob

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        self.tally.observe(num_proposed, num_accepted)

    def vector(self) -> np.ndarray:
        return draft_features(self.prob, self.entropy, self.position, self.max_draft, self.prefix_prob,
                              self.tally.rate, self.context_len, self.max_positions)
