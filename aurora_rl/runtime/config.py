"""The configuration sections both CLIs compose -- world, traffic, decode -- and the
server's own: HTTP front, decode engine, snapshots (written, or followed).

Plain documented dataclasses (OmegaConf structured-config friendly), checked in
``__post_init__``. ``aurora_rl.train.config.TrainConfig`` and
``aurora_rl.serve.config.ServeConfig`` compose them with the drafter / algorithm / learner
sections; this module stays below the entry points (it imports nothing above ``runtime/``),
so the serve CLI needs nothing from the train CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from aurora_rl.core.fp16_weights import TARGET_WEIGHTS, apply_target_weights
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target, load_model_and_tokenizer
from aurora_rl.policies.controller_factory import CONTROLLERS
from aurora_rl.policies.suffix import SuffixConfig
from aurora_rl.settings import ConfigError, check_counts, documented
from aurora_rl.world import World, get_world
from aurora_rl.world.precision import PRECISIONS
from aurora_rl.world.traffic import SCHEDULES


def check_schedule(key: str, schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"{key}={schedule!r} is not one of {', '.join(SCHEDULES)}")


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

    def load(self, hidden_layers: tuple[int, ...] = (), progress: bool = True) -> tuple[World, Target, PreTrainedTokenizerBase]:
        """The world, the target both CLIs verify with -- the world's, or ``target``'s model --
        on the configured weights and exposing ``hidden_layers`` (what the drafter reads:
        ``DrafterSection.hidden_layers``), and that target's tokenizer."""
        world = get_world(self.name, cache_dir=self.cache_dir, progress=progress, precision=self.precision)
        model, tokenizer = load_model_and_tokenizer(self.target) if self.target else (world.target(), world.tokenizer())
        return world, Target(apply_target_weights(model, self.target_weights), hidden_layers), tokenizer


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

    def __post_init__(self) -> None:
        check_schedule("traffic.schedule", self.schedule)
        check_counts("traffic", self, ("num_requests", "num_phases", "max_new_tokens", "concurrency"))


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
        try:  # the decode rule owns its ranges; this section only names its keys
            self.to_decode_config()
        except ValueError as error:
            raise ValueError(f"decode.{error}") from None
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
        """The decode rule; ``controller`` is the arm's built controller (None = fixed k).

        Its traces carry no target distributions: only a consumer turns them on
        (``OnlineLearning.decode_config`` for a learner; the server for kept request traces),
        so a static arm, a server with learn=false and a follower skip that softmax and copy."""
        sampling = SamplingParams(self.temperature, self.top_k, self.top_p)
        confidence = self.draft_confidence if controller is None else None
        return DecodeConfig(self.k, sampling, explore_temperature, self.trace_topk, confidence, controller,
                            record_target_probs=False)  # fmt: skip


def check_suffix_depth(suffix: SuffixConfig, k: int) -> None:
    """The suffix trie must hold a match and a ``k``-token proposal together."""
    if suffix.max_depth <= k:
        raise ConfigError(
            f"drafter.suffix.max_depth={suffix.max_depth} must exceed decode.k={k}: the trie holds the matched "
            "tokens and the proposal together; raise max_depth or lower k"
        )


@dataclass
class ServerSection:
    host: str = documented("interface to bind; 127.0.0.1 keeps the server local (set 0.0.0.0 deliberately)", "127.0.0.1")
    port: int = documented("TCP port (0 = any free port)", 8000)
    model_name: str | None = documented("the model id clients must send (null = aurora-<world name>, or the target's path)", None)
    api_key: str | None = documented("require 'Authorization: Bearer <key>' on /v1/* (null = $AURORA_RL_API_KEY if set, else open)", None)
    max_body_bytes: int = documented("largest request body accepted (413 above)", 1 << 20)
    max_prompt_tokens: int | None = documented("longest prompt accepted, in tokens (null = the target's context minus 1)", None)
    max_tokens: int = documented("largest max_tokens a request may ask for", 1024)
    default_max_tokens: int = documented("max_tokens of a request that does not say", 128)
    read_timeout: float = documented("seconds a request's whole body may take to arrive after its headers (408 after)", 30.0)
    max_header_bytes: int = documented("largest request line + headers accepted (the connection is refused above)", 16_384)
    drain_seconds: float = documented("on shutdown, how long in-flight requests may take to finish before they are cancelled", 10.0)
    log_level: str = documented("uvicorn log level: critical | error | warning | info | debug", "info")

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"server.port={self.port} must be in [0, 65535] (0 = any free port)")
        for name in ("max_body_bytes", "max_tokens", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"server.{name}={getattr(self, name)} must be >= 1")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"server.max_prompt_tokens={self.max_prompt_tokens} must be >= 1 or null (the target's context)")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"server.default_max_tokens={self.default_max_tokens} exceeds server.max_tokens={self.max_tokens}; "
                "lower the default or raise the limit"
            )
        if not self.read_timeout > 0 or self.max_header_bytes < 1024:
            raise ValueError(f"server.read_timeout={self.read_timeout} must be > 0 s and "
                             f"server.max_header_bytes={self.max_header_bytes} >= 1024")  # fmt: skip
        if self.drain_seconds < 0:
            raise ValueError(f"server.drain_seconds={self.drain_seconds} must be >= 0")
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(f"server.log_level={self.log_level!r} must be one of critical, error, warning, info, debug")


@dataclass
class EngineSection:
    max_active: int = documented("requests decoded concurrently (advanced round-robin, one verify step at a time)", 16)
    max_batch: int = documented("requests advanced together in one batched verify step (1 = one request per forward pass)", 8)
    max_queue: int = documented("requests waiting for a decode slot; a full queue answers 429", 64)
    keep_request_traces: int = documented("keep the traces of the last N requests for inspection (tests, debugging; 0 = none)", 0)

    def __post_init__(self) -> None:
        for name in ("max_active", "max_queue", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine.{name}={getattr(self, name)} must be >= 1")
        if self.keep_request_traces < 0:
            raise ValueError(f"engine.keep_request_traces={self.keep_request_traces} must be >= 0")


@dataclass
class SnapshotSection:
    directory: str | None = documented(
        "where every published draft version is written (v000042/ + LATEST.json, atomically) and where "
        "the learner's state is saved on shutdown (null = no snapshots)",
        "runs/serve/snapshots",
    )
    keep: int = documented("most versions kept on disk (the oldest are pruned)", 5)
    follow: str | None = documented(
        "follow mode: serve the versions another process's learner writes to this snapshot directory (polls its "
        "LATEST.json, hot-swaps each newer version in); needs learn=false, and this server writes no snapshots "
        "of its own (null = off)",
        None,
    )
    follow_interval: float = documented("follow mode: seconds between two looks at the followed LATEST.json", 1.0)
    follow_max_change: float = documented("follow mode: refuse a version whose weights differ from the live one's by more "
                                     "than this fraction of their norm (garbage, not a learner's next step)", 1.0)  # fmt: skip
    follow_max_jump: int = documented("follow mode: refuse a version numbered more than this many above the live one "
                                 "(a crafted number would hide every real version after it)", 1000)  # fmt: skip

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError(f"snapshots.keep={self.keep} must be >= 1")
        if not self.follow_interval > 0:
            raise ValueError(f"snapshots.follow_interval={self.follow_interval} must be > 0 seconds")
        if not self.follow_max_change > 0 or self.follow_max_jump < 1:
            raise ValueError(f"snapshots.follow_max_change={self.follow_max_change} must be > 0 and "
                             f"snapshots.follow_max_jump={self.follow_max_jump} >= 1")  # fmt: skip
        if self.follow is not None and not self.follow.strip():
            raise ValueError("snapshots.follow='' is empty: give the directory a learner writes its snapshots to, or null")
