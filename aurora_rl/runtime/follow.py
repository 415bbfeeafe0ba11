"""Follow mode: serve the draft versions another process learns, without learning here.

A learner (``python -m aurora_rl.serve`` with learning on, on this machine or on another one
sharing the filesystem) writes every version it publishes with
:class:`~aurora_rl.online.snapshots.SnapshotStore`: ``v000042/`` is moved into place whole,
then ``LATEST.json`` is replaced. A :class:`SnapshotFollower` reads that pointer every
``interval`` seconds on its own thread. When it names a newer version, the follower loads it
with the drafters' own strict checkpoint loading, checks that it can serve here, and
publishes it into the engine's ``LivePolicy``: the same hot swap as an in-process publish
(decoding switches between two steps), under the number the learner gave it, so traces and
responses name the learner's version. When ``LATEST.json`` steps back to the version before
the live one (the learner rolled a version back), the follower rolls back too.

A snapshot that cannot be served -- half-copied, corrupt, a manifest that disagrees with
``LATEST.json``, another drafter kind or vocabulary, non-finite weights -- is skipped with a
warning and tried again once its files change; serving goes on with the version it has.
Nothing on the follower's thread can take serving down.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.target import Target
from aurora_rl.online.publish import LivePolicy
from aurora_rl.online.snapshots import Latest, UnusableSnapshot, load_snapshot, newest_good, read_latest, relative_change

logger = logging.getLogger(__name__)

# The version a follower serves its own starting draft under until the first snapshot
# arrives: no learner gives it (they count from 0), so a number never names two drafts.
LOCAL_VERSION = -1


def follow_and_learn_error(directory: str) -> str:
    """The refusal of ``learn=true`` together with ``snapshots.follow`` (one wording for the
    CLI's config check and for :func:`~aurora_rl.runtime.server.build_server`)."""
    return (
        f"snapshots.follow={directory!r} and learn=true: a follower serves the versions another process's "
        "learner writes and does not learn itself; set learn=false to follow, or drop snapshots.follow to "
        "learn in this process"
    )


class SnapshotFollower:
    """Publishes into a ``LivePolicy`` each newer version another process writes to ``directory``.

    Args:
        directory: the snapshot directory a learner writes (``LATEST.json`` + ``v000042/``).
            It need not exist yet.
        target: the served target (loading checks the drafter fits it; EAGLE heads attach to it).
        kind: the drafter kind this server serves (``small_lm`` or ``eagle``).
        interval: seconds between two reads of ``LATEST.json``.
        max_change: a version whose weights differ from the live learner version's by more
            than this fraction of their norm (``||w - w_live|| / ||w_live||``) is refused as
            garbage: a learner moves its draft a little per version.
        max_jump: a version numbered more than this many above the live learner version is
            refused (a crafted number would otherwise hide every real version after it).

    Counters (read by ``/metrics``): ``loaded`` versions published, ``failures`` snapshots
    (or ``LATEST.json`` contents) skipped, ``rollbacks`` followed, ``latest_version`` the
    version ``LATEST.json`` named at the last look, ``last_error``.
    """

    def __init__(self, directory: str | Path, target: Target, kind: str, interval: float = 1.0,
                 max_change: float = 1.0, max_jump: int = 1000) -> None:  # fmt: skip
        if not interval > 0:
            raise ValueError(f"interval={interval} must be > 0 seconds")
        self.max_change, self.max_jump = max_change, max_jump
        self.directory = Path(directory)
        self.target = target
        self.kind = kind
        self.interval = interval
        self.loaded = 0
        self.failures = 0
        self.rollbacks = 0
        self.latest_version: int | None = None
        self.last_error: str | None = None
        self.last_poll: float | None = None
        self._failed: tuple | None = None  # what the last failure was made of: retried once it changes
        self._ignored: int | None = None  # an older version already warned about
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one look -------------------------------------------------------------------------

    def initial(self, fallback: DraftPolicy) -> DraftPolicy:
        """What serving starts with: the latest snapshot if there is one that loads, else
        ``fallback`` under :data:`LOCAL_VERSION` until the first snapshot arrives."""
        self._read_latest()
        found = newest_good(self.directory, self.kind, self.target)
        for why in found.skipped:
            self.failures += 1
            self.last_error = why
            logger.warning("following %s: skipped %s", self.directory, why)
        if found.policy is not None:
            self.loaded += 1
            passed = f" (passed over {len(found.skipped)} unusable: see above)" if found.skipped else ""
            logger.info("following %s: starting with v%d%s", self.directory, found.policy.version, passed)
            return found.policy
        logger.warning("following %s: no usable snapshot yet; serving the local starting draft as v%d until one "
                       "arrives", self.directory, LOCAL_VERSION)  # fmt: skip
        return fallback.clone(version=LOCAL_VERSION)

    def poll(self, live: LivePolicy) -> bool:
        """Read ``LATEST.json`` once and make ``live`` serve what it names, if that is newer
        (or the version before the live one: a rollback). Returns True if the live version
        changed. Never raises for a bad snapshot: it is skipped with a warning."""
        self.last_poll = time.time()
        latest = self._read_latest()
        if latest is None or latest.version == live.version:
            return False
        if latest.version < live.next_version:  # not new: a rollback, or nothing to do
            previous = live.previous
            if previous is not None and previous.version == latest.version:
                bad = live.version
                live.rollback()
                self.rollbacks += 1
                logger.warning("following %s: LATEST.json went back to v%d; rolled v%d back", self.directory,
                               latest.version, bad)  # fmt: skip
                return True
            if self._ignored != latest.version:
                self._ignored = latest.version
                logger.warning("following %s: LATEST.json names v%d, which is not newer than the live v%d (and not "
                               "the one before it); serving v%d until a newer version appears", self.directory,
                               latest.version, live.version, live.version)  # fmt: skip
            return False
        started = time.perf_counter()
        policy = self._load(latest, live)
        if policy is None and live.version == LOCAL_VERSION:  # still on the local draft: an older good one beats it
            policy = newest_good(self.directory, self.kind, self.target, below=latest.version).policy
        if policy is None or self._stop.is_set():  # a follower being stopped swaps nothing in
            return False
        was = live.version
        live.publish(policy)
        self.loaded += 1
        logger.info("following %s: v%d is live (was v%d; loaded in %.2f s)", self.directory, policy.version, was,
                    time.perf_counter() - started)  # fmt: skip
        return True

    def _read_latest(self) -> Latest | None:
        try:
            latest = read_latest(self.directory)
        except UnusableSnapshot as error:
            self._skip(("pointer", str(error)), str(error), serving=None)
            return None
        if latest is not None:
            self.latest_version = latest.version
        return latest

    def _load(self, latest: Latest, live: LivePolicy) -> DraftPolicy | None:
        # The state of the files before loading: if loading fails, it is retried only once
        # they change (a snapshot being copied in, or replaced), not every interval.
        made_of = ("snapshot", latest.version, _files_of(latest.path))
        if made_of == self._failed:
            return None
        try:
            policy = load_snapshot(latest.path, latest.version, self.kind, self.target)
            if live.version != LOCAL_VERSION:  # a learner's version to compare with
                self._check_plausible(policy, live.current)
        except Exception as error:  # anything a broken snapshot raises; serving must go on
            self._skip(made_of, f"v{latest.version}: {type(error).__name__}: {error}", live.version)
            return None
        self._failed = None
        return policy

    def _check_plausible(self, policy: DraftPolicy, live: DraftPolicy) -> None:
        """Refuse what no learner publishes after ``live``: a far jump in numbering, or
        weights (finite, but) far from the live version's."""
        if policy.version - live.version > self.max_jump:
            raise UnusableSnapshot(
                f"v{policy.version} is {policy.version - live.version} versions ahead of the live v{live.version} "
                f"(more than snapshots.follow_max_jump={self.max_jump}); a learner publishes one version at a time"
            )
        change = relative_change(policy, live)
        if change > self.max_change:
            raise UnusableSnapshot(
                f"its weights differ from the live v{live.version}'s by {change:.3g} of their norm (more than "
                f"snapshots.follow_max_change={self.max_change}); not a learner's next version"
            )

    def _skip(self, made_of: tuple, why: str, serving: int | None) -> None:
        if made_of == self._failed:  # the same unreadable LATEST.json: warned already
            return
        self._failed = made_of
        self.failures += 1
        self.last_error = why
        keeping = "" if serving is None else f"; serving v{serving} until it changes or a newer version appears"
        logger.warning("following %s: skipped %s%s", self.directory, why, keeping)

    # -- the thread ------------------------------------------------------------------------

    def start(self, live: LivePolicy) -> None:
        """Poll every ``interval`` seconds on a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(live,), name="aurora-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for a load in progress to finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, live: LivePolicy) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll(live)
            except Exception:  # a bug here must not end following, let alone serving
                self.failures += 1
                logger.exception("following %s: a poll failed; trying again in %.1f s", self.directory, self.interval)


def _files_of(path: Path) -> tuple | None:
    """(name, size, mtime) of each file in a snapshot directory (None if it does not exist)."""
    try:
        return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()))
    except OSError:
        return None
