"""Measured against modelled: how much a drafting step really costs, learned while serving.

A :class:`~aurora_rl.core.cost.CostModel` is profiled with each model timed on its own, on
a synthetic context. Real drafting steps cost more than that sum: the draft catches up on a
request's prompt the first time it drafts, the draft and target weights evict each other
from the CPU caches when they alternate, and a drafting step builds more Python objects
(measured on the default world: fixed k = 4 modelled at 1.43x, running at 1.10x).
A controller that trusts the model alone keeps drafting where it no longer pays.

:class:`SpeculationOverhead` keeps two discounted ratios of measured to modelled seconds --
one over plain target steps (k = 0), one over drafting steps -- and their quotient
``factor``: how much dearer drafting is than the model says, relative to what plain steps
cost on the same machine under the same load (a busy machine slows both, and cancels).
Both ratios start from a small prior of 1 (the model is right), so a controller follows the
model until steps are measured.
"""

from __future__ import annotations

import time
from typing import Callable

from aurora_rl.core.cost import CostModel

MAX_SAMPLE_RATIO = 3.0


class SpeculationOverhead:
    """Discounted measured/modelled step seconds for plain and drafting steps.

    Args:
        cost: the profiled model the measurements are compared with (batch 1).
        gamma: discount per sample of each ratio's sums: each ratio reads about its last
            ``1 / (1 - gamma)`` steps of its kind (follows load and a changing draft; a
            kind not played for a while keeps its last reading).
        prior_steps: weight of the starting ratio of 1 (never discounted, so a ratio with
            no measurement stays at 1).
        clock: seconds, monotonic (a seam for tests).
    """

    def __init__(
        self, cost: CostModel, gamma: float = 0.99, prior_steps: float = 8.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if prior_steps <= 0:
            raise ValueError(f"prior_steps must be > 0, got {prior_steps}")
        self.cost, self.gamma, self.clock = cost, gamma, clock
        unit = cost.target(1)
        # [measured seconds, modelled seconds] for plain (k = 0) and drafting steps
        self._sums = {False: [0.0, 0.0], True: [0.0, 0.0]}
        self._prior = prior_steps * unit  # seconds, measured and modelled alike: a ratio of 1

    def ratio(self, drafting: bool) -> float:
        """Measured / modelled seconds of plain or drafting steps (1 before any step)."""
        measured, modelled = self._sums[drafting]
        return (measured + self._prior) / (modelled + self._prior)

    @property
    def factor(self) -> float:
        """How much dearer a drafting step is than modelled, relative to a plain one."""
        return self.ratio(True) / self.ratio(False)

    def record(self, k: int, seconds: float) -> None:
        """A step that drafted ``k`` tokens took ``seconds`` (draft + verify + settle)."""
        modelled = self.cost.step_seconds(k)
        # One stalled step (a GC pause, a first-call allocation, a burst of other work)
        # must not decide for hundreds: a sample counts at most MAX_SAMPLE_RATIO x its model.
        measured = min(max(seconds, 0.0), MAX_SAMPLE_RATIO * modelled)
        sums = self._sums[k > 0]
        sums[0] = sums[0] * self.gamma + measured
        sums[1] = sums[1] * self.gamma + modelled
