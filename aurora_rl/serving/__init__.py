"""Deprecated: ``aurora_rl.serving`` was renamed. The serving library is now
:mod:`aurora_rl.runtime` (engine, HTTP API, metrics, snapshot follower) and its online-learning
parts moved to :mod:`aurora_rl.online` (learner, gate, monitor, publish, snapshots). Old
imports such as ``from aurora_rl.serving.engine import Engine`` keep working with a
DeprecationWarning; each old module name is the new module itself (same classes)."""

import importlib
import sys
import warnings

MOVED = {
    **{name: f"aurora_rl.runtime.{name}" for name in (
        "api", "chat", "config", "detokenize", "engine", "follow", "generation", "http", "metrics",
        "middleware", "protocol", "requests", "server")},  # fmt: skip
    **{name: f"aurora_rl.online.{name}" for name in ("gate", "learner", "learner_state", "monitor", "publish", "snapshots")},
    "online": "aurora_rl.online.learning",
}

warnings.warn(
    "aurora_rl.serving is deprecated: import aurora_rl.runtime (engine, HTTP API) or aurora_rl.online "
    "(learner, gate, monitor, publish, snapshots) instead",
    DeprecationWarning,
    stacklevel=2,
)
for _old, _new in MOVED.items():
    sys.modules[f"{__name__}.{_old}"] = module = importlib.import_module(_new)
    globals()[_old] = module
del _old, _new, module
