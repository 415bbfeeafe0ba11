"""Prometheus metrics of a server, served as text at ``GET /metrics``.

Two kinds: event counters and histograms updated as things happen (HTTP requests, verify
steps, finished requests), and state read at scrape time (live draft version, swaps,
rollbacks, learner or snapshot-follower counters, queue depth), so a value is never stale or
double-kept.

Per-position acceptance is a pair of counters per proposal position ``i``; the rate is
``aurora_position_accepted_total / aurora_position_proposed_total`` (in PromQL, a ratio of
``rate()``s). Each registry is private to its server, so several servers (tests) coexist.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aurora_rl.core.trace import Trace
from aurora_rl.runtime.engine import Engine, RequestStats
from aurora_rl.runtime.follow import SnapshotFollower
from aurora_rl.online.learning import OnlineLearning
from aurora_rl.online.publish import LivePolicy
from aurora_rl.online.snapshots import SnapshotStore

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0)
LEARNER_STATES = ("off", "idle", "running", "crashed")


def health_problems(learning: OnlineLearning | None, snapshots: SnapshotStore | None) -> list[str]:
    """What makes a serving server degraded: learning or publishing that failed (empty: ok)."""
    problems = []
    if learning is not None and learning.learner.error is not None:
        problems.append("the learner crashed (serving goes on with the last good version): "
                        + learning.learner.error.strip().splitlines()[-1])  # fmt: skip
    if snapshots is not None and snapshots.error is not None:
        problems.append(snapshots.error)
    return problems


class ServingMetrics:
    """The metrics of one server.

    Args:
        k: the lookahead (proposal positions 0..k-1 are labelled up front).
        engine: read at scrape time for queue depth and active requests.
        live: read at scrape time for the version, swaps and rollbacks.
        learning: read at scrape time for learner counters (None = learning off).
        follower: read at scrape time for follow-mode counters (None = not following).
        snapshots: read at scrape time for snapshot write failures (None = no directory).
    """

    def __init__(self, k: int, engine: Engine, live: LivePolicy, learning: OnlineLearning | None,
                 follower: SnapshotFollower | None = None, snapshots: SnapshotStore | None = None) -> None:  # fmt: skip
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("aurora_http_requests", "HTTP requests answered, by endpoint and status code",
                                     ["endpoint", "code"], registry=r)  # fmt: skip
        self.internal_errors = Counter("aurora_internal_errors", "Requests that hit a bug (answered 500 with a JSON body)",
                                       registry=r)  # fmt: skip
        self.requests = Counter("aurora_requests", "Generation requests finished, by finish reason (eos, length, cancelled, error)",
                                ["finish_reason"], registry=r)  # fmt: skip
        self.steps = Counter("aurora_draft_steps", "Verify steps, one per request per step (a batched step verifies "
                             "several requests in one target forward: see aurora_verify_forwards)", registry=r)  # fmt: skip
        self.draft_tokens = Counter("aurora_draft_tokens", "Tokens proposed by the draft", registry=r)
        self.accepted_tokens = Counter("aurora_accepted_tokens", "Proposed tokens the target accepted", registry=r)
        self.generated_tokens = Counter("aurora_generated_tokens", "Tokens emitted (accepted + the target's own)", registry=r)
        proposed = Counter("aurora_position_proposed", "Proposals made at each position of a step", ["position"], registry=r)
        accepted = Counter("aurora_position_accepted", "Proposals accepted at each position of a step", ["position"], registry=r)
        self._position_proposed = [proposed.labels(str(i)) for i in range(k)]
        self._position_accepted = [accepted.labels(str(i)) for i in range(k)]
        self.accepted_length = Histogram("aurora_accepted_length", "Tokens emitted per verify step (tau)",
                                         buckets=tuple(range(1, k + 2)), registry=r)  # fmt: skip
        self.latency = Histogram("aurora_request_seconds", "Submission to last token", buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("aurora_time_to_first_token_seconds", "Submission to first token",
                                     buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queued = Histogram("aurora_queue_seconds", "Submission to admission into a decode slot",
                                buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        r.register(_StateCollector(engine, live, learning, follower, snapshots))

    def observe_trace(self, trace: Trace) -> None:
        """Engine trace listener."""
        self.steps.inc()
        self.draft_tokens.inc(trace.num_proposed)
        self.accepted_tokens.inc(trace.num_accepted)
        self.generated_tokens.inc(len(trace.emitted))
        self.accepted_length.observe(len(trace.emitted))
        for position, accepted in enumerate(trace.accept_mask.tolist()):
            self._position_proposed[position].inc()
            if accepted:
                self._position_accepted[position].inc()

    def observe_finished(self, stats: RequestStats) -> None:
        """Engine finish listener."""
        self.requests.labels(stats.finish_reason).inc()
        self.latency.observe(stats.total_seconds)
        self.queued.observe(stats.queued_seconds)
        if stats.first_token_seconds is not None:
            self.first_token.observe(stats.first_token_seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector(Collector):
    """Values owned by other components, read when Prometheus scrapes."""

    def __init__(self, engine: Engine, live: LivePolicy, learning: OnlineLearning | None,
                 follower: SnapshotFollower | None, snapshots: SnapshotStore | None) -> None:  # fmt: skip
        self.engine, self.live, self.learning, self.follower = engine, live, learning, follower
        self.snapshots = snapshots

    def collect(self):
        yield GaugeMetricFamily("aurora_degraded", "1 while learning or snapshot writing has failed (see /health)",
                                value=float(bool(health_problems(self.learning, self.snapshots))))  # fmt: skip
        if self.snapshots is not None:
            yield CounterMetricFamily("aurora_snapshot_write_failures", "Snapshot or learner-state writes that failed",
                                      value=self.snapshots.write_failures)  # fmt: skip
        yield GaugeMetricFamily("aurora_draft_version", "Draft version serving now", value=self.live.version)
        yield CounterMetricFamily("aurora_draft_swaps", "Draft versions published to serving", value=self.live.swaps)
        yield CounterMetricFamily("aurora_draft_rollbacks", "Versions rolled back after live acceptance dropped",
                                  value=self.live.rollbacks)  # fmt: skip
        yield GaugeMetricFamily("aurora_queue_depth", "Requests waiting for a decode slot", value=self.engine.queue_depth)
        yield GaugeMetricFamily("aurora_active_requests", "Requests being decoded", value=self.engine.num_active)
        yield CounterMetricFamily("aurora_verify_forwards", "Target verify forward passes; aurora_draft_steps_total / "
                                  "this = requests per batched step", value=self.engine.verify_forwards)  # fmt: skip
        follower = self.follower
        if follower is not None:
            yield CounterMetricFamily("aurora_follow_loaded", "Versions loaded from the followed snapshot directory",
                                      value=follower.loaded)  # fmt: skip
            yield CounterMetricFamily("aurora_follow_failures", "Snapshots (or LATEST.json contents) skipped as unusable",
                                      value=follower.failures)  # fmt: skip
            yield CounterMetricFamily("aurora_follow_rollbacks", "Rollbacks followed (LATEST.json went back a version)",
                                      value=follower.rollbacks)  # fmt: skip
            latest = -1 if follower.latest_version is None else follower.latest_version
            yield GaugeMetricFamily("aurora_follow_latest_version", "Version the followed LATEST.json named at the last "
                                    "look (-1: none yet)", value=latest)  # fmt: skip
            yield GaugeMetricFamily("aurora_follow_last_poll_timestamp_seconds", "When the followed directory was last "
                                    "read (0: not yet)", value=follower.last_poll or 0.0)  # fmt: skip
        learner = self.learning.learner if self.learning else None
        state = GaugeMetricFamily("aurora_learner_state", "1 for the learner's current state", labels=["state"])
        for name in LEARNER_STATES:
            state.add_metric([name], float((learner.state if learner else "off") == name))
        yield state
        if learner is None:
            return
        yield CounterMetricFamily("aurora_learner_updates", "Optimizer steps taken", value=learner.updates)
        yield CounterMetricFamily("aurora_learner_rejected_updates", "Updates rejected (non-finite loss or gradient)",
                                  value=learner.rejected_updates)  # fmt: skip
        yield CounterMetricFamily("aurora_learner_published", "Candidates that passed the gate", value=learner.published)
        yield CounterMetricFamily("aurora_learner_gate_rejections", "Candidates the gate held back",
                                  value=learner.gate_rejections)  # fmt: skip
        stats = self.learning.buffer.stats()
        yield GaugeMetricFamily("aurora_trace_buffer_size", "Traces held for training", value=stats.size)
        dropped = CounterMetricFamily("aurora_trace_buffer_dropped", "Traces dropped by the buffer, by reason", labels=["reason"])
        dropped.add_metric(["full"], stats.dropped_full)
        dropped.add_metric(["stale"], stats.dropped_stale)
        yield dropped
