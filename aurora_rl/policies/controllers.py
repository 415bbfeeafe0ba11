"""Hand-made draft-length controllers: fixed k, HF's heuristic schedule, a confidence
threshold (fixed, or re-fitted online from live verdicts), and a bandit over k.

Each is a :class:`~aurora_rl.core.control.DraftController`: it only decides when the target
verifies, so every one is lossless (``tests/test_controllers.py``). The learned policy
trained on ``DraftLength-v0`` is in ``learned_controller.py``.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from aurora_rl.core.control import token_stats
from aurora_rl.core.cost import CostModel
from aurora_rl.core.cost_calibration import SpeculationOverhead


class _NeverStops:
    def stop(self, position: int, raw_logits: torch.Tensor | None, token: int) -> bool:
        return False


class FixedSession(_NeverStops):
    def budget(self, limit: int, context_len: int) -> int:
        return limit

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        pass


class FixedK:
    """Always ``decode.k`` proposals (the default before controllers existed)."""

    name = "fixed"

    def start(self) -> FixedSession:
        return FixedSession()


class HeuristicSession(_NeverStops):
    def __init__(self, controller: "HeuristicSchedule") -> None:
        self.controller = controller

    def budget(self, limit: int, context_len: int) -> int:
        return min(limit, self.controller.current)

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        if num_proposed:
            self.controller.update(all_accepted=num_accepted == num_proposed)


class HeuristicSchedule:
    """Transformers' assisted-generation ``"heuristic"`` schedule: the lookahead grows by 2
    after a step whose proposals were all accepted and shrinks by 1 (to at least 1)
    otherwise. Like transformers' default it persists across requests; here it is capped at
    ``max_k`` (``decode.k``) and starts there."""

    name = "heuristic"

    def __init__(self, max_k: int, start: int | None = None) -> None:
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        self.max_k = max_k
        self.current = min(max_k, start or max_k)

    def update(self, all_accepted: bool) -> None:
        self.current = min(self.max_k, self.current + 2) if all_accepted else max(1, self.current - 1)

    def start(self) -> HeuristicSession:
        return HeuristicSession(self)


class ThresholdSession:
    """Stops after a proposal the draft gives less than the controller's threshold, and
    reports each judged proposal's probability and verdict back to it."""

    def __init__(self, controller: "ConfidenceThreshold") -> None:
        self.controller = controller
        self.probs: list[float] = []

    def budget(self, limit: int, context_len: int) -> int:
        self.probs = []
        return limit

    def stop(self, position: int, raw_logits: torch.Tensor | None, token: int) -> bool:
        prob, _ = token_stats(raw_logits, token)
        self.probs.append(prob)
        return prob < self.controller.threshold

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        # Proposals 1..num_accepted were accepted, the next one refused; later ones were
        # never judged. (The last allowed proposal never reached stop(): no probability.)
        judged = self.probs[: num_accepted + 1]
        self.controller.record([(p, i < num_accepted) for i, p in enumerate(judged)])


class ConfidenceThreshold:
    """Stop drafting after a proposal the draft itself gives less than ``threshold``
    (transformers' ``assistant_confidence_threshold``, our ``draft_confidence``)."""

    name = "confidence"

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold

    def record(self, outcomes: list[tuple[float, bool]]) -> None:
        pass

    def start(self) -> ThresholdSession:
        return ThresholdSession(self)


class RefitThreshold(ConfidenceThreshold):
    """A confidence threshold re-fitted online from live accept/reject outcomes.

    Like transformers' dynamic ``assistant_confidence_threshold`` it keeps (probability,
    accepted?) pairs of judged proposals and picks the threshold minimising a weighted count
    of mistakes -- but the weights come from the measured cost model instead of a fixed 1:3:
    continuing past a proposal that gets refused wastes a draft forward and a verify column
    (``c + width slope`` target steps); stopping before one that would be accepted gives up
    about one token until the next step.

    Args:
        cost: the measured cost model (batch 1 is used).
        start: the threshold before enough outcomes are in.
        window: most recent pairs kept.
        refit_every: re-fit after this many new pairs.
    """

    name = "refit"

    def __init__(self, cost: CostModel, start: float = 0.5, window: int = 2000, refit_every: int = 32) -> None:
        super().__init__(start)
        # Floored: a noisy profile must not make wasted proposals look free.
        self.false_continue = max(cost.draft_token_cost() + cost.verify_token_cost(1) - 1.0, 0.05)
        self.false_stop = 1.0
        self.outcomes: deque[tuple[float, bool]] = deque(maxlen=window)
        self.refit_every = refit_every
        self._since_fit = 0

    def record(self, outcomes: list[tuple[float, bool]]) -> None:
        self.outcomes.extend(outcomes)
        self._since_fit += len(outcomes)
        if self._since_fit >= self.refit_every:
            self._since_fit = 0
            self.threshold = best_threshold(list(self.outcomes), self.false_continue, self.false_stop, self.threshold)


def best_threshold(outcomes: list[tuple[float, bool]], false_continue: float, false_stop: float, current: float) -> float:
    """The threshold ``t`` minimising ``false_continue * #{refused, p >= t} + false_stop *
    #{accepted, p < t}`` over the observed probabilities (ties keep the lower threshold);
    ``current`` while the outcomes hold only one class."""
    if not outcomes or all(a for _, a in outcomes) or not any(a for _, a in outcomes):
        return current
    ranked = sorted(outcomes)
    refused_at_or_above = sum(1 for _, a in ranked if not a)
    accepted_below = 0
    best, best_cost = current, math.inf
    for i, (prob, accepted) in enumerate(ranked):
        if i == 0 or prob != ranked[i - 1][0]:  # threshold = this probability
            cost = false_continue * refused_at_or_above + false_stop * accepted_below
            if cost < best_cost:
                best, best_cost = prob, cost
        if accepted:
            accepted_below += 1
        else:
            refused_at_or_above -= 1
    return min(max(best, 1e-3), 1 - 1e-3)


def step_costs(cost: CostModel, max_k: int, gamma: float) -> list[float]:
    """``token_cost(k)`` for k in ``0 .. max_k``, after checking what a discounted k-chooser needs."""
    if max_k > cost.max_k:
        raise ValueError(f"max_k={max_k} exceeds the cost model's measured k (<= {cost.max_k})")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    return [cost.token_cost(k) for k in range(max_k + 1)]


class BanditSession(_NeverStops):
    def __init__(self, controller: "BanditK") -> None:
        self.controller = controller
        self.chose = False

    def budget(self, limit: int, context_len: int) -> int:
        self.chose = True
        return min(limit, self.controller.choose())

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        if self.chose:  # the budget's last step (no choice made) teaches nothing
            self.controller.update(num_proposed, num_accepted + 1)
        self.chose = False


class BanditK:
    """A discounted-UCB bandit over k in ``0 .. max_k``, shared by all requests.

    Its reward is a step's goodput in target-step units: emitted tokens / modelled step
    cost (``CostModel.token_cost``; k = 0 scores exactly 1). Discounting (``gamma`` per
    step) lets it follow a draft that learns online and traffic that shifts.
    """

    name = "bandit"

    def __init__(self, cost: CostModel, max_k: int, gamma: float = 0.995, exploration: float = 0.5) -> None:
        self.cost = cost
        self.costs = step_costs(cost, max_k, gamma)
        self.counts = [0.0] * (max_k + 1)
        self.sums = [0.0] * (max_k + 1)
        self.gamma, self.exploration = gamma, exploration
        self.chosen: list[int] = []  # the arm of every step, for plots

    def choose(self) -> int:
        untried = [k for k, n in enumerate(self.counts) if n == 0]
        if untried:
            arm = untried[0]
        else:
            total = sum(self.counts)
            arm = max(range(len(self.counts)), key=lambda k: self.sums[k] / self.counts[k]
                      + self.exploration * math.sqrt(math.log(max(total, 1.0)) / self.counts[k]))
        self.chosen.append(arm)
        return arm

    def update(self, k: int, emitted: int) -> None:
        self.counts = [n * self.gamma for n in self.counts]
        self.sums = [s * self.gamma for s in self.sums]
        self.counts[k] += 1.0
        self.sums[k] += emitted / self.costs[k]

    def start(self) -> BanditSession:
        return BanditSession(self)


class GoodputSession(_NeverStops):
    def __init__(self, controller: "GoodputK") -> None:
        self.controller = controller
        self.began: float | None = None

    def budget(self, limit: int, context_len: int) -> int:
        overhead = self.controller.overhead
        self.began = overhead.clock() if overhead is not None else None
        return min(limit, self.controller.choose())

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        overhead = self.controller.overhead
        if overhead is not None and self.began is not None:  # from budget() to the verdict: one step
            overhead.record(num_proposed, overhead.clock() - self.began)
        self.began = None
        self.controller.update(num_proposed, num_accepted)


class GoodputK:
    """Picks the k in ``0 .. max_k`` of highest *expected* goodput, from an acceptance model.

    A bandit over k learns each arm only when it plays it; this controller learns from every
    verdict what every k would have earned. It keeps, per draft position ``i``, how often a
    proposal there was judged and accepted (position ``i`` is judged when the ``i`` before it
    were accepted), so one k = 4 step teaches k = 1, 2, 3 and 4 at once. From the acceptance
    rates ``a_i`` it computes ``E[emitted | k] = 1 + sum_{j<=k} a_0 ... a_{j-1}`` and plays
    ``argmax_k E[emitted | k] / token_cost(k)`` (``k = 0`` scores exactly 1).

    Exploration is optimism that grows while a position goes unjudged: the counts decay by
    ``gamma`` every step, and each rate is read as ``a_i + optimism / sqrt(1 + judged_i)``.
    When drafting barely loses (``k = 1`` at 0.96x) it is re-probed soon and cheaply; when it
    loses badly, rarely. Discounting follows a draft that learns and traffic that shifts.

    With ``overhead`` (a :class:`~aurora_rl.core.cost_calibration.SpeculationOverhead`, as
    ``decode.controller=goodput`` builds it) the cost of every k > 0 is the model's times the
    measured overhead factor: each step is timed from ``budget`` to the verdict, so the
    wall clock, not the profile alone, decides whether drafting pays. Without it (tests,
    worked examples) the cost model is taken as exact.
    """

    name = "goodput"

    def __init__(
        self, cost: CostModel, max_k: int, gamma: float = 0.995, optimism: float = 0.3,
        overhead: SpeculationOverhead | None = None,
    ) -> None:
        if optimism < 0:
            raise ValueError(f"optimism must be >= 0, got {optimism}")
        self.overhead = overhead
        self.costs = step_costs(cost, max_k, gamma)
        self.judged = [0.0] * max_k
        self.accepted = [0.0] * max_k
        self.gamma, self.optimism = gamma, optimism
        self.chosen: list[int] = []  # the k of every step, for plots

    def rates(self, optimistic: bool = True) -> list[float]:
        """Acceptance per position, with a 1-of-2 prior (and the optimism bonus)."""
        bonus = self.optimism if optimistic else 0.0
        return [min(1.0, (a + 1.0) / (n + 2.0) + bonus / math.sqrt(1.0 + n)) for a, n in zip(self.accepted, self.judged)]

    def expected_goodput(self, optimistic: bool = True) -> list[float]:
        """``E[emitted | k] / token_cost(k)`` for every k (drafting costs times the
        measured overhead factor, when there is one)."""
        rates, goodput, emitted, reach = self.rates(optimistic), [], 1.0, 1.0
        factor = self.overhead.factor if self.overhead is not None else 1.0
        for k, cost in enumerate(self.costs):
            if k:
                reach *= rates[k - 1]
                emitted += reach
            goodput.append(emitted / (cost * factor if k else cost))
        return goodput

    def choose(self) -> int:
        goodput = self.expected_goodput()
        k = max(range(len(goodput)), key=goodput.__getitem__)
        self.chosen.append(k)
        return k

    def update(self, num_proposed: int, num_accepted: int) -> None:
        self.judged = [n * self.gamma for n in self.judged]
        self.accepted = [a * self.gamma for a in self.accepted]
        for position in range(min(num_accepted + 1, num_proposed, len(self.judged))):
            self.judged[position] += 1.0
            self.accepted[position] += float(position < num_accepted)

    def start(self) -> GoodputSession:
        return GoodputSession(self)
