"""How each arm's draft starts: from scratch, pretrained offline, offline-finetuned, training-free
(suffix, prompt lookup), or a learned draft combined with the suffix drafter."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from aurora_rl.algos.eagle_pretrain import eagle_pretrainer
from aurora_rl.core.target import Target, eos_token_ids
from aurora_rl.envs.controller_setup import configured_controller
from aurora_rl.online.rounds import finetune_offline
from aurora_rl.policies import factory
from aurora_rl.policies.factory import MODEL_FREE_KINDS
from aurora_rl.train.config import ARMS, TrainConfig
from aurora_rl.world import World
from aurora_rl.world.traffic import make_traffic


@dataclass
class Setting:
    """What every arm shares: the config, the world, the target and its tokenizer."""

    cfg: TrainConfig
    world: World
    target: Target
    tokenizer: PreTrainedTokenizerBase
    pretrained_cache: object | None = None
    policy_cache: object | None = None

    @property
    def eos(self) -> list[int]:
        return eos_token_ids(self.tokenizer)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0


def build_setting(cfg: TrainConfig) -> Setting:
    """The world, its (or ``world.target``'s) target with the configured weights and the
    hidden layers an EAGLE drafter reads, and the tokenizer."""
    world, target, tokenizer = cfg.world.load(cfg.drafter.hidden_layers, cfg.progress)
    return Setting(cfg, world, target, tokenizer)


def pretrained(s: Setting):
    """The static draft every 'pretrained' arm starts from (see ``policies.factory.pretrained``)."""
    cfg = s.cfg
    pretrain_eagle = eagle_pretrainer(cfg.drafter, s.world, s.target, s.tokenizer, cfg.seed, cfg.world.cache_dir, cfg.progress)
    return factory.pretrained(cfg.drafter, s.target, s.world, seed=cfg.seed, pretrain_eagle=pretrain_eagle,
                              cache_dir=cfg.world.cache_dir, precision=cfg.world.precision, progress=cfg.progress)  # fmt: skip


def initial_drafter(s: Setting, arm: str):
    """The drafter ``arm`` serves with at request 0 (a private copy); None for target_only."""
    mode, init = ARMS[arm]
    if mode == "none":
        return None
    if init in MODEL_FREE_KINDS:
        return factory.model_free_drafter(s.cfg.drafter, init, s.target.vocab_size)
    if init.endswith("+suffix"):
        return factory.with_suffix(s.cfg.drafter, learned_drafter(s, init.removesuffix("+suffix")), s.target.vocab_size)
    drafter = learned_drafter(s, init)
    if mode == "offline":
        domains = s.cfg.offline.domains or s.cfg.drafter.pretrain_domains or None  # empty = every domain
        data = s.world.dataset("train", domains)
        requests = make_traffic(data, s.cfg.offline.schedule, s.cfg.offline.num_requests, seed=s.cfg.seed + 1).requests
        drafter = finetune_offline(s.target, s.tokenizer, drafter, s.cfg.algo, requests, s.cfg.decode.to_decode_config(),
                                   s.cfg.traffic.max_new_tokens, s.cfg.offline.updates, s.cfg.seed, s.cfg.progress,
                                   "offline arm")  # fmt: skip
    return drafter


def learned_drafter(s: Setting, init: str):
    """A private learned draft: a copy of the run's pretrained one, or a fresh one."""
    if init == "pretrained":
        if s.pretrained_cache is None:  # built once per run, shared by every pretrained arm
            s.pretrained_cache = pretrained(s)
        return s.pretrained_cache.clone()
    return factory.scratch_drafter(s.cfg.drafter, s.target, s.world, s.cfg.seed, s.tokenizer)


def arm_controller(s: Setting, drafter):
    """A fresh instance of ``decode.controller`` for one arm (None = fixed k); a learned
    policy is trained once per run on the run's pretrained draft, then shared by every arm."""

    def static_draft():
        if s.pretrained_cache is None:
            s.pretrained_cache = pretrained(s)
        return s.pretrained_cache

    controller, s.policy_cache = configured_controller(
        s.cfg.decode, s.cfg.drafter, s.target, drafter, static_draft, world=s.world, tokenizer=s.tokenizer,
        max_new_tokens=s.cfg.traffic.max_new_tokens, cache_dir=s.cfg.world.cache_dir, seed=s.cfg.seed,
        progress=s.cfg.progress, policy=s.policy_cache,
    )  # fmt: skip
    return controller
