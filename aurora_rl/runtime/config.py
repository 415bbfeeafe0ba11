"""The serving sections of a server's configuration: HTTP front, decode engine, snapshots
(written, or followed).

Plain documented dataclasses (OmegaConf structured-config friendly), checked in
``__post_init__``. The server entry point composes them with the world / decode / drafter /
algorithm / learner sections into ``aurora_rl.serve.config.ServeConfig``; this module stays
below the entry points (it imports nothing above ``runtime/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from aurora_rl.settings import documented



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
