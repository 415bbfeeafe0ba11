"""``decode.controller``: build the configured draft-length controller for one arm.

One plain ``if/elif`` on the name. The learned controller's policy is either loaded
(``decode.controller_policy``) or trained here once with PPO on ``DraftLength-v0`` (the
world's prompts, the given drafter, this machine's cost model) and cached under
``<cache>/controllers/<key>/``, so the train and serve CLIs need nothing prepared.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from transformers import PreTrainedTokenizerBase

from aurora_rl.core.control import DraftController
from aurora_rl.core.cost import CostModel
from aurora_rl.core.cost_profile import cached_cost_model
from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.target import Target
from aurora_rl.core.cost_calibration import SpeculationOverhead
from aurora_rl.policies.controllers import BanditK, ConfidenceThreshold, GoodputK, HeuristicSchedule, RefitThreshold
from aurora_rl.policies.learned_controller import LearnedController, TinyPolicy
from aurora_rl.world import World
from aurora_rl.world.cache import cache_root

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


def learned_policy(
    world: World,
    target: Target,
    tokenizer: PreTrainedTokenizerBase,
    drafter: DraftPolicy,
    cost: CostModel,
    max_k: int,
    max_new_tokens: int,
    drafter_tag: str,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    total_steps: int = 6144,
):
    """The PPO-trained policy for this world, drafter and cost model: from the cache, or
    trained now (SB3; a few thousand env steps) and cached. ``drafter_tag`` names the drafter
    (its recipe) in the cache key."""
    from aurora_rl.envs.draft_length import DraftLengthEnv
    from aurora_rl.envs.ppo_controller import PPOSettings, train_policy

    settings = PPOSettings(total_steps=total_steps, seed=seed)
    payload = {"world": world.path.name, "drafter": drafter_tag, "cost": cost.to_json(), "max_k": max_k,
               "max_new_tokens": max_new_tokens, "ppo": repr(settings)}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    directory = cache_root(cache_dir) / "controllers" / key
    if (directory / "controller.json").is_file():
        return TinyPolicy.load(directory)

    def make_env() -> DraftLengthEnv:
        return DraftLengthEnv(world=world.name, target=target, tokenizer=tokenizer, drafter=drafter, cost_model=cost,
                              max_draft=max_k, max_new_tokens=max_new_tokens, cache_dir=cache_dir)

    policy = train_policy(make_env, settings, progress=progress, meta={"world": world.name, "drafter": drafter_tag})
    partial = directory.with_name(f"{key}.{os.getpid()}.partial")
    policy.save(partial)
    if not directory.exists():
        os.replace(partial, directory)
    return TinyPolicy.load(directory)


def load_policy(path: str | Path) -> TinyPolicy:
    return TinyPolicy.load(path)


def configured_controller(decode, drafter_spec, target: Target, drafter: DraftPolicy, static_draft: Callable[[], DraftPolicy],
                          *, world: World, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int,
                          cache_dir: str | None, seed: int, progress: bool, policy: TinyPolicy | None = None):  # fmt: skip
    """A fresh instance of ``decode.controller`` (a ``DecodeSection``) for ``drafter``, and the
    learned policy it uses (pass it back as ``policy`` to share it). The cost model is profiled
    on ``drafter``'s shape; a learned policy is loaded (``decode.controller_policy``) or trained
    on ``static_draft()`` (the static draft ``drafter_spec`` describes), then cached on disk."""
    cost = None
    if decode.controller in ("refit", "bandit", "goodput", "learned"):
        # Per drafter: a suffix drafter's proposals cost ~1/40 of a small LM's, so one drafter's
        # cost model must not stand in for another's (controller_cost caches each shape on disk).
        cost = controller_cost(target, drafter, decode.k, cache_dir)
    if decode.controller == "learned" and policy is None:
        if decode.controller_policy:
            policy = load_policy(decode.controller_policy)
        else:
            static = static_draft()
            tag = json.dumps({"kind": drafter_spec.kind, **asdict(drafter_spec), "seed": seed}, sort_keys=True)
            trained_on = controller_cost(target, static, decode.k, cache_dir)
            policy = learned_policy(world, target, tokenizer, static, trained_on, decode.k, max_new_tokens, tag, cache_dir,
                                    seed, progress, decode.controller_train_steps)  # fmt: skip
    controller = build_controller(decode.controller, decode.k, cost, decode.draft_confidence, policy, target.max_positions)
    return controller, policy
