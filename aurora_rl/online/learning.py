"""The online-learning stack, built one way for both drivers: trace buffer, learner, rollback
monitor, snapshot state.

The train CLI (``train/loop.py``) and the server (``runtime/server.py``) both build an
:class:`OnlineLearning` around the ``LivePolicy`` their engine decodes with and add
:meth:`OnlineLearning.observe` as the engine's trace listener (cheap: two list appends).
The :class:`~aurora_rl.online.learner.Learner` trains its own copy of the draft -- on a
background thread (``mode="async"``: the server, and async train arms) or in rounds the
driver calls between engine steps (``mode="sync"``: deterministic train arms) -- gates each
candidate on held-out traces and publishes to the ``LivePolicy``; its
:class:`~aurora_rl.online.monitor.SwapMonitor` judges each new version against the one it
replaced on the same fresh live traces and rolls it back if it is worse. Rewriting
``LATEST.json`` after a rollback runs on a control thread, never on the decode thread.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

from aurora_rl.algos import AlgoConfig
from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.trace import Trace
from aurora_rl.online import learner_state
from aurora_rl.online.learner import Learner, LearnerConfig
from aurora_rl.online.monitor import SwapMonitor
from aurora_rl.online.publish import LivePolicy
from aurora_rl.online.snapshots import SnapshotStore

logger = logging.getLogger(__name__)


class OnlineLearning:
    """Trains the draft from the trace stream while an engine decodes with ``live``.

    Args:
        live: the live policy the engine decodes with (publishes and rollbacks go here).
        algo: the learning rule.
        config: schedule, gate and rollback settings.
        pad_id: padding token for trace batches.
        seed: seeds the learner's batch sampling.
        snapshots: where published versions and, on :meth:`stop`, the learner's state go.
        accelerator: optional ``accelerate.Accelerator`` for the algorithm.
    """

    def __init__(self, live: LivePolicy, algo: AlgoConfig, config: LearnerConfig, pad_id: int, seed: int,
                 snapshots: SnapshotStore | None = None, accelerator=None) -> None:  # fmt: skip
        self.live = live
        self.algo = algo
        self.config = config
        self.snapshots = snapshots
        self.buffer = config.make_buffer()
        checkpoint = (lambda: self.save_state(snapshots)) if snapshots is not None else None
        self.learner = Learner(live, self.buffer, algo, config, pad_id, seed, accelerator,
                               on_rollback=self._on_rollback, on_checkpoint=checkpoint)  # fmt: skip
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aurora-control")

    @property
    def monitor(self) -> SwapMonitor:
        return self.learner.monitor

    def decode_config(self, decode: DecodeConfig) -> DecodeConfig:
        """``decode`` as this learner needs it: traces that carry the target's distributions
        (the losses, the gate and the rollback monitor read them), and, for an algorithm that
        learns from sampled proposals (e.g. PG), the configured exploration temperature unless
        one is set."""
        decode = replace(decode, record_target_probs=True)
        if self.learner.needs_exploration and decode.explore_temperature is None:
            return replace(decode, explore_temperature=self.algo.explore_temperature)
        return decode

    def observe(self, trace: Trace) -> None:
        """Engine trace listener (decode thread): feed the learner and its swap monitor."""
        self.learner.observe(trace)

    def start(self) -> None:
        """Async: start the learner thread. Sync: nothing (the driver calls :meth:`train_round`)."""
        if self.config.mode == "async":
            self.learner.start()

    def train_round(self) -> list[dict[str, float]]:
        """Sync: one learner round between two engine steps; returns each update's metrics."""
        return self.learner.train_round()

    def restore(self, target) -> str:
        """Continue from the learner state saved in the snapshot directory (see
        :mod:`~aurora_rl.online.learner_state`); returns what was done, in words."""
        return learner_state.restore(self.learner, self.snapshots, target) if self.snapshots else "no snapshot directory"

    def stop(self) -> Path | None:
        """Stop the learner after its current step and save its state; returns where."""
        self.learner.stop()
        self._control.shutdown(wait=True)
        return self.save_state(self.snapshots) if self.snapshots is not None else None

    def save_state(self, snapshots: SnapshotStore) -> Path | None:
        """Write the live version (unless already on disk) and the learner's state (trained
        copy, optimizer, counters) to ``snapshots``; returns where (None if unwritable)."""
        if snapshots.latest_version() != self.live.version:
            snapshots.write_live(self.live.current)
        extra = {"rollbacks": self.live.rollbacks, "rolled_back_versions": list(self.monitor.rolled_back),
                 "buffer": asdict(self.buffer.stats())}  # fmt: skip
        return learner_state.save(self.learner, snapshots, extra)

    def _on_rollback(self, bad_version: int, restored: DraftPolicy) -> None:
        """Learner thread, after it rolled back and restarted from ``restored``."""
        if self.snapshots is not None:  # followers of LATEST.json go back too, off the learner thread
            self._control.submit(self.snapshots.write_live, restored)
