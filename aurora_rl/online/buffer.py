"""``TraceBuffer``: a bounded, staleness-aware store of traces (invariant 4: bounded memory).

Traces arrive from decoding (possibly another thread) and leave as training samples. The
buffer never grows past ``capacity``; it says what it dropped and why. A deterministic
slice of *requests* (not steps, so no request straddles both sides) is kept apart as
held-out traces for gating candidate draft versions.
"""

from __future__ import annotations

import threading
import zlib
from collections import deque
from dataclasses import dataclass

import torch

from aurora_rl.core.trace import Trace


@dataclass(frozen=True)
class BufferStats:
    size: int
    heldout_size: int
    added: int
    added_for_training: int  # of ``added``, those that went to training (not held out)
    dropped_full: int  # evicted because the buffer was at capacity (oldest first)
    dropped_stale: int  # discarded at sampling time for being older than max_staleness
    mean_staleness: float  # over the traces currently held, in versions


class TraceBuffer:
    """A FIFO of traces with a staleness policy.

    Args:
        capacity: most training traces held; the oldest is evicted first.
        max_staleness: traces whose draft version is more than this many versions behind
            the current one are dropped (``policy="drop"``) or down-weighted by
            ``stale_decay ** staleness`` (``policy="downweight"``). None keeps everything.
        heldout_fraction: share of requests whose traces go to the held-out store.
        heldout_capacity: most held-out traces kept (the oldest go first).
        min_proposals: traces with fewer proposals than this (the final step of a budget
            has none) are not stored.
    """

    def __init__(
        self,
        capacity: int = 4096,
        max_staleness: int | None = None,
        policy: str = "drop",
        stale_decay: float = 0.5,
        heldout_fraction: float = 0.0,
        heldout_capacity: int = 512,
        min_proposals: int = 1,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        # Each message starts with its argument's name: LearnerConfig renames it to its own key.
        if policy not in ("drop", "downweight"):
            raise ValueError(f"policy must be 'drop' or 'downweight', got {policy!r}")
        if max_staleness is not None and max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 or None, got {max_staleness}")
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
        if not 0.0 < stale_decay <= 1.0:
            raise ValueError(f"stale_decay must be in (0, 1], got {stale_decay}")
        if heldout_capacity < 1:
            raise ValueError(f"heldout_capacity must be >= 1, got {heldout_capacity}")
        self.capacity = capacity
        self.max_staleness = max_staleness
        self.policy = policy
        self.stale_decay = stale_decay
        self.heldout_fraction = heldout_fraction
        self.min_proposals = min_proposals
        self._train: deque[Trace] = deque()
        self._heldout: deque[Trace] = deque(maxlen=heldout_capacity)
        self._lock = threading.Lock()
        self._added = self._added_for_training = self._dropped_full = self._dropped_stale = 0
        self._current_version = 0

    def is_heldout(self, request_id: str) -> bool:
        """Deterministic per request, so all steps of a request land on the same side."""
        bucket = zlib.crc32(request_id.encode()) / 2**32
        return bucket < self.heldout_fraction

    def add(self, trace: Trace) -> None:
        if trace.num_proposed < self.min_proposals:
            return
        with self._lock:
            self._added += 1
            if self.is_heldout(trace.request_id):
                self._heldout.append(trace)
                return
            self._added_for_training += 1
            if len(self._train) >= self.capacity:
                self._train.popleft()
                self._dropped_full += 1
            self._train.append(trace)

    def set_version(self, version: int) -> None:
        """The draft version now serving; staleness is measured against it."""
        with self._lock:
            self._current_version = version

    def _weight(self, trace: Trace) -> float:
        staleness = max(self._current_version - trace.draft_version, 0)
        if self.max_staleness is None or staleness <= self.max_staleness:
            return 1.0
        return self.stale_decay**staleness if self.policy == "downweight" else 0.0

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[list[Trace], list[float]]:
        """Up to ``batch_size`` traces drawn uniformly without replacement, with weights.

        Under ``policy="drop"``, traces past ``max_staleness`` are removed first.
        """
        with self._lock:
            if self.max_staleness is not None and self.policy == "drop":
                fresh = deque(t for t in self._train if self._weight(t) > 0)
                self._dropped_stale += len(self._train) - len(fresh)
                self._train = fresh
            pool = list(self._train)
            if not pool:
                return [], []
            order = torch.randperm(len(pool), generator=generator)[:batch_size].tolist()
            chosen = [pool[i] for i in order]
            return chosen, [self._weight(t) for t in chosen]

    def recent(self, count: int) -> list[Trace]:
        """The newest ``count`` training traces (oldest first)."""
        with self._lock:
            return list(self._train)[-count:]

    def heldout(self) -> list[Trace]:
        with self._lock:
            return list(self._heldout)

    @property
    def added_for_training(self) -> int:
        """Traces that went to training so far (not held out), evicted ones included."""
        return self._added_for_training

    def __len__(self) -> int:
        return len(self._train)

    def stats(self) -> BufferStats:
        with self._lock:
            staleness = [max(self._current_version - t.draft_version, 0) for t in self._train]
            return BufferStats(
                size=len(self._train),
                heldout_size=len(self._heldout),
                added=self._added,
                added_for_training=self._added_for_training,
                dropped_full=self._dropped_full,
                dropped_stale=self._dropped_stale,
                mean_staleness=sum(staleness) / len(staleness) if staleness else 0.0,
            )
