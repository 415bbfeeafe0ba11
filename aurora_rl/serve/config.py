"""The configuration of ``python -m aurora_rl.serve``, and the key=value parsing both serving
CLIs share.

It composes the world / decode sections both CLIs share (``aurora_rl.runtime.config``),
the drafter section and the algorithm and learner configs, so a draft, a learning rule and
a schedule mean the same in a training run and a server. Precedence: dataclass defaults < ``--config file.yaml`` < ``key=value``. Every
mistake is a :class:`ConfigError` naming the key and the fix, raised before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from aurora_rl.algos.config import AlgoConfig
from aurora_rl.runtime.config import (
    DecodeSection,
    EngineSection,
    ServerSection,
    SnapshotSection,
    WorldSection,
    check_suffix_depth,
)
from aurora_rl.runtime.follow import follow_and_learn_error
from aurora_rl.online.learner import LearnerConfig
from aurora_rl.policies.factory import DRAFTER_KINDS, LEARNED_KINDS, MODEL_FREE_KINDS, DrafterSection
from aurora_rl import settings
from aurora_rl.settings import ConfigError, check_paths, documented, parse_overrides
from aurora_rl.settings import describe as describe_fields

DRAFTS = ("pretrained", "scratch")




@dataclass
class ServeConfig:
    seed: int = documented("seeds the draft's initialisation, the learner and unseeded requests", 0)
    progress: bool = documented("show progress bars while building the world / pretraining the draft", True)
    draft: str = documented(
        "how the live draft starts: pretrained (the train CLI's static draft, or drafter.path) or scratch "
        "(random init: everything it knows comes from the traffic)",
        "pretrained",
    )
    learn: bool = documented("train the draft online from the traffic and publish gated versions (false = serve it as is, "
                        "or follow another process's versions with snapshots.follow)", True)  # fmt: skip
    with_suffix: bool = documented("hybrid: per step, propose with the suffix drafter (drafter.suffix.*) when its expected accepted "
                              "tokens reach drafter.hybrid_min_suffix_score, else with the learned draft (which keeps learning)", False)  # fmt: skip
    torch_threads: int | None = documented("torch intra-op threads, shared by decoding and learning (null = torch's default)", None)
    world: WorldSection = documented("target, tokenizer and the draft's pretraining data", factory=WorldSection)
    decode: DecodeSection = documented("speculative decoding; decode.temperature/top_k/top_p are the defaults of requests that send none", factory=DecodeSection)  # fmt: skip
    drafter: DrafterSection = documented("the draft policy", factory=DrafterSection)
    algo: AlgoConfig = documented("the learning rule", factory=AlgoConfig)
    learner: LearnerConfig = documented("online learning schedule, gate and rollback (mode must be async)",
                                   factory=lambda: LearnerConfig(mode="async"))  # fmt: skip
    server: ServerSection = documented("the HTTP front: address, key, limits", factory=ServerSection)
    engine: EngineSection = documented("request queue and decode concurrency", factory=EngineSection)
    snapshots: SnapshotSection = documented("versioned draft snapshots and the learner's saved state", factory=SnapshotSection)


def describe(instance=None) -> list[str]:
    """``key (default): help`` for every key of ``instance`` (default: ``ServeConfig()``), for ``--help``."""
    return describe_fields(ServeConfig() if instance is None else instance)


def validate(cfg: ServeConfig) -> None:
    """Checks that need more than one field, or the filesystem."""
    if cfg.draft not in DRAFTS:
        raise ConfigError(f"draft={cfg.draft!r} is not one of {', '.join(DRAFTS)}")
    if cfg.learn and cfg.snapshots.follow:
        raise ConfigError(follow_and_learn_error(cfg.snapshots.follow))
    if cfg.learner.mode != "async":
        raise ConfigError(f"learner.mode={cfg.learner.mode!r}: a server learns on its own thread; set learner.mode=async")
    if cfg.drafter.kind not in DRAFTER_KINDS:
        raise ConfigError(f"drafter.kind={cfg.drafter.kind!r} is not one of {', '.join(DRAFTER_KINDS)}")
    if cfg.drafter.kind in MODEL_FREE_KINDS:
        if cfg.learn:
            raise ConfigError(
                f"drafter.kind={cfg.drafter.kind!r} has nothing to train (it adapts by remembering the traffic): set "
                "learn=false, or serve a learned draft with with_suffix=true to learn and use the suffix drafter together"
            )
        if cfg.with_suffix:
            raise ConfigError(f"with_suffix=true combines a learned draft with the suffix drafter: set drafter.kind to one of {', '.join(LEARNED_KINDS)}")
    if cfg.snapshots.follow and (cfg.with_suffix or cfg.drafter.kind in MODEL_FREE_KINDS):
        raise ConfigError("snapshots.follow serves small_lm or eagle snapshots only; drop with_suffix / use a learned drafter.kind")
    check_suffix_depth(cfg.drafter.suffix, cfg.decode.k)
    if cfg.torch_threads is not None and cfg.torch_threads < 1:
        raise ConfigError(f"torch_threads={cfg.torch_threads} must be >= 1 or null")
    if cfg.decode.k >= cfg.server.max_tokens:
        raise ConfigError(f"decode.k={cfg.decode.k} must be < server.max_tokens={cfg.server.max_tokens}")
    check_paths(cfg, ("world.target", "drafter.path"))
    problem = cfg.drafter.pretraining_problem(external_target=bool(cfg.world.target))
    if problem and cfg.draft == "pretrained":
        raise ConfigError(f"{problem}, or use draft=scratch")



def load_config(argv: list[str]) -> ServeConfig:
    return parse_overrides(ServeConfig, argv, "python -m aurora_rl.serve", validate)


def to_yaml(cfg: ServeConfig) -> str:
    """The resolved config, with the API key (if any) redacted."""
    redacted = replace(cfg, server=replace(cfg.server, api_key="***" if cfg.server.api_key else None))
    return settings.to_yaml(redacted)
