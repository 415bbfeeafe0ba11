"""The decode engine: a bounded request queue and one worker thread that owns the target.

Scheduling is continuous batching at step granularity: the worker keeps up to
``max_active`` requests in flight and advances them round-robin, up to ``max_batch`` at a
time in one batched speculative step (``core.spec.speculate_batch``: the draft proposes
for all of them round by round, the target verifies all of them in one ragged forward),
admitting queued requests as slots free up. A new request starts within one round of
steps and a long one never holds the target for more than one step at a time. Each row
keeps its own cache, decoding rule and generator, so a request's output does not depend
on who it was batched with (up to float reassociation in the batched forwards).

Every step's trace goes to the trace listeners (learner buffer, rollback monitor, metrics)
and its emitted tokens to the request's sink. The engine reads the live draft once per
step, so a version published by the learner takes over between two steps of in-flight
requests with no pause, and every trace names the version that proposed it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Callable, Iterable

import torch

from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.ragged import batchable
from aurora_rl.core.spec import BatchStepError, DecodeConfig, speculate_batch, start_decode
from aurora_rl.core.target import Target
from aurora_rl.core.trace import Trace
from aurora_rl.runtime.config import EngineSection
from aurora_rl.runtime.requests import (  # noqa: F401  (re-exported: the engine's public types)
    SHUTTING_DOWN, EngineClosed, EngineFull, EngineOutput, GenerationRequest, RequestHandle, RequestStats, Sink,
    _Sequence,
)

logger = logging.getLogger(__name__)


class Engine:
    """Decodes submitted requests, one batched speculative step per :meth:`step`.

    Whoever drives it calls ``step()``: the server starts a worker thread that does
    ``while running: step()`` (:meth:`start`); the train CLI calls it in its own loop
    (``while engine.busy: engine.step()``), so both measure the same code path.

    Args:
        target: the verifier (used only by the worker thread).
        policy: the draft, or a zero-argument callable returning the current one (a
            ``LivePolicy``), read once per step.
        decode: lookahead, trace options and the default sampling rule; a request's own
            sampling rule replaces ``decode.sampling``.
        eos_token_ids: tokens that end a request.
        config: queue and concurrency limits.
        seed: seeds the random draws of requests that send no seed of their own.
        step: the batched speculative step the engine runs, with
            :func:`~aurora_rl.core.spec.speculate_batch`'s signature (the default). A seam
            for instrumentation and fault injection: wrap it to count rows or to fail.
    """

    def __init__(
        self,
        target: Target,
        policy: DraftPolicy | Callable[[], DraftPolicy] | None,
        decode: DecodeConfig,
        eos_token_ids: Iterable[int],
        config: EngineSection = EngineSection(),
        seed: int = 0,
        step: Callable[..., list[Trace]] = speculate_batch,
    ) -> None:
        self.target = target
        self._speculate = step
        self.policy = policy
        self.decode = decode
        self.eos_token_ids = tuple(eos_token_ids)
        self.config = config
        self.seed = seed
        SpeculativeDecoder(target, policy, decode, self.eos_token_ids)  # fail fast on a mismatched draft
        self._waiting: queue.Queue[_Sequence] = queue.Queue(maxsize=config.max_queue)
        self._active: deque[_Sequence] = deque()
        self._stepping: list[_Sequence] = []  # taken out of _active for the step in progress
        self.verify_forwards = 0  # target verify passes; each advances one or a batch of requests
        self._trace_listeners: list[Callable[[Trace], None]] = []
        self._finish_listeners: list[Callable[[RequestStats], None]] = []
        self._kept: OrderedDict[str, list[Trace]] = OrderedDict()
        self._kept_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._seeds = itertools.count()
        self._accepting = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- wiring -----------------------------------------------------------------------

    def add_trace_listener(self, listener: Callable[[Trace], None]) -> None:
        """Called on the worker thread with every trace; must be quick and must not block."""
        self._trace_listeners.append(listener)

    def add_finish_listener(self, listener: Callable[[RequestStats], None]) -> None:
        """Called on the worker thread with the stats of every finished request."""
        self._finish_listeners.append(listener)

    @property
    def max_context(self) -> int:
        """Prompt + generated tokens one request may span."""
        return self.target.max_positions

    @property
    def vocab_size(self) -> int:
        return self.target.vocab_size

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a decode slot."""
        return self._waiting.qsize()

    @property
    def num_active(self) -> int:
        """Requests being decoded."""
        return len(self._active) + len(self._stepping)

    @property
    def running(self) -> bool:
        """Whether the worker thread started by :meth:`start` is stepping the engine."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Requests are queued or in flight: :meth:`step` has work to do."""
        return bool(self.num_active) or not self._waiting.empty()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def traces_of(self, request_id: str) -> list[Trace]:
        """The traces of one of the last ``keep_request_traces`` requests ([] if not kept)."""
        with self._kept_lock:
            return list(self._kept.get(request_id, ()))

    # --- the caller's side -------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        self._thread = threading.Thread(target=self._run, name="aurora-decode", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, sink: Sink) -> RequestHandle:
        """Queue ``request``; ``sink`` receives its outputs on the worker thread.

        Raises:
            EngineClosed: the engine is shutting down.
            EngineFull: ``max_queue`` requests are already waiting.
        """
        with self._submit_lock:
            if not self._accepting:
                raise EngineClosed(SHUTTING_DOWN)
            seed = request.seed if request.seed is not None else self.seed * 1_000_003 + next(self._seeds)
            sequence = _Sequence(request, sink, torch.Generator().manual_seed(seed))
            try:
                self._waiting.put_nowait(sequence)
            except queue.Full:
                raise EngineFull(
                    f"{self.config.max_queue} requests are already waiting (engine.max_queue); retry later"
                ) from None
        return RequestHandle(sequence)

    def close(self, drain_seconds: float = 0.0) -> None:
        """Stop accepting, give in-flight and queued requests up to ``drain_seconds`` to
        finish, cancel whatever is left, and stop the worker."""
        with self._submit_lock:
            self._accepting = False
        deadline = time.monotonic() + drain_seconds
        while self.running and (self.num_active or not self._waiting.empty()) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._cancel_all()  # requests left if the worker never ran

    # --- stepping ---------------------------------------------------------------------

    def step(self, wait_seconds: float = 0.0) -> int:
        """Admit queued requests into free slots, then advance up to ``max_batch`` in-flight
        requests (round-robin) by one batched speculative step; returns how many it advanced.

        One code path for 1..N rows (``speculate_batch``). Every trace goes to the trace
        listeners and every step's tokens to the request's sink before this returns. With
        nothing in flight it waits up to ``wait_seconds`` for a request to arrive.
        Synchronous: drive an engine from one thread only -- yours, or the worker's.
        """
        if self.running and threading.current_thread() is not self._thread:
            raise RuntimeError("the engine's worker thread is stepping it (start() was called); do not call step() too")
        self._admit(wait_seconds)
        if not self._active:
            return 0
        # Listed as stepping before they leave _active, so close() never sees them in neither.
        self._stepping = list(itertools.islice(self._active, self.config.max_batch))
        for _ in self._stepping:
            self._active.popleft()
        try:
            self._active.extend(self._advance(self._stepping))
        except Exception as error:  # an engine bug: fail this step's requests, keep serving
            logger.exception("a decode round failed")
            for sequence in self._stepping:
                self._fail(sequence, error)
        stepped = len(self._stepping)
        self._stepping = []
        return stepped

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step(wait_seconds=0.05)
        self._cancel_all()

    def _admit(self, wait_seconds: float) -> None:
        """Move queued requests into free decode slots (waiting up to ``wait_seconds`` for
        one when nothing is in flight)."""
        while len(self._active) < self.config.max_active:
            try:
                if self._active or wait_seconds <= 0:
                    sequence = self._waiting.get_nowait()
                else:
                    sequence = self._waiting.get(timeout=wait_seconds)
            except queue.Empty:
                return
            self._stepping = [sequence]  # counted as active while its prompt is prefilled
            if self._prefill(sequence):
                self._active.append(sequence)
            self._stepping = []

    def _prefill(self, sequence: _Sequence) -> bool:
        request = sequence.request
        sequence.admitted = time.perf_counter()
        if sequence.cancel_requested.is_set():
            self._cancelled(sequence)
            return False
        sequence.config = replace(self.decode, sampling=request.sampling)
        try:
            sequence.state = start_decode(
                self.target, request.prompt_ids, request.max_new_tokens, self.eos_token_ids,
                max_k=sequence.config.k, request_id=request.request_id, domain=request.domain,
            )
        except ValueError as error:  # the caller validates first; this is the backstop
            self._finish(sequence, "error", str(error))
            return False
        return True

    def _current_policy(self) -> DraftPolicy | None:
        if self.policy is None or isinstance(self.policy, DraftPolicy):
            return self.policy
        return self.policy()

    def _advance(self, batch: list[_Sequence]) -> list[_Sequence]:
        """One speculative step of every sequence in ``batch`` (one row or many: the same
        batched step); returns those still in flight."""
        live = []
        for sequence in batch:
            if sequence.cancel_requested.is_set():
                self._cancelled(sequence)
            else:
                live.append(sequence)
        if not live:
            return []
        states = [sequence.state for sequence in live]
        steps_before = [state.steps for state in states]
        draws_before = [sequence.generator.get_state() for sequence in live]
        shared_forward = batchable([state.target_cache for state in states])
        try:
            policy = self._current_policy()  # one version for the whole step
            results = self._speculate(
                policy, self.target, states, [s.config for s in live], [s.generator for s in live]
            )
        except BatchStepError as partial:  # the forward ran; some rows failed while settling
            results = partial.results
        except Exception as error:
            if len(live) == 1:  # nothing to isolate: this request's own step failed
                logger.exception("decoding request %s failed", live[0].request.request_id)
                self._fail(live[0], error)
                return []
            logger.exception("a batched step of %d requests failed; stepping them one by one", len(live))
            return self._isolate(live, steps_before, draws_before, error)
        self.verify_forwards += 1 if shared_forward else len(live)
        still_live = []
        for sequence, result in zip(live, results):
            if isinstance(result, Exception):
                logger.error("decoding request %s failed", sequence.request.request_id, exc_info=result)
                self._fail(sequence, result)
            elif self._deliver(sequence, result):
                still_live.append(sequence)
        return still_live

    def _isolate(
        self, live: list[_Sequence], steps_before: list[int], draws_before: list[torch.Tensor], error: Exception
    ) -> list[_Sequence]:
        """After a batched step failed before settling, retry each request alone so a bad
        one fails only itself.

        Each request is put back exactly where it was -- target cache cut to the kept
        tokens (``DecodeState`` keeps the last kept token pending, outside the cache), a
        fresh draft session, its generator rewound -- so a seeded request still draws what
        it would have drawn; one the failed step did advance lost that step's output and
        fails too.
        """
        still_live = []
        for sequence, before, draws in zip(live, steps_before, draws_before):
            state = sequence.state
            if state.steps != before:
                self._fail(sequence, error)
                continue
            state.target_cache.cut_every_layer(state.length - 1)
            state.session = None
            sequence.generator.set_state(draws)
            still_live.extend(self._advance([sequence]))
        return still_live

    def _deliver(self, sequence: _Sequence, trace: Trace) -> bool:
        """Hand a step's trace to the listeners and its tokens to the request's sink;
        returns whether the request is still in flight."""
        sequence.first_token = sequence.first_token or time.perf_counter()
        sequence.proposed += trace.num_proposed
        sequence.accepted += trace.num_accepted
        if trace.num_proposed and trace.draft_version not in sequence.versions:
            sequence.versions.append(trace.draft_version)
        self._publish_trace(trace)
        finish_reason = sequence.state.finish_reason
        stats = sequence.stats(finish_reason) if finish_reason else None
        self._send(sequence, EngineOutput(tuple(trace.emitted.tolist()), trace.draft_version, stats))
        if stats is not None:
            self._notify_finished(stats)
        return stats is None

    def _publish_trace(self, trace: Trace) -> None:
        for listener in self._trace_listeners:
            try:
                listener(trace)
            except Exception:  # a broken listener (monitor, metrics) must not stop decoding
                logger.exception("trace listener %r failed", listener)
        if self.config.keep_request_traces:
            with self._kept_lock:
                self._kept.setdefault(trace.request_id, []).append(trace)
                self._kept.move_to_end(trace.request_id)
                while len(self._kept) > self.config.keep_request_traces:
                    self._kept.popitem(last=False)

    def _cancelled(self, sequence: _Sequence) -> None:
        reason = sequence.cancelled_as
        self._finish(sequence, reason, None if reason == "stop" else "the request was cancelled")

    def _fail(self, sequence: _Sequence, error: Exception) -> None:
        self._finish(sequence, "error", f"decoding failed: {type(error).__name__}: {error}")

    def _finish(self, sequence: _Sequence, finish_reason: str, error: str | None) -> None:
        if sequence.ended:
            return
        stats = sequence.stats(finish_reason)
        self._send(sequence, EngineOutput((), None, stats, error))
        self._notify_finished(stats)

    def _send(self, sequence: _Sequence, output: EngineOutput) -> None:
        sequence.ended = output.finished
        try:
            sequence.sink(output)
        except Exception:  # e.g. the caller's event loop is gone: nobody is listening
            logger.warning("could not deliver output of request %s; cancelling it", sequence.request.request_id)
            sequence.cancel_requested.set()

    def _notify_finished(self, stats: RequestStats) -> None:
        for listener in self._finish_listeners:
            try:
                listener(stats)
            except Exception:
                logger.exception("finish listener %r failed", listener)

    def _cancel_all(self) -> None:
        while self._active:
            self._finish(self._active.popleft(), "cancelled", SHUTTING_DOWN)
        while True:
            try:
                self._finish(self._waiting.get_nowait(), "cancelled", SHUTTING_DOWN)
            except queue.Empty:
                return
