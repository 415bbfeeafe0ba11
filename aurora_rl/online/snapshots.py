"""Versioned draft snapshots on disk: written atomically, read back only when they check out.

Layout of a snapshot directory (shared by one learner and any number of followers)::

    v000042/        one version: policy.json (kind, version), config.json, model.safetensors
    LATEST.json     {"version": 42, "path": "v000042", ...}: the live version
    learner/        the learner's trained copy, optimizer state and counters (see online.py)

A version is written to a staging directory and moved into place with one ``os.replace``,
then ``LATEST.json`` is replaced atomically, so a reader following ``LATEST.json`` only ever
sees complete versions. Staging left by a killed writer is removed when a store opens the
directory. Every file gets the mode of the manifest written next to it (the umask's), so a
follower running as another user can read the weights too.

Reading is defensive: :func:`newest_good` walks the versions newest first and returns the
first that loads and passes :func:`load_snapshot`'s checks, with the reasons the newer ones
were skipped; a garbage ``LATEST.json`` is one such reason, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.target import Target
from aurora_rl.policies.checkpoint import read_manifest
from aurora_rl.policies.factory import load_drafter

logger = logging.getLogger(__name__)

LATEST = "LATEST.json"
VERSION_DIR = re.compile(r"^v(\d{6,})$")
STAGING = re.compile(r"^\..+\.tmp-\d+")  # .v000042.tmp-<pid>-<thread>, .LATEST.json.tmp-<pid>, .learner.tmp-<pid>


class UnusableSnapshot(Exception):
    """A snapshot (or ``LATEST.json``) this server cannot use; the message says why."""


@dataclass(frozen=True)
class Latest:
    """What ``LATEST.json`` points at."""

    version: int
    path: Path


def read_latest(directory: str | Path) -> Latest | None:
    """The version ``directory/LATEST.json`` names (None while there is none).

    Raises:
        UnusableSnapshot: the pointer exists but cannot be read or names no version.
    """
    directory = Path(directory)
    pointer = directory / LATEST
    try:
        data = json.loads(pointer.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # ValueError: not JSON (or not text)
        raise UnusableSnapshot(f"{pointer} is unreadable: {error}") from None
    try:
        version = int(data["version"])
        name = str(data.get("path") or f"v{version:06d}")
    except (TypeError, KeyError, ValueError):
        raise UnusableSnapshot(f"{pointer} names no version: {data!r}") from None
    if name in ("", ".", "..") or Path(name).name != name:  # a sibling directory, nothing else
        raise UnusableSnapshot(f"{pointer} points outside the directory: path={name!r}")
    return Latest(version, directory / name)


def weights_of(policy: DraftPolicy) -> torch.nn.Module:
    """The module holding a drafter's own weights: the one a learner optimises (an EAGLE
    head's parameters, not the target's), whatever the drafter's kind."""
    return policy.trainable


def load_snapshot(path: str | Path, version: int, kind: str, target: Target) -> DraftPolicy:
    """Load the drafter saved at ``path`` and check that it can serve next to ``target`` as
    version ``version`` of kind ``kind``.

    Raises:
        UnusableSnapshot: the manifest names another version or kind, the vocabulary is not
            the target's, or a weight is NaN/inf.
        FileNotFoundError, ValueError, OSError, ...: whatever the strict loader raises for a
            missing file, a missing / unexpected / mis-shaped weight or a truncated file.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("version") != version:
        raise UnusableSnapshot(f"{path}/policy.json says version {manifest.get('version')!r}, LATEST.json says {version}")
    if manifest.get("kind") != kind:
        raise UnusableSnapshot(
            f"{path} holds a {manifest.get('kind')!r} drafter but this server serves {kind!r} drafters "
            f"(start the follower with drafter.kind={manifest.get('kind')})"
        )
    policy = load_drafter(path, target)
    if policy.vocab_size != target.vocab_size:
        raise UnusableSnapshot(f"{path} proposes over {policy.vocab_size} tokens, the target's vocabulary has {target.vocab_size}")
    with torch.no_grad():
        bad = [name for name, value in weights_of(policy).named_parameters() if not torch.isfinite(value).all()]
    if bad:
        raise UnusableSnapshot(f"{path} has non-finite weights: {bad[:3]}{' ...' if len(bad) > 3 else ''}")
    return policy


def relative_change(policy: DraftPolicy, reference: DraftPolicy) -> float:
    """``||w - w_ref|| / ||w_ref||`` over the drafters' own weights (inf if they do not match)."""
    new, old = weights_of(policy).state_dict(), weights_of(reference).state_dict()
    if new.keys() != old.keys() or any(new[k].shape != old[k].shape for k in new):
        return float("inf")
    with torch.no_grad():
        diff = sum(float((new[k].float() - old[k].float()).pow(2).sum()) for k in new)
        norm = sum(float(old[k].float().pow(2).sum()) for k in old)
    return (diff / max(norm, 1e-30)) ** 0.5


@dataclass
class Found:
    """The newest usable snapshot of a directory, and why newer ones were passed over."""

    policy: DraftPolicy | None
    skipped: list[str] = field(default_factory=list)


def version_dirs(directory: Path) -> list[tuple[int, Path]]:
    """``(version, path)`` of every ``v000042/`` directory, newest first."""
    found = []
    for path in directory.iterdir() if directory.is_dir() else ():
        match = VERSION_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def newest_good(directory: str | Path, kind: str, target: Target, below: int | None = None) -> Found:
    """The version ``LATEST.json`` names if it loads, else the newest that does (only
    versions under ``below`` when given). Nothing raises: each unusable candidate (or an
    unreadable ``LATEST.json``) is listed in ``skipped`` with the reason."""
    directory = Path(directory)
    found = Found(None)
    candidates: list[tuple[int, Path]] = []
    try:
        latest = read_latest(directory)
        if latest is not None:
            candidates.append((latest.version, latest.path))
    except UnusableSnapshot as error:
        found.skipped.append(f"{error}")
    candidates += [c for c in version_dirs(directory) if c not in candidates]
    for version, path in candidates:
        if below is not None and version >= below:
            continue
        try:
            found.policy = load_snapshot(path, version, kind, target)
            return found
        except Exception as error:  # anything a broken snapshot raises; the next older one may do
            found.skipped.append(f"v{version}: {type(error).__name__}: {error}")
    return found


class SnapshotStore:
    """Versioned drafter snapshots in a directory, for a learner and a server that share a
    filesystem (possibly on different machines). One writer per directory.

    Args:
        directory: created if missing; staging left by a killed writer is removed.
        keep: how many versions stay on disk (the oldest are pruned, never the one
            ``LATEST.json`` names).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 5) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.write_failures = 0  # saves that failed (read-only or full directory)
        self.error: str | None = None  # why the latest save failed; None once one succeeds again
        self._lock = threading.Lock()  # the learner and the control thread both write
        self._newest: int | None = None
        self._newest = self.newest_number()
        self.cleaned = self._remove_staging()
        if self.cleaned:
            logger.warning("snapshots %s: removed staging left by an interrupted write: %s", self.directory,
                           ", ".join(self.cleaned))  # fmt: skip

    def path_of(self, version: int) -> Path:
        return self.directory / f"v{version:06d}"

    def save(self, policy: DraftPolicy) -> Path:
        """Write ``policy`` as its version and point ``LATEST.json`` at it.

        Raises:
            OSError: the directory is not writable (or full); nothing half-written stays
                visible, and a later save tries again.
        """
        final = self.path_of(policy.version)
        staging = self.directory / f".{final.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            policy.save_pretrained(staging)
            same_mode_as_manifest(staging)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.point_latest(policy.version, policy.kind)
        self._prune()
        return final

    def write_live(self, policy: DraftPolicy) -> bool:
        """Make ``policy`` the directory's live version (written unless already there) without
        raising: a failure is logged, counted and kept in ``error`` (``/health`` says
        degraded) until a later write succeeds. Returns whether it was written."""
        try:
            with self._lock:
                path = self.path_of(policy.version)
                if path.is_dir() and _manifest_version(path) == policy.version:  # a rollback to a version on disk
                    self.point_latest(policy.version, policy.kind)
                else:
                    self.save(policy)
        except OSError as error:
            self.write_failures += 1
            self.error = f"writing v{policy.version} to {self.directory} failed: {type(error).__name__}: {error}"
            logger.error("snapshots: %s; serving goes on, the next version will be tried again", self.error)
            return False
        if self.error is not None:
            logger.warning("snapshots %s: writable again (v%d written)", self.directory, policy.version)
        self.error = None
        return True

    def point_latest(self, version: int, kind: str) -> None:
        """Replace ``LATEST.json`` (atomically) so that it names ``version``."""
        self._newest = max(version, self._newest if self._newest is not None else version)
        # "newest" keeps the highest number used even after its directory is pruned (a
        # rolled-back version), so a restart never gives that number to another draft.
        latest = {"version": version, "path": self.path_of(version).name, "kind": kind, "newest": self._newest,
                  "time": time.time()}  # fmt: skip
        partial = self.directory / f".{LATEST}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            partial.write_text(json.dumps(latest, indent=2) + "\n")
            os.replace(partial, self.directory / LATEST)
        finally:
            partial.unlink(missing_ok=True)

    def latest_version(self) -> int | None:
        """What ``LATEST.json`` names (None if absent or unreadable)."""
        try:
            latest = read_latest(self.directory)
        except UnusableSnapshot:
            return None
        return None if latest is None else latest.version

    def latest_path(self) -> Path | None:
        version = self.latest_version()
        return None if version is None else self.path_of(version)

    def newest_number(self) -> int | None:
        """The highest version number this directory has used (named by LATEST.json or a
        version directory): a new version must be numbered above it."""
        numbers = [version for version, _ in version_dirs(self.directory)]
        if (latest := self.latest_version()) is not None:
            numbers.append(latest)
        try:
            numbers.append(int(json.loads((self.directory / LATEST).read_text())["newest"]))
        except (OSError, ValueError, TypeError, KeyError):
            pass
        if self._newest is not None:
            numbers.append(self._newest)
        return max(numbers, default=None)

    def _prune(self) -> None:
        protected = self.latest_version()
        versions = [(v, p) for v, p in version_dirs(self.directory) if v != protected]
        for _, old in versions[max(self.keep - (protected is not None), 0) :]:
            shutil.rmtree(old, ignore_errors=True)

    def _remove_staging(self) -> list[str]:
        removed = []
        for path in self.directory.iterdir():
            if STAGING.match(path.name):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path.name)
        return sorted(removed)


def _manifest_version(path: Path) -> int | None:
    try:
        return read_manifest(path).get("version")
    except (OSError, ValueError):
        return None


def same_mode_as_manifest(directory: Path) -> None:
    """Give every file in ``directory`` the mode its manifest got from the umask (weights
    libraries write 0600 files; a follower running as another user must read them too)."""
    manifest = next((p for p in directory.iterdir() if p.suffix == ".json"), None)
    if manifest is None:
        return
    mode = manifest.stat().st_mode & 0o777
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(mode)
