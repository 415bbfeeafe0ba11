"""Judge each swap on fresh live traffic, and roll back a version that made drafting worse.

The gate judges a candidate on replayed held-out traces before it goes live; this monitor
judges it again afterwards, on the first ``window`` live traces it produced. Both the new
version and the one it replaced are scored on *exactly those* traces (the gate's
teacher-forced acceptance score on judged positions), so a change of traffic -- which
moves live acceptance whatever the draft -- cannot be mistaken for a bad version. If the
new version scores more than ``drop`` (relative) below the old one, it is rolled back.

``observe`` runs on the decode thread and only appends a trace; ``judge`` does the
scoring and runs on the learner's side.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from aurora_rl.core.batch import TraceBatch
from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.trace import Trace
from aurora_rl.online.gate import acceptance_score
from aurora_rl.online.publish import LivePolicy


@dataclass(frozen=True)
class Judgement:
    version: int
    previous_version: int
    score: float
    previous_score: float
    rolled_back: bool


class SwapMonitor:
    def __init__(self, live: LivePolicy, window: int, drop: float) -> None:
        self.live = live
        self.window = window
        self.drop = drop
        self._lock = threading.Lock()
        self._watching = live.version  # the live version the collected traces belong to
        self._against: DraftPolicy | None = None  # the version it replaced, while unjudged
        self._traces: list[Trace] = []
        self.rolled_back: list[int] = []
        self.judgements: list[Judgement] = []

    def observe(self, trace: Trace) -> None:
        """Decode thread: keep the new version's first ``window`` traces after a swap."""
        if self.window == 0 or trace.num_proposed == 0:
            return
        with self._lock:
            current = self.live.current
            if current.version != self._watching:
                previous = self.live.previous
                self._watching = current.version
                self._traces = []
                # Only a publish (a newer version) is judged; a rollback is not re-judged.
                newer = previous is not None and previous.version < current.version
                self._against = previous if newer else None
            if self._against is not None and trace.draft_version == self._watching and len(self._traces) < self.window:
                self._traces.append(trace)

    def judge(self, make_batch: Callable[[list[Trace]], TraceBatch]) -> Judgement | None:
        """Score the new and the previous version once ``window`` traces are in; roll back
        if the new one is worse by more than ``drop``. Returns the judgement, if one was made."""
        with self._lock:
            if self._against is None or len(self._traces) < self.window:
                return None
            new, old, traces = self.live.current, self._against, list(self._traces)
            self._against = None
        batch = make_batch(traces)
        score, _ = acceptance_score(new, batch)
        previous_score, _ = acceptance_score(old, batch)
        worse = score < previous_score * (1 - self.drop)
        rolled_back = False
        if worse:
            with self._lock:
                if self.live.version == new.version:  # still live: nothing newer replaced it
                    restored = self.live.rollback()
                    self._watching = restored.version
                    self.rolled_back.append(new.version)
                    rolled_back = True
        judgement = Judgement(new.version, old.version, score, previous_score, rolled_back)
        self.judgements.append(judgement)
        return judgement
