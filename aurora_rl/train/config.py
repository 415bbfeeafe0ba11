"""The configuration of ``python -m aurora_rl.train``: one documented dataclass per part.

Precedence: dataclass defaults < ``--config file.yaml`` < ``key=value`` overrides on the
command line. Every problem -- unknown key, bad type, out-of-range value, missing model
path -- is a :class:`ConfigError` naming the key and the fix, raised before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aurora_rl.algos.config import AlgoConfig
from aurora_rl.policies.factory import LEARNED_KINDS, MODEL_FREE_KINDS, DrafterSection
from aurora_rl.online.learner import LearnerConfig
# The sections the serve CLI shares live below both CLIs; re-exported for old imports.
from aurora_rl.runtime.config import DecodeSection, TrafficSection, WorldSection, check_schedule, check_suffix_depth  # noqa: F401
from aurora_rl.settings import ConfigError, check_counts, check_paths, documented, parse_overrides, to_yaml  # noqa: F401  (to_yaml re-exported)
from aurora_rl.settings import describe as describe_fields

ARMS = {
    # name: (how the draft is used, how it starts)
    "target_only": ("none", None),  # the reference: no speculation at all
    "static": ("static", "pretrained"),
    "offline": ("offline", "pretrained"),
    "online_scratch": ("online", "scratch"),
    "online_pretrained": ("online", "pretrained"),
    # training-free baselines (policies/suffix.py, policies/prompt_lookup.py)
    "suffix": ("static", "suffix"),
    "prompt_lookup": ("static", "prompt_lookup"),
    # per step the suffix proposal or the learned draft's (policies/hybrid.py)
    "static+suffix": ("static", "pretrained+suffix"),
    "online_scratch+suffix": ("online", "scratch+suffix"),
    "online_pretrained+suffix": ("online", "pretrained+suffix"),
}
DEFAULT_ARMS = ("target_only", "static", "offline", "online_scratch", "online_pretrained", "suffix",
                "online_pretrained+suffix")
BEST_CONTROLLER = "goodput"  # the main job's default: see docs/controllers.md


@dataclass
class OfflineSection:
    num_requests: int = documented("offline arm: requests of the world's *train* split decoded to collect traces", 60)
    domains: list[str] | None = documented("offline arm: domains of that collection (null = drafter.pretrain_domains: the traffic seen before deployment)", None)
    schedule: str = documented("offline arm: traffic schedule of that collection", "mixed")
    updates: int = documented("offline arm: optimizer steps on the collected traces", 400)

    def __post_init__(self) -> None:
        check_schedule("offline.schedule", self.schedule)
        check_counts("offline", self, ("num_requests", "updates"))


@dataclass
class TrainConfig:
    run_name: str = documented("run directory name under output_dir (empty = <arms>-<schedule>-seed<seed>)", "")
    output_dir: str = documented("where runs/<run_name>/ is written", "runs")
    seed: int = documented("seeds everything; the same seed gives the same run on CPU", 0)
    arms: list[str] = documented(
        "what runs side by side on the same traffic: target_only (no draft: the speed reference), "
        "static (pretrained, never updated), offline (pretrained + finetuned on offline traces, then "
        "static), online_scratch, online_pretrained; training-free: suffix, prompt_lookup; hybrids "
        "(per step the suffix proposal or the learned draft's): static+suffix, online_scratch+suffix, "
        "online_pretrained+suffix",
        factory=lambda: list(DEFAULT_ARMS),
    )
    progress: bool = documented("show progress bars", True)
    world: WorldSection = documented("target, tokenizer and prompts", factory=WorldSection)
    traffic: TrafficSection = documented("the request stream every arm serves", factory=TrafficSection)
    decode: DecodeSection = documented("speculative decoding (the main job's default controller is the study's best: "
                                  "experiments/results/controllers/)", factory=lambda: DecodeSection(controller=BEST_CONTROLLER))
    drafter: DrafterSection = documented("the draft policy", factory=DrafterSection)
    algo: AlgoConfig = documented("the learning rule", factory=AlgoConfig)
    learner: LearnerConfig = documented("online learning schedule, gate and rollback", factory=LearnerConfig)
    offline: OfflineSection = documented("the offline arm's trace collection and training", factory=OfflineSection)


def describe() -> list[str]:
    """``key (default): help`` for every configurable key, for ``--help``."""
    return describe_fields(TrainConfig())



def validate(cfg: TrainConfig) -> None:
    """Checks that need more than one field, or the filesystem."""
    unknown = [arm for arm in cfg.arms if arm not in ARMS]
    if unknown or not cfg.arms:
        raise ConfigError(f"arms={cfg.arms}: each arm must be one of {', '.join(ARMS)}")
    if cfg.decode.controller_policy and not Path(cfg.decode.controller_policy).expanduser().is_dir():
        raise ConfigError(f"decode.controller_policy={cfg.decode.controller_policy!r} is not a directory: give a saved policy, or null to train one")
    if cfg.decode.k >= cfg.traffic.max_new_tokens:
        raise ConfigError(f"decode.k={cfg.decode.k} must be < traffic.max_new_tokens={cfg.traffic.max_new_tokens} (a step emits up to k + 1 tokens)")
    if cfg.drafter.kind not in LEARNED_KINDS:
        hint = " (model-free drafters are arms: arms=[suffix,prompt_lookup])" if cfg.drafter.kind in MODEL_FREE_KINDS else ""
        raise ConfigError(f"drafter.kind={cfg.drafter.kind!r} is not one of {', '.join(LEARNED_KINDS)}{hint}")
    check_suffix_depth(cfg.drafter.suffix, cfg.decode.k)
    check_paths(cfg, ("world.target", "drafter.path", "traffic.source"))
    problem = cfg.drafter.pretraining_problem(external_target=bool(cfg.world.target))
    if problem and any(ARMS[a][1] == "pretrained" for a in cfg.arms):
        raise ConfigError(f"{problem}, or use arms=[online_scratch]")


def load_config(argv: list[str]) -> TrainConfig:
    """``[--config FILE.yaml] [key=value ...]`` -> a validated ``TrainConfig``."""
    return parse_overrides(TrainConfig, argv, "python -m aurora_rl.train", validate)
