"""The learner: trains a private copy of the draft on the trace stream and publishes versions.

Two schedules, one code path:

- ``mode="sync"``: the owner calls ``train_round()`` at fixed points of the decode loop
  (every ``train_every`` verify steps). Deterministic under a seed, so runs are
  reproducible; the owner times decoding and learning separately, as if the learner had
  its own device.
- ``mode="async"``: ``start()`` runs rounds on a background thread; decoding never waits
  for it and picks up each published version between two steps.

Invariant 3: a rejected update (NaN/inf loss or gradient) is skipped and counted; a
crashed learner stops learning, records why, and never takes decoding down with it.

Decoding hands every trace to ``observe`` (cheap: the buffer and the swap monitor keep a
reference). Each round first lets the monitor judge the latest swap on fresh live traces
and, after a rollback, restarts training from the restored version.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

from aurora_rl.algos import AlgoConfig, make_algorithm
from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.trace import Trace, with_target_token
from aurora_rl.online.buffer import TraceBuffer
from aurora_rl.online.gate import GateDecision, gate
from aurora_rl.online.monitor import SwapMonitor
from aurora_rl.online.publish import LivePolicy
from aurora_rl.settings import check_ranges, documented

logger = logging.getLogger(__name__)



# TraceBuffer's arguments, by the learner keys that set them.
_BUFFER_KEYS = {"capacity": "buffer_capacity", "max_staleness": "max_staleness", "policy": "staleness_policy",
                "heldout_fraction": "heldout_fraction", "heldout_capacity": "gate_traces"}  # fmt: skip


@dataclass
class LearnerConfig:
    mode: str = documented("'sync' (deterministic lockstep with decoding) or 'async' (background thread)", "sync")
    train_every: int = documented("sync: verify steps between two learner rounds", 32)
    updates_per_round: int = documented("sync: optimizer steps per round", 4)
    publish_every: int = documented("optimizer steps between published draft versions (the weight-sync interval)", 16)
    min_traces: int = documented("no training until the buffer holds this many traces", 64)
    buffer_capacity: int = documented("most traces the buffer holds (oldest evicted)", 4096)
    max_staleness: int | None = documented("drop/down-weight traces more than this many versions old (null = keep)", None)
    staleness_policy: str = documented("'drop' or 'downweight' stale traces", "drop")
    gate: bool = documented("replay held-out traces and publish only candidates that do not regress", True)
    gate_margin: float = documented("publish if candidate score >= live score - margin", 0.0)
    gate_traces: int = documented("most recent held-out traces replayed by the gate", 128)
    heldout_fraction: float = documented("share of requests kept out of training for the gate", 0.1)
    rollback_window: int = documented("live traces of a new version on which it is judged against the one it replaced (0 = never roll back)", 64)
    rollback_drop: float = documented("roll back if, on those same traces, the new version scores this fraction below the old one", 0.1)
    max_passes: float = documented("train only on new evidence: at most this many expected passes over each training trace "
                              "(updates <= traces seen * max_passes / batch size); without new traffic the learner idles", 4.0)  # fmt: skip
    async_idle_seconds: float = documented("async: sleep when there is nothing to train on", 0.05)
    async_busy_fraction: float = documented("async: most of the wall-clock time the learner may spend training; after each step it rests so that it stays under this share (1 = never rests), leaving CPU to decoding on shared cores", 1.0)

    def __post_init__(self) -> None:
        if self.mode not in ("sync", "async"):
            raise ValueError(f"learner.mode must be 'sync' or 'async', got {self.mode!r}")
        counts = ("train_every", "updates_per_round", "publish_every", "min_traces")
        check_ranges(self, "learner", [(name, lambda v: v < 1, ">= 1") for name in counts])
        try:  # the buffer owns the ranges of its settings; this section only names its keys
            self._buffer(self.heldout_fraction)
        except ValueError as error:
            argument, _, rule = str(error).partition(" ")
            raise ValueError(f"learner.{_BUFFER_KEYS[argument]} {rule}") from None
        check_ranges(self, "learner", [
            ("rollback_drop", lambda v: not 0.0 <= v < 1.0, "in [0, 1)"),
            ("async_busy_fraction", lambda v: not 0.0 < v <= 1.0, "in (0, 1]"),
            ("max_passes", lambda v: not v > 0, "> 0"),
            ("rollback_window", lambda v: v < 0, ">= 0"),
        ])  # fmt: skip

    def make_buffer(self) -> TraceBuffer:
        """The trace buffer of these settings (a held-out share only when the gate reads it)."""
        return self._buffer(self.heldout_fraction if self.gate else 0.0)

    def _buffer(self, heldout_fraction: float) -> TraceBuffer:
        return TraceBuffer(capacity=self.buffer_capacity, max_staleness=self.max_staleness, policy=self.staleness_policy,
                           heldout_fraction=heldout_fraction, heldout_capacity=self.gate_traces)  # fmt: skip


class Learner:
    """Trains a copy of the live draft from ``buffer`` and publishes to ``live``.

    Args:
        live: the serving side's live policy (publishes go here).
        buffer: where decoding deposits traces.
        algo: the learning rule.
        config: schedule, gate and rollback settings.
        pad_id: padding token for trace batches.
        seed: seeds batch sampling.
        accelerator: optional ``accelerate.Accelerator`` for the algorithm.
        clock: seconds, for the async schedule's rests (``async_busy_fraction``); a seam
            for tests that need an exact schedule.
    """

    def __init__(self, live: LivePolicy, buffer: TraceBuffer, algo: AlgoConfig, config: LearnerConfig,
                 pad_id: int = 0, seed: int = 0, accelerator=None,
                 on_rollback: Callable[[int, DraftPolicy], None] | None = None,
                 on_checkpoint: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.live, self.buffer, self.algo_config, self.config = live, buffer, algo, config
        self.clock = clock
        self.on_checkpoint = on_checkpoint  # after each publish attempt, on the learner thread
        self.monitor = SwapMonitor(live, config.rollback_window, config.rollback_drop)
        self.on_rollback = on_rollback
        self.pad_id = pad_id
        self.accelerator = accelerator
        self.generator = torch.Generator().manual_seed(seed)
        self.algorithm = make_algorithm(live.current.clone(), algo, accelerator)
        self.updates = 0
        self.published = 0
        self.gate_rejections = 0
        self.rejected_updates = 0  # all runs of the algorithm (reset_to_live starts a new one)
        self.batches_drawn = 0  # in this process: what the new-evidence budget is spent on
        self.idle_waits = 0  # async rounds that found nothing to do (no traces, or no new ones)
        self.last_gate: GateDecision | None = None
        self.error: str | None = None
        self.traces_observed = 0  # every trace decoding handed in: the driver's global step
        # (traces observed when it ran, metrics) of each update not yet taken by take_metrics()
        self.metrics: deque[tuple[int, dict[str, float]]] = deque(maxlen=10_000)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one round at a time

    @property
    def state(self) -> str:
        if self.error is not None:
            return "crashed"
        if self._thread is not None and self._thread.is_alive():
            return "running"
        return "idle"

    @property
    def needs_exploration(self) -> bool:
        return self.algorithm.needs_exploration

    def ready(self) -> bool:
        return len(self.buffer) >= self.config.min_traces and self.budget() > 0

    def budget(self) -> int:
        """Updates the traces seen so far still pay for (``max_passes`` expected passes over
        each); 0 means: wait for new traffic rather than retrain the same traces. Sync
        rounds are paced by decoding already (``train_every``) and are not limited."""
        if self.config.mode == "sync":
            return sys.maxsize
        paid = int(self.buffer.added_for_training * self.config.max_passes / self.algo_config.batch_size)
        return paid - self.batches_drawn

    def resume(self, policy: DraftPolicy, optimizer_state: dict) -> None:
        """Continue training ``policy`` (a saved trained copy) with its saved optimizer state."""
        with self._lock:
            self.algorithm = make_algorithm(policy, self.algo_config, self.accelerator)
            self.algorithm.optimizer.load_state_dict(optimizer_state)

    def observe(self, trace: Trace) -> None:
        """Decode side: one trace in (buffer + swap monitor); never blocks on training.

        A drafter that proposes some steps with another, untrained proposer (the hybrid)
        says through ``learning_view`` what its learned part should see of each trace. The
        buffer gets the trace with the target's own bonus token as one more position
        (``with_target_token``), so steps a draft-length controller kept short -- or skipped
        -- still teach the draft."""
        self.traces_observed += 1  # only the decode thread writes it
        view = getattr(self.live.current, "learning_view", None)
        if view is not None:
            trace = view(trace, on_policy_only=self.needs_exploration)
            if trace is None:
                return
        self.buffer.add(with_target_token(trace))
        self.monitor.observe(trace)

    def train_round(self, updates: int | None = None) -> list[dict[str, float]]:
        """Judge the latest swap if due, then up to ``updates`` optimizer steps (default
        ``updates_per_round``), publishing every ``publish_every`` steps. Returns the
        metrics of each step. Never raises: an error marks the learner crashed and stops
        further rounds."""
        if self.error is not None:
            return []
        produced = []
        with self._lock:
            try:
                self._judge_swap()
                if not self.ready():
                    return []
                for _ in range(min(updates or self.config.updates_per_round, self.budget())):
                    traces, weights = self.buffer.sample(self.algo_config.batch_size, self.generator)
                    if not traces:
                        break
                    self.batches_drawn += 1
                    metrics = self.algorithm.update(self.algorithm.batch(traces, weights, self.pad_id))
                    metrics["learner/version"] = float(self.live.version)
                    if metrics["update/rejected"]:
                        self.rejected_updates += 1
                        logger.warning("learner rejected an update: %s", self.algorithm.last_rejection)
                    else:
                        self.updates += 1
                        if self.updates % self.config.publish_every == 0:
                            metrics.update(self.publish())
                            if self.on_checkpoint is not None:
                                self.on_checkpoint()
                    produced.append(metrics)
            except Exception:  # a learner bug must never reach decoding
                self.error = traceback.format_exc()
                logger.error("learner crashed; serving continues with version %d:\n%s", self.live.version, self.error)
        self.metrics.extend((self.traces_observed, metrics) for metrics in produced)
        return produced

    def take_metrics(self) -> list[tuple[int, dict[str, float]]]:
        """The (global step, metrics) of every update since the last call, oldest first; the
        global step is ``traces_observed`` when the update ran (sync or async alike)."""
        taken = []
        while self.metrics:
            taken.append(self.metrics.popleft())
        return taken

    def publish(self) -> dict[str, float]:
        """Gate the trained copy against the live draft; publish it as the next version if it passes."""
        live = self.live.current
        candidate = self.algorithm.policy.clone(version=self.live.next_version)
        heldout = self.buffer.heldout()[-self.config.gate_traces:]
        batch = self.algorithm.batch(heldout, pad_id=self.pad_id) if (self.config.gate and heldout) else None
        decision = gate(candidate, live, batch, self.config.gate_margin)
        self.last_gate = decision
        if decision.publish:
            self.live.publish(candidate)
            self.buffer.set_version(candidate.version)
            self.published += 1
        else:
            self.gate_rejections += 1
        return {
            "learner/published": float(decision.publish),
            "learner/gate_candidate": decision.candidate_score,
            "learner/gate_live": decision.live_score,
        }

    def _judge_swap(self) -> None:
        judgement = self.monitor.judge(lambda traces: self.algorithm.batch(traces, pad_id=self.pad_id))
        if judgement is None or not judgement.rolled_back:
            return
        logger.warning(
            "version %d scored %.3f vs %.3f for version %d on its first live traces: rolled back",
            judgement.version, judgement.score, judgement.previous_score, judgement.previous_version,
        )
        # The copy that produced the bad version is discarded with its optimizer state.
        self.algorithm = make_algorithm(self.live.current.clone(), self.algo_config, self.accelerator)
        self.buffer.set_version(self.live.version)
        if self.on_rollback is not None:
            self.on_rollback(judgement.version, self.live.current)

    # --- async schedule -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(self._stop,), name="aurora-learner", daemon=True)
        self._thread.start()

    def run(self, stop: threading.Event) -> None:
        """The async schedule on the calling thread until ``stop`` is set (``start()`` runs
        it on the learner thread): one update per round, resting after each so that
        training takes at most ``async_busy_fraction`` of the time, idling while there is
        nothing to train on. ``stop`` needs ``is_set()`` and ``wait(seconds)``."""
        while not stop.is_set() and self.error is None:
            began = self.clock()
            if not self.train_round(1):
                self.idle_waits += 1
                stop.wait(self.config.async_idle_seconds)
            elif self.config.async_busy_fraction < 1.0:
                busy = self.clock() - began
                stop.wait(busy * (1.0 / self.config.async_busy_fraction - 1.0))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the background thread after its current step."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
