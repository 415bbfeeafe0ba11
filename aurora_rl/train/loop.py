"""One arm of a train run: the server's engine, stepped in a flat loop.

    submit requests while fewer than ``traffic.concurrency`` are in flight
    engine.step()                       # one batched speculative step (1..N rows)
    learner round when ``train_every`` traces have arrived (sync mode)
    record the learner's updates and the requests that finished, at the global step

The global step counts verify steps (traces) over the whole arm, as CleanRL counts env steps:
every TensorBoard scalar -- per request, per learner update (sync or async) -- is logged
against it, so all curves of a run share one x-axis.

The arms decode through :class:`~aurora_rl.runtime.engine.Engine` exactly as the server does,
so an arm's tokens/s is the server's. Wall-clock is measured per engine step and shared
equally among the rows it advanced, so per-request seconds add up to the arm's decode time;
a sync learner round runs between steps and is timed apart (as if it had its own device).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from accelerate import Accelerator
from tqdm import tqdm

from aurora_rl.core.trace import Trace
from aurora_rl.runtime.config import EngineSection
from aurora_rl.runtime.engine import Engine, EngineOutput, GenerationRequest
from aurora_rl.online.learning import OnlineLearning
from aurora_rl.online.publish import LivePolicy
from aurora_rl.train.arms import Setting, arm_controller, initial_drafter
from aurora_rl.train.config import ARMS
from aurora_rl.train.report import ArmRecorder
from aurora_rl.world.traffic import TrafficStream


def run_arm(s: Setting, arm: str, stream: TrafficStream, run_dir: Path, accelerator: Accelerator) -> dict:
    """Serve ``stream`` with one arm's draft; learn online if the arm does."""
    cfg = s.cfg
    mode, _ = ARMS[arm]
    began = time.perf_counter()
    live = LivePolicy(initial_drafter(s, arm)) if mode != "none" else None
    controller = arm_controller(s, live.current) if live else None
    setup_seconds = time.perf_counter() - began
    # The server builds the same stack (runtime/server.py); here it has no snapshot directory.
    learning = OnlineLearning(live, cfg.algo, cfg.learner, s.pad_id, cfg.seed, accelerator=accelerator) if mode == "online" else None
    learner = learning.learner if learning else None
    buffer = learning.buffer if learning else None
    decode = cfg.decode.to_decode_config(None, controller)  # records no target distributions ...
    if learning is not None:
        decode = learning.decode_config(decode)  # ... unless a learner reads them, as in the server
    in_flight = cfg.traffic.concurrency
    engine = Engine(s.target, live, decode, s.eos, EngineSection(max_active=in_flight, max_batch=in_flight, max_queue=in_flight))
    recorder = ArmRecorder(run_dir, arm, stream.phases, cfg.decode.k)
    version = (lambda: live.version) if live else (lambda: 0)

    step_traces: list[Trace] = []
    finished: list[tuple[str, EngineOutput]] = []
    engine.add_trace_listener(step_traces.append)
    requests = {request.request_id: request for request in stream.requests}
    seconds = dict.fromkeys(requests, 0.0)
    waiting = deque(stream.requests)
    global_step, learner_seconds = 0, 0.0

    def sink_of(request_id: str):
        def sink(output: EngineOutput) -> None:  # called inside engine.step(): record after it
            if output.finished:
                finished.append((request_id, output))
        return sink

    if learning is not None:
        engine.add_trace_listener(learning.observe)  # as the server wires it
        learning.start()  # async: the learner thread; sync: rounds below, between engine steps
    bar = tqdm(total=len(waiting), desc=arm, disable=not cfg.progress, unit="req")
    while waiting or engine.busy:
        while waiting and engine.num_active + engine.queue_depth < in_flight:
            request = waiting.popleft()
            ids = tuple(s.tokenizer(request.prompt)["input_ids"])
            engine.submit(
                GenerationRequest(request.request_id, ids, cfg.traffic.max_new_tokens, decode.sampling,
                                  seed=cfg.seed * 1_000_003 + request.index, domain=request.domain),
                sink_of(request.request_id),
            )
        t0 = time.perf_counter()
        engine.step()
        step_seconds = time.perf_counter() - t0
        for trace in step_traces:
            seconds[trace.request_id] += step_seconds / len(step_traces)
            recorder.step(trace, step_seconds / len(step_traces))
        rounds_due = (global_step + len(step_traces)) // cfg.learner.train_every - global_step // cfg.learner.train_every
        global_step += len(step_traces)
        step_traces.clear()
        if learner is not None:
            if cfg.learner.mode == "sync":
                for _ in range(rounds_due):
                    t0 = time.perf_counter()
                    learning.train_round()
                    learner_seconds += time.perf_counter() - t0
            recorder.learner(learner.take_metrics())  # async: what the thread did meanwhile
        for request_id, output in finished:
            if output.stats.finish_reason == "error":
                raise RuntimeError(f"arm {arm}: request {request_id} failed: {output.error}")
            recorder.request(requests[request_id], output.stats, seconds[request_id], version(),
                             buffer.stats() if buffer else None, global_step)
            bar.update()
            bar.set_postfix(tau=f"{output.stats.accepted_length:.2f}", version=version(), refresh=False)
        finished.clear()
    bar.close()
    if learning is not None:
        learning.stop()
        recorder.learner(learner.take_metrics())

    extra = {
        "mode": mode,
        "concurrency": in_flight,
        "setup_seconds": setup_seconds,
        "versions_published": learner.published if learner else 0,
        "final_version": version(),
        "updates": learner.updates if learner else 0,
        "rejected_updates": learner.rejected_updates if learner else 0,
        "gate_rejections": learner.gate_rejections if learner else 0,
        "rollbacks": live.rollbacks if live else 0,
        "learner_seconds": learner_seconds,
        "learner_state": learner.state if learner else "none",
        "learner_error": learner.error if learner else None,
        "suffix_share": getattr(live.current, "suffix_share", None) if live else None,
        # measured / modelled cost of a drafting step, relative to a plain one (goodput controller)
        "speculation_overhead": getattr(getattr(controller, "overhead", None), "factor", None),
    }
    result = recorder.summary(extra)
    hparams = {"arm": arm, "algo": cfg.algo.name, "k": cfg.decode.k, "schedule": cfg.traffic.schedule,
               "drafter": cfg.drafter.kind, "seed": cfg.seed, "publish_every": cfg.learner.publish_every,
               "concurrency": in_flight}
    recorder.close(hparams, result)
    return result
