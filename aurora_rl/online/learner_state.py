"""The learner's state on disk, so that a restarted server resumes learning where it stopped.

``snapshots/learner/`` holds the learner's trained copy (a loadable drafter), its optimizer
state (``optimizer.pt``) and counters (``learner_state.json``). It is written after every
publish attempt (so a SIGKILL loses at most ``publish_every`` updates) and on shutdown,
aside and then moved into place, like a version. A restarted server serves the newest good
version of the directory; :func:`restore` then continues the trained copy with its
optimizer when they were trained from that version, and otherwise starts a fresh copy of
it, saying why. Nothing here raises into the learner: a failed write is the store's error
(``/health`` degraded), a bad saved state is a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import asdict
from pathlib import Path

import torch

from aurora_rl.online.learner import Learner
from aurora_rl.online.snapshots import SnapshotStore, load_snapshot, same_mode_as_manifest

logger = logging.getLogger(__name__)

LEARNER_DIR = "learner"
LEARNER_STATE = "learner_state.json"
OPTIMIZER_FILE = "optimizer.pt"
COUNTERS = ("updates", "published", "rejected_updates", "gate_rejections")


def save(learner: Learner, store: SnapshotStore, extra: dict | None = None) -> Path | None:
    """Write ``learner``'s copy, optimizer state and counters to ``store``/learner/. Call it
    where no update runs (the learner's own thread, or after it stopped). Returns the path,
    or None if the directory could not be written (``store.error`` says why)."""
    final = store.directory / LEARNER_DIR
    staging = store.directory / f".{LEARNER_DIR}.tmp-{os.getpid()}-{threading.get_ident()}"
    state = {"live_version": learner.live.version, **{name: getattr(learner, name) for name in COUNTERS},
             "last_gate": asdict(learner.last_gate) if learner.last_gate else None,
             "state": learner.state, "error": learner.error, **(extra or {})}  # fmt: skip
    try:
        shutil.rmtree(staging, ignore_errors=True)
        learner.algorithm.policy.save_pretrained(staging)
        torch.save(learner.algorithm.optimizer.state_dict(), staging / OPTIMIZER_FILE)
        (staging / LEARNER_STATE).write_text(json.dumps(state, indent=2) + "\n")
        same_mode_as_manifest(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    except OSError as error:
        store.write_failures += 1
        store.error = f"writing the learner state to {final} failed: {type(error).__name__}: {error}"
        logger.error("snapshots: %s", store.error)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def restore(learner: Learner, store: SnapshotStore, target) -> str:
    """Continue ``learner`` from the state saved in ``store`` (if any); returns what was done,
    in words, for the log."""
    path = store.directory / LEARNER_DIR
    try:
        state = json.loads((path / LEARNER_STATE).read_text())
    except FileNotFoundError:
        return "no saved learner state: training starts from the live version"
    except (OSError, ValueError) as error:
        return f"{path / LEARNER_STATE} is unreadable ({error}): training starts from the live version"
    for name in COUNTERS:
        if isinstance(state.get(name), int):
            setattr(learner, name, state[name])
    live = learner.live.current
    if state.get("live_version") != live.version:
        return (f"the saved learner copy was trained from v{state.get('live_version')}, not the live v{live.version}: "
                f"training starts from v{live.version} (counters kept)")  # fmt: skip
    try:
        manifest_version = json.loads((path / "policy.json").read_text())["version"]
        copy = load_snapshot(path, manifest_version, live.kind, target)
        optimizer_state = torch.load(path / OPTIMIZER_FILE, weights_only=True)
        learner.resume(copy.clone(version=live.version), optimizer_state)
    except Exception as error:  # a truncated or foreign state: start afresh rather than not at all
        return f"the saved learner copy in {path} is unusable ({type(error).__name__}: {error}): training starts from v{live.version}"
    return f"resumed the learner's copy and optimizer from {path} ({learner.updates} updates so far)"
