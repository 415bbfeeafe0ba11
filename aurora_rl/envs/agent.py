"""Drive any ``DraftPolicy`` as the agent of ``SpecDecodeEnv``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from aurora_rl.core.draft import DraftPolicy, DraftSession


class DraftAgent:
    """Turns a draft policy into env actions and keeps its session in sync with the episode.

    Usage::

        obs, info = env.reset(seed=0)
        agent.begin(obs, info)
        while True:
            obs, reward, terminated, truncated, info = env.step(agent.act(obs))
            if terminated or truncated:
                break
            agent.observe(info)
    """

    def __init__(self, policy: DraftPolicy, env, generator: torch.Generator | None = None) -> None:
        self.policy = policy
        self.env = env.unwrapped
        self.generator = generator
        self.session: DraftSession | None = None

    def begin(self, observation: dict[str, Any], info: dict[str, Any]) -> None:
        tokens = torch.as_tensor(observation["tokens"][: int(observation["length"])])
        self.session = self.policy.start(tokens, _features(info))

    def act(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise RuntimeError("call agent.begin(obs, info) after env.reset() before acting")
        proposal = self.session.propose(self.env.k, self.env.config.draft_sampling, self.generator)
        action = {"tokens": proposal.tokens.numpy().astype(np.int64)}
        if "draft_logits" in self.env.action_space.spaces:
            logits = proposal.logits if proposal.logits is not None else proposal.probs.clamp_min(1e-30).log()
            action["draft_logits"] = logits.numpy().astype(np.float32)
        return action

    def observe(self, info: dict[str, Any]) -> None:
        """Tell the session what the target kept (call after every non-final step)."""
        self.session.commit(info["num_accepted"], info["next_token"], _features(info))


def _features(info: dict[str, Any]) -> torch.Tensor | None:
    hidden = info.get("target_hidden")
    return None if hidden is None else torch.as_tensor(hidden)
