"""Watch live acceptance across swaps and roll back a version that made it worse.

The gate judges a candidate on replayed traces before it goes live; this monitor judges
it on live traffic afterwards. Once the new version has decoded ``window`` steps, its
acceptance rate (accepted / proposed) is compared with the previous version's over its
last ``window`` steps; a drop of more than ``drop`` (relative) reverts to the previous
version and restarts the learner from it.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque

from aurora_rl.core.trace import Trace
from aurora_rl.serving.publish import LivePolicy


class SwapMonitor:
    def __init__(self, live: LivePolicy, window: int, drop: float, on_rollback=None) -> None:
        self.live = live
        self.window = window
        self.drop = drop
        self.on_rollback = on_rollback
        self._rates: dict[int, deque[float]] = defaultdict(lambda: deque(maxlen=max(window, 1)))
        self._judged: set[int] = set()
        self._previous: dict[int, int] = {}  # version -> the version it replaced
        self._seen_version = live.version
        self._lock = threading.Lock()
        self.rolled_back: list[int] = []

    def observe(self, trace: Trace) -> int | None:
        """Record one step; returns the version rolled back from, if this step triggered it."""
        if self.window == 0 or trace.num_proposed == 0:
            return None
        with self._lock:
            current = self.live.version
            if current != self._seen_version:
                self._previous.setdefault(current, self._seen_version)
                self._seen_version = current
            self._rates[trace.draft_version].append(trace.num_accepted / trace.num_proposed)
            new_rates = self._rates[current]
            previous = self._previous.get(current)
            if current in self._judged or previous is None or len(new_rates) < self.window:
                return None
            self._judged.add(current)
            old_rates = self._rates[previous]
            if not old_rates:
                return None
            new_rate, old_rate = sum(new_rates) / len(new_rates), sum(old_rates) / len(old_rates)
            if new_rate >= old_rate * (1 - self.drop):
                return None
            restored = self.live.rollback()
            if restored is None:
                return None
            self._seen_version = restored.version
            self.rolled_back.append(current)
        if self.on_rollback is not None:
            self.on_rollback(current, restored)
        return current
