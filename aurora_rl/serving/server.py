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

from dataclasses import dataclass, replace

from fastapi import FastAPI
from transformers import PreTrainedTokenizerBase

from aurora_rl.algos import AlgoConfig
from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.serving.api import create_app
from aurora_rl.serving.config import EngineSection, ServerSection, SnapshotSection
from aurora_rl.serving.engine import Engine
from aurora_rl.serving.follow import SnapshotFollower, follow_and_learn_error
from aurora_rl.serving.learner import LearnerConfig
from aurora_rl.serving.metrics import ServingMetrics
from aurora_rl.serving.online import OnlineLearning
from aurora_rl.serving.publish import LivePolicy, SnapshotStore


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
    left by an earlier run is continued: the first version numbers after its newest, so a
    version number never names two different drafts.

    With ``snapshots.follow`` the server learns nothing and writes no snapshots: it serves
    the versions another process writes to that directory (``drafter`` only serves until
    the first one is there; see :mod:`aurora_rl.serving.follow`).
    """
    follower, store = None, None
    if snapshots.follow:
        if learner is not None:
            raise ValueError(follow_and_learn_error(snapshots.follow))
        follower = SnapshotFollower(snapshots.follow, target, drafter.kind, snapshots.follow_interval)
        live = LivePolicy(follower.initial(drafter))
    else:
        store = SnapshotStore(snapshots.directory, snapshots.keep) if snapshots.directory else None
        if store is not None and store.latest_version() is not None and drafter.version <= store.latest_version():
            drafter = drafter.clone(version=store.latest_version() + 1)
        live = LivePolicy(drafter, on_publish=store.save if store else None)
        if store is not None:
            store.save(drafter)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    learning = OnlineLearning(live, algo, learner, pad_id, seed, store) if learner is not None else None
    if learning is not None and learning.needs_exploration and decode.explore_temperature is None:
        decode = replace(decode, explore_temperature=algo.explore_temperature)
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    decode_engine = Engine(target, live, decode, eos, engine, seed)
    metrics = ServingMetrics(decode.k, decode_engine, live, learning, follower)
    decode_engine.add_trace_listener(metrics.observe_trace)
    decode_engine.add_finish_listener(metrics.observe_finished)
    if learning is not None:
        decode_engine.add_trace_listener(learning.observe)
    app = create_app(engine=decode_engine, live=live, tokenizer=tokenizer, config=server, model_name=model_name,
                     metrics=metrics, learning=learning, follower=follower)  # fmt: skip
    return Server(app, decode_engine, live, metrics, learning, store, follower)
