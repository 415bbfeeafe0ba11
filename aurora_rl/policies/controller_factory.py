"""``decode.controller``: the draft-length controller a name stands for.

One plain ``if/elif`` on the name (:func:`build_controller`). What a controller needs that
costs time to make -- this machine's cost model, the learned controller's policy -- is
made by :func:`aurora_rl.envs.controller_setup.configured_controller`, the one place both
the train and serve CLIs get their controller from.
"""

from __future__ import annotations

from pathlib import Path

from aurora_rl.core.control import DraftController
from aurora_rl.core.cost import CostModel
from aurora_rl.core.cost_calibration import SpeculationOverhead
from aurora_rl.core.cost_profile import cached_cost_model
from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.target import Target
from aurora_rl.policies.controllers import BanditK, ConfidenceThreshold, GoodputK, HeuristicSchedule, RefitThreshold
from aurora_rl.policies.learned_controller import LearnedController, TinyPolicy

CONTROLLERS = ("fixed", "heuristic", "confidence", "refit", "bandit", "goodput", "learned")
DEFAULT_CONFIDENCE = 0.5


def controller_cost(target: Target, drafter: DraftPolicy, max_k: int, cache_dir: str | None) -> CostModel:
    """This machine's cost model for the target + drafter (profiled once, then cached)."""
    return cached_cost_model(target, drafter, max_k, cache_dir=cache_dir)


def build_controller(
    name: str,
    max_k: int,
    cost: CostModel | None = None,
    confidence: float | None = None,
    policy: TinyPolicy | None = None,
    max_positions: int = 1 << 30,
) -> DraftController | None:
    """A fresh controller (state shared across requests starts empty). ``fixed`` gives
    None: decoding then takes exactly the path it took before controllers existed."""
    if name == "fixed":
        return None
    if name == "heuristic":
        return HeuristicSchedule(max_k)
    if name == "confidence":
        return ConfidenceThreshold(confidence or DEFAULT_CONFIDENCE)
    if name in ("refit", "bandit", "goodput") and cost is None:
        raise ValueError(f"decode.controller={name} needs the cost model")
    if name == "refit":
        return RefitThreshold(cost, start=confidence or DEFAULT_CONFIDENCE)
    if name == "bandit":
        return BanditK(cost, max_k)
    if name == "goodput":
        return GoodputK(cost, max_k, overhead=SpeculationOverhead(cost))  # the wall clock corrects the model
    if name == "learned":
        if policy is None:
            raise ValueError("decode.controller=learned needs a policy (decode.controller_policy, or one trained by learned_policy)")
        return LearnedController(policy, max_positions)
    raise ValueError(f"decode.controller={name!r} is not one of {', '.join(CONTROLLERS)}")


def load_policy(path: str | Path) -> TinyPolicy:
    return TinyPolicy.load(path)
