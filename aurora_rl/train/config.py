"""The configuration of ``python -m aurora_rl.train``: one documented dataclass per part.

Precedence: dataclass defaults < ``--config file.yaml`` < ``key=value`` overrides on the
command line. Every problem -- unknown key, bad type, out-of-range value, missing model
path -- is a :class:`ConfigError` naming the key and the fix, raised before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aurora_rl.algos.config import AlgoConfig
from aurora_rl.core.fp16_weights import TARGET_WEIGHTS
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.policies.factory import LEARNED_KINDS, MODEL_FREE_KINDS, DrafterSection
from aurora_rl.policies.suffix import SuffixConfig
from aurora_rl.online.learner import LearnerConfig
from aurora_rl.train.controllers import CONTROLLERS
from aurora_rl.world.precision import PRECISIONS
from aurora_rl.world.traffic import SCHEDULES
from aurora_rl.settings import ConfigError, check_paths, documented, parse_overrides, to_yaml  # noqa: F401  (to_yaml re-exported)
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
class WorldSection:
    name: str = documented("the world: 'tiny' (tests), 'default' (the main job) or 'smollm2' (a real LLM: docs/real_model.md)", "default")
    cache_dir: str | None = documented("where worlds and pretrained drafters are cached (null = $AURORA_RL_CACHE or ~/.cache/aurora_rl)", None)
    target: str | None = documented("a HF hub id or local model directory to verify with instead of the world's target (its tokenizer is loaded from there)", None)
    precision: str | None = documented("training precision of the world's target and pretrained drafters: auto (bf16 only where the CPU/GPU runs it natively) | fp32 | bf16 (null = $AURORA_RL_PRECISION, else auto)", None)

    target_weights: str = documented(
        "how the target's linear layers run: fp32 (as loaded) | fp16 (weights rounded to fp16 once, fbgemm's CPU "
        "kernel, fp32 arithmetic: ~2x faster on a real model and verifying 5 tokens costs ~1.2x one, not ~2x; every "
        "arm, target_only included, then decodes that model; core/fp16_weights.py)", "fp32")

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"world.precision={self.precision!r}: choose one of {list(PRECISIONS)} or null")
        if self.target_weights not in TARGET_WEIGHTS:
            raise ValueError(f"world.target_weights={self.target_weights!r}: choose one of {list(TARGET_WEIGHTS)}")


@dataclass
class TrafficSection:
    source: str | None = documented("prompts: null = the world's held-out split, or a .jsonl / .parquet file / HF dataset id with a 'prompt' column", None)
    schedule: str = documented("how the domain mixture moves: mixed | ordered (abrupt shifts) | drift (gradual)", "ordered")
    num_requests: int = documented("requests served per arm", 200)
    domains: list[str] | None = documented("domains in phase order (null = the dataset's)", None)
    num_phases: int | None = documented("ordered/drift: domain visits (null = each domain once)", None)
    max_new_tokens: int = documented("token budget per request", 64)
    concurrency: int = documented(
        "requests in flight at once, advanced together in one batched engine step (the server's path); "
        "1 = one request at a time, the latency-bound case speculative decoding is for", 1)


@dataclass
class DecodeSection:
    k: int = documented("proposals per verify step (lookahead)", 4)
    temperature: float = documented("target decoding temperature (0 = greedy)", 0.0)
    top_k: int = documented("target top-k (0 = off)", 0)
    top_p: float = documented("target top-p (1 = off)", 1.0)
    trace_topk: int | None = documented("keep only the target's top-K probabilities in traces (null = full vocabulary, top 64 above 8192 tokens)", None)
    draft_confidence: float | None = documented(
        "stop drafting after a proposal the draft gives less than this probability (null = always k); "
        "lossless, faster in wall-clock, but traces then have fewer positions to learn from. With "
        "controller=confidence or refit it is the (starting) threshold", None)
    controller: str = documented(
        "who decides each step's draft length (at most k), online per request; all lossless: fixed (always k) | "
        "heuristic (transformers' +2/-1 schedule) | confidence (stop below draft_confidence, default 0.5) | refit "
        "(that threshold re-fitted online from accept/reject outcomes, weighted by the measured cost model) | bandit "
        "(discounted UCB over k = 0..k on measured goodput) | goodput (k of highest expected goodput from per-position "
        "acceptance learned from every verdict, optimistic while unprobed) | learned (a tiny policy trained with PPO on "
        "DraftLength-v0; trained once and cached unless controller_policy is given)", "fixed")
    controller_policy: str | None = documented(
        "controller=learned: a saved policy directory (controller.json + policy.safetensors); null = train one "
        "with PPO on DraftLength-v0 for this world, drafter and machine (cached)", None)
    controller_train_steps: int = documented(
        "controller=learned without controller_policy: PPO env steps (draft decisions) of its training", 6144)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"decode.k={self.k} must be >= 1 (proposals per verify step)")
        if not self.temperature >= 0:
            raise ValueError(f"decode.temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"decode.top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"decode.top_p={self.top_p} must be in (0, 1] (1 = off)")
        if self.trace_topk is not None and self.trace_topk < 1:
            raise ValueError(f"decode.trace_topk={self.trace_topk} must be >= 1 or null (full vocabulary)")
        if self.draft_confidence is not None and not 0 < self.draft_confidence < 1:
            raise ValueError(f"decode.draft_confidence={self.draft_confidence} must be in (0, 1) or null")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"decode.controller={self.controller!r} is not one of {', '.join(CONTROLLERS)}")
        if self.draft_confidence is not None and self.controller not in ("fixed", "confidence", "refit"):
            raise ValueError(
                f"decode.draft_confidence={self.draft_confidence} is a threshold, but decode.controller="
                f"{self.controller} decides draft lengths itself: set decode.controller=confidence (or refit), "
                "or decode.draft_confidence=null"
            )
        if self.controller_train_steps < 256:
            raise ValueError(f"decode.controller_train_steps={self.controller_train_steps} must be >= 256 (one PPO rollout)")
        if self.controller_policy is not None and self.controller != "learned":
            raise ValueError(f"decode.controller_policy is only read by decode.controller=learned (got {self.controller})")

    def to_decode_config(self, explore_temperature: float | None = None, controller=None) -> DecodeConfig:
        """The decode rule; ``controller`` is the arm's built controller (None = fixed k)."""
        sampling = SamplingParams(self.temperature, self.top_k, self.top_p)
        confidence = self.draft_confidence if controller is None else None
        return DecodeConfig(self.k, sampling, explore_temperature, self.trace_topk, confidence, controller)


@dataclass
class OfflineSection:
    num_requests: int = documented("offline arm: requests of the world's *train* split decoded to collect traces", 60)
    domains: list[str] | None = documented("offline arm: domains of that collection (null = drafter.pretrain_domains: the traffic seen before deployment)", None)
    schedule: str = documented("offline arm: traffic schedule of that collection", "mixed")
    updates: int = documented("offline arm: optimizer steps on the collected traces", 400)


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
    if cfg.traffic.schedule not in SCHEDULES:
        raise ConfigError(f"traffic.schedule={cfg.traffic.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if cfg.offline.schedule not in SCHEDULES:
        raise ConfigError(f"offline.schedule={cfg.offline.schedule!r} is not one of {', '.join(SCHEDULES)}")
    for key, value in [("traffic.num_requests", cfg.traffic.num_requests), ("traffic.max_new_tokens", cfg.traffic.max_new_tokens),
                       ("traffic.concurrency", cfg.traffic.concurrency),
                       ("offline.num_requests", cfg.offline.num_requests), ("offline.updates", cfg.offline.updates),
                       ("drafter.pretrain_steps", cfg.drafter.pretrain_steps)]:
        if value < 1:
            raise ConfigError(f"{key}={value} must be >= 1")
    if cfg.decode.controller_policy and not Path(cfg.decode.controller_policy).expanduser().is_dir():
        raise ConfigError(f"decode.controller_policy={cfg.decode.controller_policy!r} is not a directory: give a saved policy, or null to train one")
    if cfg.decode.k >= cfg.traffic.max_new_tokens:
        raise ConfigError(f"decode.k={cfg.decode.k} must be < traffic.max_new_tokens={cfg.traffic.max_new_tokens} (a step emits up to k + 1 tokens)")
    if cfg.drafter.kind not in LEARNED_KINDS:
        hint = " (model-free drafters are arms: arms=[suffix,prompt_lookup])" if cfg.drafter.kind in MODEL_FREE_KINDS else ""
        raise ConfigError(f"drafter.kind={cfg.drafter.kind!r} is not one of {', '.join(LEARNED_KINDS)}{hint}")
    check_suffix_depth(cfg.drafter.suffix, cfg.decode.k)
    check_paths(cfg, ("world.target", "drafter.path", "traffic.source"))
    if cfg.world.target and not cfg.drafter.path and any(ARMS[a][1] == "pretrained" for a in cfg.arms) and cfg.drafter.kind == "small_lm":  # noqa: E501
        raise ConfigError(
            "world.target is an external model, so the world's drafter pretraining does not fit its "
            "vocabulary: set drafter.path to a small causal LM sharing its tokenizer, or use arms=[online_scratch]"
        )


def check_suffix_depth(suffix: SuffixConfig, k: int) -> None:
    if suffix.max_depth <= k:
        raise ConfigError(
            f"drafter.suffix.max_depth={suffix.max_depth} must exceed decode.k={k}: the trie holds the matched "
            "tokens and the proposal together; raise max_depth or lower k"
        )


def load_config(argv: list[str]) -> TrainConfig:
    """``[--config FILE.yaml] [key=value ...]`` -> a validated ``TrainConfig``."""
    return parse_overrides(TrainConfig, argv, "python -m aurora_rl.train", validate)
