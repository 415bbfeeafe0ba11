"""Assemble a server: target + tokenizer + starting draft -> engine, learner, metrics, app.

The one place the serving parts are wired together, used by ``python -m aurora_rl.serve``
and by the tests alike::

    trace --> engine --+--> metrics
                       +--> OnlineLearning (buffer -> learner -> gate -> LivePolicy; monitor)
    LivePolicy --> every decode step (the engine's policy) --> snapshots on publish

or, following another process's learner (``snapshots.follow``)::

    followed LATEST.json --> SnapshotFollower (load, check) --> LivePolicy --> every decode step
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from fastapi import FastAPI
from transformers import PreTrainedTokenizerBase

from aurora_rl.algos import AlgoConfig
from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target, eos_token_ids
from aurora_rl.runtime.api import create_app
from aurora_rl.runtime.config import EngineSection, ServerSection, SnapshotSection
from aurora_rl.runtime.engine import Engine
from aurora_rl.runtime.follow import SnapshotFollower, follow_and_learn_error
from aurora_rl.online.learner import LearnerConfig
from aurora_rl.runtime.metrics import ServingMetrics
from aurora_rl.online.learning import OnlineLearning
from aurora_rl.online.publish import LivePolicy
from aurora_rl.online.snapshots import SnapshotStore, newest_good

logger = logging.getLogger(__name__)


@dataclass
class Server:
    """A built server; run ``app`` with any ASGI server (its lifespan starts and stops the rest)."""

    app: FastAPI
    engine: Engine
    live: LivePolicy
    metrics: ServingMetrics
    learning: OnlineLearning | None
    snapshots: SnapshotStore | None
    follower: SnapshotFollower | None = None
    resumed: str | None = None  # what a restart on an existing snapshot directory resumed, in words


def build_server(
    target: Target,
    tokenizer: PreTrainedTokenizerBase,
    drafter: DraftPolicy,
    *,
    decode: DecodeConfig,
    model_name: str,
    server: ServerSection = ServerSection(),
    engine: EngineSection = EngineSection(),
    learner: LearnerConfig | None = None,
    algo: AlgoConfig = AlgoConfig(),
    snapshots: SnapshotSection = SnapshotSection(directory=None),
    seed: int = 0,
) -> Server:
    """Wire a server around ``drafter`` (it becomes the first live version).

    ``learner=None`` serves the draft as it is; otherwise it is trained online from the
    traffic. With a snapshot directory every live version is written there; a directory
    left by an earlier run is resumed: its newest good version serves (``drafter`` does not),
    the learner continues its saved copy and optimizer, and new versions are numbered after
    every number the directory used, so a version number never names two different drafts.

    With ``snapshots.follow`` the server learns nothing and writes no snapshots: it serves
    the versions another process writes to that directory (``drafter`` only serves until
    the first one is there; see :mod:`aurora_rl.runtime.follow`).
    """
    follower, store, resumed = None, None, None
    if snapshots.follow:
        if learner is not None:
            raise ValueError(follow_and_learn_error(snapshots.follow))
        follower = SnapshotFollower(snapshots.follow, target, drafter.kind, snapshots.follow_interval,
                                    snapshots.follow_max_change, snapshots.follow_max_jump)  # fmt: skip
        live = LivePolicy(follower.initial(drafter))
    elif snapshots.directory:
        store = SnapshotStore(snapshots.directory, snapshots.keep)
        drafter, resumed = _resume(store, drafter, target)
        live = LivePolicy(drafter, on_publish=store.write_live, newest=store.newest_number())
    else:
        live = LivePolicy(drafter)
    if learner is not None and learner.mode != "async":
        raise ValueError(
            f"learner.mode={learner.mode!r}: a server's learner runs on its own thread so decoding never "
            "waits for it; set learner.mode=async"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    learning = OnlineLearning(live, algo, learner, pad_id, seed, store) if learner is not None else None
    if learning is not None and resumed is not None:
        resumed += "; " + learning.restore(target)
    if resumed is not None:
        logger.warning("snapshots %s: %s", store.directory, resumed)
    if learning is not None:
        decode = learning.decode_config(decode)
    if engine.keep_request_traces:  # kept for inspection: whole traces, the target's distributions too
        decode = replace(decode, record_target_probs=True)
    eos = eos_token_ids(tokenizer)
    decode_engine = Engine(target, live, decode, eos, engine, seed)
    metrics = ServingMetrics(decode.k, decode_engine, live, learning, follower, store)
    decode_engine.add_trace_listener(metrics.observe_trace)
    decode_engine.add_finish_listener(metrics.observe_finished)
    if learning is not None:
        decode_engine.add_trace_listener(learning.observe)
    app = create_app(engine=decode_engine, live=live, tokenizer=tokenizer, config=server, model_name=model_name,
                     metrics=metrics, learning=learning, follower=follower, snapshots=store)  # fmt: skip
    return Server(app, decode_engine, live, metrics, learning, store, follower, resumed)


def _resume(store: SnapshotStore, drafter: DraftPolicy, target: Target) -> tuple[DraftPolicy, str | None]:
    """Restart = resume: the directory's newest good version serves again (not ``drafter``);
    with none, ``drafter`` is written as the version after every number the directory used.
    Returns the draft to serve and, when resuming, what was done in words."""
    found = newest_good(store.directory, drafter.kind, target)
    skipped = "".join(f"; skipped {why}" for why in found.skipped)
    if found.policy is None:
        newest = store.newest_number()
        if newest is not None and drafter.version <= newest:
            drafter = drafter.clone(version=newest + 1)
        store.write_live(drafter)
        return drafter, (f"no usable version{skipped}; starting v{drafter.version} from the configured draft"
                         if skipped else None)  # fmt: skip
    if store.latest_version() != found.policy.version:
        store.write_live(found.policy)
    return found.policy, (f"resuming v{found.policy.version} (the newest good version; the configured draft is not "
                          f"used: point snapshots.directory elsewhere to start afresh){skipped}")  # fmt: skip
