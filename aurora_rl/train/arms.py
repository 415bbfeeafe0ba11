"""How each arm's draft starts: from scratch, pretrained offline, offline-finetuned, training-free
(suffix, prompt lookup), or a learned draft combined with the suffix drafter."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from aurora_rl.core.target import Target
from aurora_rl.policies.checkpoint import POLICY_FILE, read_manifest
from aurora_rl.policies.eagle import EagleDrafter
from aurora_rl.policies.hybrid import HybridDrafter
from aurora_rl.policies.prompt_lookup import PromptLookupDrafter
from aurora_rl.policies.pretrained import DrafterRecipe, pretrained_drafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.policies.suffix import SuffixDrafter
from aurora_rl.train.config import ARMS, MODEL_FREE_KINDS, TrainConfig
from aurora_rl.train.controllers import build_controller, controller_cost, learned_policy, load_policy
from aurora_rl.online.rounds import train_rounds
from aurora_rl.world import World
from aurora_rl.world.traffic import Request, make_traffic


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
        return [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0


def scratch_drafter(s: Setting):
    """A freshly initialised drafter of the configured kind."""
    if s.cfg.drafter.kind == "eagle":
        return EagleDrafter.from_target(s.target, seed=s.cfg.seed)
    if s.cfg.drafter.path:  # an external target: the given drafter's shape, re-initialised
        template = load_drafter(s.cfg.drafter.path, s.target)
        return SmallLMDrafter.from_config(template.model.config, seed=s.cfg.seed)
    return SmallLMDrafter.from_config(s.world.drafter_config(), seed=s.cfg.seed)


def load_drafter(path: str | Path, target: Target):
    """A saved aurora_rl drafter, or (small_lm) any HF causal LM directory."""
    path = Path(path)
    if not (path / POLICY_FILE).is_file():
        return SmallLMDrafter(AutoModelForCausalLM.from_pretrained(str(path)))
    if read_manifest(path)["kind"] == "eagle":
        return EagleDrafter.from_pretrained(path, target)
    return SmallLMDrafter.from_pretrained(path)


def pretrained(s: Setting):
    """The static draft every 'pretrained' arm starts from.

    small_lm: language-modelled on the world's text of ``drafter.pretrain_domains``.
    eagle: a head has no text-only form, so it is distilled offline on traces of those
    domains' training prompts (the offline arm's recipe).
    """
    cfg = s.cfg
    if cfg.drafter.path:
        return load_drafter(cfg.drafter.path, s.target)
    domains = tuple(cfg.drafter.pretrain_domains) if cfg.drafter.pretrain_domains else None
    if cfg.drafter.kind == "small_lm":
        recipe = DrafterRecipe(domains=domains, steps=cfg.drafter.pretrain_steps, seed=cfg.seed)
        return pretrained_drafter(s.world, recipe, cfg.world.cache_dir, progress=cfg.progress, precision=cfg.world.precision)
    requests = make_traffic(s.world.dataset("train", domains), "mixed", cfg.offline.num_requests, seed=cfg.seed).requests
    return offline_finetune(s, scratch_drafter(s), requests, cfg.drafter.pretrain_steps, "pretrain eagle")


def offline_finetune(s: Setting, drafter, requests: list[Request], updates: int, desc: str):
    """Collect traces on ``requests`` with ``drafter`` fixed, then train it ``updates`` steps."""
    prompts = [s.tokenizer(r.prompt)["input_ids"] for r in requests]
    algorithm = train_rounds(
        s.target, drafter, s.cfg.algo, [prompts], s.cfg.decode.to_decode_config(), s.cfg.traffic.max_new_tokens,
        s.eos, s.pad_id, updates, seed=s.cfg.seed, progress=s.cfg.progress, desc=desc,
    )
    return algorithm.policy


def model_free_drafter(s: Setting, kind: str):
    """A training-free drafter with an empty memory: ``suffix`` or ``prompt_lookup``."""
    if kind == "suffix":
        return SuffixDrafter(s.target.vocab_size, s.cfg.drafter.suffix)
    return PromptLookupDrafter(s.target.vocab_size, s.cfg.drafter.prompt_lookup)


def with_suffix(s: Setting, learned) -> HybridDrafter:
    """``learned`` combined per step with a fresh suffix drafter."""
    return HybridDrafter(learned, model_free_drafter(s, "suffix"), s.cfg.drafter.hybrid_min_suffix_score)


def initial_drafter(s: Setting, arm: str):
    """The drafter ``arm`` serves with at request 0 (a private copy); None for target_only."""
    mode, init = ARMS[arm]
    if mode == "none":
        return None
    if init in MODEL_FREE_KINDS:
        return model_free_drafter(s, init)
    if init.endswith("+suffix"):
        return with_suffix(s, learned_drafter(s, init.removesuffix("+suffix")))
    drafter = learned_drafter(s, init)
    if mode == "offline":
        domains = s.cfg.offline.domains or s.cfg.drafter.pretrain_domains or None  # empty = every domain
        data = s.world.dataset("train", domains)
        requests = make_traffic(data, s.cfg.offline.schedule, s.cfg.offline.num_requests, seed=s.cfg.seed + 1).requests
        drafter = offline_finetune(s, drafter, requests, s.cfg.offline.updates, "offline arm")
    return drafter


def learned_drafter(s: Setting, init: str):
    """A private learned draft: a copy of the run's pretrained one, or a fresh one."""
    if init == "pretrained":
        if s.pretrained_cache is None:  # built once per run, shared by every pretrained arm
            s.pretrained_cache = pretrained(s)
        return s.pretrained_cache.clone()
    return scratch_drafter(s)


def arm_controller(s: Setting, drafter):
    """A fresh instance of ``decode.controller`` for one arm (None = fixed k). The cost model
    is profiled on ``drafter``'s shape; a learned policy is trained on the pretrained draft
    (the static one every pretrained arm starts from), once per run, then cached on disk."""
    decode = s.cfg.decode
    cost = None
    if decode.controller in ("refit", "bandit", "goodput", "learned"):
        # Per arm: a suffix drafter's proposals cost ~1/40 of a small LM's, so one arm's cost
        # model must not stand in for another's (controller_cost caches each shape on disk).
        cost = controller_cost(s.target, drafter, decode.k, s.cfg.world.cache_dir)
    if decode.controller == "learned" and s.policy_cache is None:
        if decode.controller_policy:
            s.policy_cache = load_policy(decode.controller_policy)
        else:
            if s.pretrained_cache is None:
                s.pretrained_cache = pretrained(s)
            tag = json.dumps({"kind": s.cfg.drafter.kind, **asdict(s.cfg.drafter), "seed": s.cfg.seed}, sort_keys=True)
            trained_on = controller_cost(s.target, s.pretrained_cache, decode.k, s.cfg.world.cache_dir)
            s.policy_cache = learned_policy(s.world, s.target, s.tokenizer, s.pretrained_cache, trained_on, decode.k,
                                            s.cfg.traffic.max_new_tokens, tag, s.cfg.world.cache_dir, s.cfg.seed, s.cfg.progress,
                                            decode.controller_train_steps)
    return build_controller(decode.controller, decode.k, cost, decode.draft_confidence, s.policy_cache,
                            s.target.max_positions)
