"""Publishing draft versions in process: an atomic hot swap (on disk: ``online/snapshots.py``).

No torn weights (invariant 2): a published policy object is a private clone that is never
mutated afterwards, and a decode step reads ``LivePolicy.current`` once, so every step --
and every trace it writes -- uses exactly one version.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from aurora_rl.core.draft import DraftPolicy


class LivePolicy:
    """The draft version serving right now, plus the last good ones to roll back to.

    Args:
        policy: the initial version.
        keep: how many published versions to remember for rollback.
        on_publish: called with each newly live policy (e.g. to write a snapshot).
        newest: the highest version number already used elsewhere (a snapshot directory
            being continued): the next version is numbered above it.
    """

    def __init__(self, policy: DraftPolicy, keep: int = 4, on_publish: Callable[[DraftPolicy], None] | None = None,
                 newest: int | None = None) -> None:  # fmt: skip
        self._current = policy
        self._history: deque[DraftPolicy] = deque([policy], maxlen=max(keep, 1))
        self._lock = threading.Lock()
        self._on_publish = on_publish
        self._newest = max(policy.version, newest if newest is not None else policy.version)  # never reused
        self.swaps = 0
        self.rollbacks = 0
        self.swapped_at = time.time()

    @property
    def current(self) -> DraftPolicy:
        # One attribute read: atomic under the GIL, so readers never see half a swap.
        return self._current

    @property
    def version(self) -> int:
        return self._current.version

    @property
    def previous(self) -> DraftPolicy | None:
        """The version live before the current one (what a rollback would restore)."""
        history = self._history
        return history[-2] if len(history) >= 2 else None

    @property
    def next_version(self) -> int:
        """The number the next published version must carry (versions are never reused)."""
        return self._newest + 1

    def __call__(self) -> DraftPolicy:
        return self._current

    def publish(self, policy: DraftPolicy) -> None:
        """Make ``policy`` live. Its version must be newer than every version seen so far."""
        with self._lock:
            if policy.version <= self._newest:
                raise ValueError(
                    f"cannot publish version {policy.version}: version {self._newest} was already "
                    "published (versions only move forward; clone with version=live.next_version)"
                )
            self._newest = policy.version
            self._history.append(policy)
            self._current = policy
            self.swaps += 1
            self.swapped_at = time.time()
        if self._on_publish is not None:
            self._on_publish(policy)

    def rollback(self) -> DraftPolicy | None:
        """Return to the version before the current one (None if there is none)."""
        with self._lock:
            if len(self._history) < 2:
                return None
            self._history.pop()
            self._current = self._history[-1]
            self.rollbacks += 1
            self.swapped_at = time.time()
            return self._current
