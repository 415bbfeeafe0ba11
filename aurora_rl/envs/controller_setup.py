"""``decode.controller`` made for one arm or server: its cost model profiled, and a learned
controller's policy loaded (``decode.controller_policy``) or trained here once with PPO on
``DraftLength-v0`` (the world's prompts, the given drafter, this machine's cost model) and
cached under ``<cache>/controllers/<key>/``, so the train and serve CLIs need nothing prepared.

The PPO training (SB3) is imported only when a policy is trained.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from typing import Callable

from transformers import PreTrainedTokenizerBase

from aurora_rl.core.cost import CostModel
from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.target import Target
from aurora_rl.policies.controller_factory import build_controller, controller_cost, load_policy
from aurora_rl.policies.learned_controller import TinyPolicy
from aurora_rl.world import World
from aurora_rl.world.cache import cache_root


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

    prompts = world.dataset("heldout")  # loaded once: the env copies share it, the target and the drafter

    def make_env() -> DraftLengthEnv:
        return DraftLengthEnv(world=world.name, target=target, tokenizer=tokenizer, drafter=drafter, cost_model=cost,
                              prompts=prompts, max_draft=max_k, max_new_tokens=max_new_tokens, cache_dir=cache_dir)

    policy = train_policy(make_env, settings, progress=progress, meta={"world": world.name, "drafter": drafter_tag})
    partial = directory.with_name(f"{key}.{os.getpid()}.partial")
    policy.save(partial)
    if not directory.exists():
        os.replace(partial, directory)
    return TinyPolicy.load(directory)


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
