"""Publishing draft versions: in process (atomic hot swap) and on disk (versioned snapshots).

No torn weights (invariant 2): a published policy object is a private clone that is never
mutated afterwards, and a decode step reads ``LivePolicy.current`` once, so every step --
and every trace it writes -- uses exactly one version.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from aurora_rl.core.draft import DraftPolicy
from aurora_rl.policies.checkpoint import read_manifest as read_policy_manifest

LATEST = "LATEST.json"


class LivePolicy:
    """The draft version serving right now, plus the last good ones to roll back to.

    Args:
        policy: the initial version.
        keep: how many published versions to remember for rollback.
        on_publish: called with each newly live policy (e.g. to write a snapshot).
    """

    def __init__(self, policy: DraftPolicy, keep: int = 4, on_publish: Callable[[DraftPolicy], None] | None = None) -> None:
        self._current = policy
        self._history: deque[DraftPolicy] = deque([policy], maxlen=max(keep, 1))
        self._lock = threading.Lock()
        self._on_publish = on_publish
        self._newest = policy.version  # never reused, even after a rollback
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


class SnapshotStore:
    """Versioned drafter snapshots in a directory, for a learner and a server that share a
    filesystem (possibly on different machines).

    Each version is written to a temporary directory and moved into ``v000042/`` with one
    ``os.replace``; then ``LATEST.json`` is replaced atomically. A reader that follows
    ``LATEST.json`` therefore only ever sees complete snapshots.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 5) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def path_of(self, version: int) -> Path:
        return self.directory / f"v{version:06d}"

    def save(self, policy) -> Path:
        final = self.path_of(policy.version)
        staging = self.directory / f".{final.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(staging, ignore_errors=True)
        policy.save_pretrained(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        latest = {"version": policy.version, "path": final.name, "kind": policy.kind, "time": time.time()}
        partial = self.directory / f".{LATEST}.tmp-{os.getpid()}"
        partial.write_text(json.dumps(latest, indent=2) + "\n")
        os.replace(partial, self.directory / LATEST)
        self._prune()
        return final

    def latest_version(self) -> int | None:
        try:
            return int(json.loads((self.directory / LATEST).read_text())["version"])
        except FileNotFoundError:
            return None

    def latest_path(self) -> Path | None:
        version = self.latest_version()
        return None if version is None else self.path_of(version)

    def _prune(self) -> None:
        versions = sorted(p for p in self.directory.glob("v[0-9]*") if p.is_dir())
        for old in versions[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def manifest(self, version: int) -> dict:
        return read_policy_manifest(self.path_of(version))
