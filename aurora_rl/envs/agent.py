"""Drive any ``DraftPolicy`` as the agent of ``SpecDecodeEnv``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from aurora_rl.core.draft import DraftPolicy, DraftSession, draw
from aurora_rl.core.sampling import probs_from_logits


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
        self._tokens: list[int] = []  # the episode's sequence, to reopen a session after accepted filler
        self._drafted = 0
        self.env = env.unwrapped
        self.generator = generator
        self.session: DraftSession | None = None

    def begin(self, observation: dict[str, Any], info: dict[str, Any]) -> None:
        tokens = torch.as_tensor(observation["tokens"][: int(observation["length"])])
        self._tokens = tokens.tolist()
        self.session = self.policy.start(tokens, _features(info))

    def act(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise RuntimeError("call agent.begin(obs, info) after env.reset() before acting")
        sampling = self.env.config.draft_sampling
        proposal = self.session.propose(self.env.k, sampling, self.generator)
        tokens = proposal.tokens
        if proposal.logits is not None:
            logits = proposal.logits
        else:  # model-free drafters give q itself: logits the env's shaping maps back onto q
            logits = proposal.probs.clamp_min(1e-30).log() * (1.0 if sampling.greedy else sampling.temperature)
        self._drafted = len(tokens)
        missing = self.env.k - len(tokens)
        if missing:  # the action has k slots: fill them with draws from a uniform draft (still lossless)
            uniform = torch.zeros(missing, self.env.vocab_size)
            tokens = torch.cat([tokens, torch.tensor([draw(row, sampling, self.generator)
                                                      for row in probs_from_logits(uniform, sampling)])])  # fmt: skip
            logits = torch.cat([logits.float(), uniform])
        action = {"tokens": tokens.numpy().astype(np.int64)}
        if "draft_logits" in self.env.action_space.spaces:
            action["draft_logits"] = logits.numpy().astype(np.float32)
        return action

    def observe(self, info: dict[str, Any]) -> None:
        """Tell the session what the target kept (call after every non-final step)."""
        self._tokens += list(info["emitted_tokens"])
        if info["num_accepted"] > self._drafted:  # filler was accepted: the session never proposed it
            if self.policy.uses_target_features:
                raise RuntimeError("a drafter reading target features must propose all k tokens in the env")
            self.session = self.policy.start(torch.tensor(self._tokens), None)
            return
        self.session.commit(info["num_accepted"], info["next_token"], _features(info))


def _features(info: dict[str, Any]) -> torch.Tensor | None:
    hidden = info.get("target_hidden")
    return None if hidden is None else torch.as_tensor(hidden)
