"""Train the learned draft-length controller: stable-baselines3 PPO on ``DraftLength-v0``,
exported as a :class:`~aurora_rl.policies.learned_controller.TinyPolicy`.

SB3 is used only here, at training time (``pip install 'aurora_rl[rl]'``); the exported
policy is a few numpy arrays the decoder runs without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from aurora_rl.envs.draft_length import CONTINUE, VERIFY, DraftLengthEnv
from aurora_rl.policies.learned_controller import TinyPolicy
from aurora_rl.settings import documented


@dataclass(frozen=True)
class PPOSettings:
    """The PPO run that trains a controller (SB3 ``PPO("MlpPolicy")`` arguments)."""

    total_steps: int = documented("env steps (draft decisions) of training", 6144)
    n_envs: int = documented("env copies stepped together (sharing one target)", 4)
    n_steps: int = documented("steps per env between updates", 128)
    batch_size: int = documented("minibatch size", 128)
    n_epochs: int = documented("passes over each rollout", 10)
    learning_rate: float = documented("Adam learning rate", 2e-3)
    gamma: float = documented("discount per draft decision (a decision matters for its own verify step, a few decisions)", 0.9)
    gae_lambda: float = documented("GAE lambda", 0.9)
    ent_coef: float = documented("entropy bonus", 0.0)
    hidden: tuple[int, ...] = documented("the exported actor's hidden widths", (16, 16))
    seed: int = documented("seeds PPO and the envs", 0)

    def __post_init__(self) -> None:
        for name in ("total_steps", "n_envs", "n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOSettings.{name}={getattr(self, name)} must be >= 1")
        if not self.learning_rate > 0 or not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"PPOSettings: need learning_rate > 0, gamma in (0, 1], gae_lambda in [0, 1]: {self}")


def _sb3():
    try:
        import stable_baselines3
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.vec_env import DummyVecEnv
        from stable_baselines3.common.logger import Logger
    except ImportError as error:
        raise ImportError(
            "training the learned draft-length controller needs stable-baselines3: "
            "pip install 'aurora_rl[rl]' (or pip install stable-baselines3)"
        ) from error
    return stable_baselines3.PPO, BaseCallback, DummyVecEnv, Logger


def train_policy(
    make_env: Callable[[], DraftLengthEnv], settings: PPOSettings = PPOSettings(), progress: bool = False, meta: dict | None = None
) -> TinyPolicy:
    """PPO on ``settings.n_envs`` copies of ``make_env()`` (a vectorised env; give the copies
    one shared target and drafter), exported to a :class:`TinyPolicy`."""
    PPO, BaseCallback, DummyVecEnv, Logger = _sb3()

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=settings.total_steps, desc="PPO on DraftLength-v0", unit="step", disable=not progress)

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    vec = DummyVecEnv([make_env for _ in range(settings.n_envs)])
    vec.seed(settings.seed)
    with torch.random.fork_rng():
        model = PPO(
            "MlpPolicy", vec, n_steps=settings.n_steps, batch_size=settings.batch_size, n_epochs=settings.n_epochs,
            learning_rate=settings.learning_rate, gamma=settings.gamma, gae_lambda=settings.gae_lambda,
            ent_coef=settings.ent_coef, seed=settings.seed, device="cpu", verbose=0,
            policy_kwargs={"net_arch": {"pi": list(settings.hidden), "vf": [64, 64]}, "activation_fn": torch.nn.Tanh},
        )
        # An explicit logger with no outputs: SB3's default one creates a /tmp/SB3-<date> folder
        # per run even when it writes nothing.
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.learn(settings.total_steps, callback=Progress())
    env = vec.envs[0].unwrapped
    return export_policy(model.policy, env.max_draft, {"ppo": asdict(settings), **(meta or {})})


def export_policy(policy, max_draft: int, meta: dict | None = None) -> TinyPolicy:
    """The actor of an SB3 ``ActorCriticPolicy`` (tanh MLP + action head) as numpy arrays."""
    layers = []
    for module in policy.mlp_extractor.policy_net:
        if isinstance(module, torch.nn.Linear):
            layers.append(module)
        elif not isinstance(module, torch.nn.Tanh):
            raise ValueError(f"only tanh MLP actors can be exported, found {type(module).__name__}")
    layers.append(policy.action_net)
    arrays = [(m.weight.detach().cpu().numpy().copy(), m.bias.detach().cpu().numpy().copy()) for m in layers]
    return TinyPolicy(arrays, max_draft, meta)


def fixed_k(k: int, max_draft: int) -> Callable[[np.ndarray], int]:
    """The fixed-k baseline as an env policy: continue until ``k`` proposals."""
    return lambda obs: CONTINUE if round(float(obs[2]) * max_draft) < k else VERIFY


def evaluate(env: DraftLengthEnv, act: Callable[[np.ndarray], int], seeds: Sequence[int]) -> dict[str, float]:
    """Run one episode per seed with ``act``; the env's goodput figures over all of them.

    ``speedup`` = total tokens / total modelled seconds, relative to the target alone.
    """
    tokens, seconds, returns, proposals = 0, 0.0, [], []
    for seed in seeds:
        obs, _ = env.reset(seed=int(seed))
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += reward
            done = terminated or truncated
        tokens, seconds = tokens + env.tokens, seconds + env.seconds
        returns.append(total)
        proposals += env.proposals
    return {"speedup": tokens * env.unit / seconds, "mean_return": float(np.mean(returns)),
            "tokens": tokens, "mean_proposals": float(np.mean(proposals))}
