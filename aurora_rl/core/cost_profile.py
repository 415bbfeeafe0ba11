"""Measure a :class:`~aurora_rl.core.cost.CostModel` on this machine, once, and cache it.

The profile times real cached forwards: the target scoring ``1 .. max_k + 1`` new tokens
after a ``context``-token prefix at each batch size, and the drafter proposing ``max_k``
tokens through its own ``propose`` / ``propose_batch`` (so any drafter is measured through
the path decoding uses). Each figure is the fastest of a few repeats after a warm-up; the
whole profile takes a few seconds. Timing depends on the model shapes, not their weights,
so the cache key is the models' configs plus the machine (CPU model, cores, torch threads,
torch version, device) -- a learned draft keeps its cost model across versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from aurora_rl.core.cost import CostModel
from aurora_rl.core.draft import BatchProposer, DraftAsk, DraftPolicy
from aurora_rl.core.ragged import run_cached_ragged
from aurora_rl.core.sampling import GREEDY
from aurora_rl.core.target import Target
from aurora_rl.world.cache import cache_root

PROFILE_VERSION = 3  # 3: widths timed in turns
DEFAULT_BATCHES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ProfileShape:
    """How a profile is taken besides its lookahead: the batch sizes measured, the context
    prefix each forward runs after, and the repeats each figure is the fastest of. The cache
    key holds batches and context (they change what is measured), not repeats (they only
    change how surely the minimum is found)."""

    batches: tuple[int, ...] = DEFAULT_BATCHES
    context: int = 64
    repeats: int = 9

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", tuple(int(b) for b in self.batches))


def _min_seconds(runs: Sequence[Callable[[], None]], repeats: int) -> list[float]:
    """The fastest of ``repeats`` timings of each run, after a warm-up: other work on a
    shared machine only ever adds time, so the minimum is the least noisy estimate of a
    forward's own cost. The runs take turns (one timing of each per round), so a burst of
    load hits every width alike instead of one width's whole series."""
    for run in runs:
        run()  # warm-up: first calls allocate
    fastest = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            began = time.perf_counter()
            run()
            fastest[i] = min(fastest[i], time.perf_counter() - began)
    return fastest


def _context(length: int, vocab: int) -> torch.Tensor:
    return torch.arange(length) % max(vocab - 3, 1) + 3


def _target_row(target: Target, batch: int, max_width: int, context: int, repeats: int) -> tuple[float, ...]:
    caches = [target.new_cache() for _ in range(batch)]
    prefix = _context(context, target.vocab_size)
    for cache in caches:
        target.forward(cache, prefix)

    def verify(width: int) -> Callable[[], None]:
        feed = [prefix[:width]] * batch

        def run() -> None:
            with torch.inference_mode():
                run_cached_ragged(target.model, caches, feed, target.hidden_layers)
            for cache in caches:
                cache.rollback(context)
        return run

    seconds = _min_seconds([verify(w) for w in range(1, max_width + 1)], repeats)
    # A wider forward never costs less than a narrower one; a dip is timing noise.
    return tuple(max(seconds[: w + 1]) for w in range(len(seconds)))


def _draft_round_seconds(target: Target, drafter: DraftPolicy, batch: int, max_k: int, context: int, repeats: int) -> float:
    prefix = _context(context, target.vocab_size)
    hidden = None
    if drafter.uses_target_features:
        hidden = torch.zeros(context - 1, target.feature_size)
    sessions = [drafter.start(prefix, hidden) for _ in range(batch)]

    def run() -> None:
        with torch.inference_mode():
            if isinstance(drafter, BatchProposer) and batch > 1:
                drafter.propose_batch(sessions, [DraftAsk(max_k, GREEDY)] * batch)
            else:
                for session in sessions:
                    session.propose(max_k, GREEDY, None)

    return _min_seconds([run], repeats)[0] / max_k


def profile_cost(
    target: Target,
    drafter: DraftPolicy,
    max_k: int = 8,
    shape: ProfileShape = ProfileShape(),
    label: str = "",
) -> CostModel:
    """Measure target seconds by width (``1 .. max_k + 1``) and batch, and draft seconds per
    proposal by batch, on this machine now."""
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    context, repeats = min(shape.context, target.max_positions - max_k - 2), shape.repeats
    rows = tuple(_target_row(target, b, max_k + 1, context, repeats) for b in shape.batches)
    draft = tuple(_draft_round_seconds(target, drafter, b, max_k, context, repeats) for b in shape.batches)
    return CostModel(tuple(shape.batches), rows, draft, label or machine_label())


def machine_label() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else _cpu_model()
    return f"{device}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _shape_of(module) -> dict:
    config = getattr(module, "config", None)
    shape = config.to_dict() if hasattr(config, "to_dict") else {}
    parameters = list(module.parameters()) if hasattr(module, "parameters") else []
    return {"class": type(module).__name__, "config": shape,
            "parameters": sum(p.numel() for p in parameters),
            "dtype": str(parameters[0].dtype) if parameters else ""}


def cost_key(target: Target, drafter: DraftPolicy, max_k: int, shape: ProfileShape = ProfileShape()) -> str:
    """What the measured seconds depend on: model shapes, the machine, the profile's shape."""
    payload = {
        "version": PROFILE_VERSION,
        "target": _shape_of(target.model),
        "hidden_layers": list(target.hidden_layers),
        "drafter": {"class": type(drafter).__name__, **_shape_of(getattr(drafter, "model", drafter))},
        "machine": [machine_label(), platform.machine(), torch.__version__, str(torch.get_default_dtype())],
        "profile": [max_k, list(shape.batches), shape.context],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_cost_model(
    target: Target,
    drafter: DraftPolicy,
    max_k: int = 8,
    shape: ProfileShape = ProfileShape(),
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
) -> CostModel:
    """The cost model of this target + drafter on this machine: profiled on first use
    (a few seconds), then read from ``<cache>/cost_models/<key>.json``. ``refresh=True``
    measures again (e.g. after a noisy first profile on a busy machine)."""
    path = cache_root(cache_dir) / "cost_models" / f"{cost_key(target, drafter, max_k, shape)}.json"
    if path.is_file() and not refresh:
        try:
            return CostModel.from_json(path.read_text())
        except (ValueError, KeyError, TypeError):
            pass  # a torn or foreign file: measure again
    model = profile_cost(target, drafter, max_k, shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(model.to_json())
    os.replace(partial, path)
    return model
