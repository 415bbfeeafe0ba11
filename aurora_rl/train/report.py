"""What a train run records: TensorBoard events per arm, and the numbers of summary.json.

Algorithms return metrics; this is the only place that writes them (SB3's logger idea).
Tags: ``spec/*`` (acceptance), ``charts/*`` (speed, versions, buffer), ``losses/*`` and
``update/*`` / ``learner/*`` (learning). Every scalar's step is the arm's global step: verify
steps (traces) decoded so far.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from aurora_rl.online.buffer import BufferStats
from aurora_rl.core.trace import Trace
from aurora_rl.runtime.engine import RequestStats
from aurora_rl.world.traffic import Phase, Request


class ArmRecorder:
    """Collects one arm's per-request and per-step figures and writes TensorBoard events."""

    def __init__(self, run_dir: Path, arm: str, phases: list[Phase], k: int) -> None:
        self.arm = arm
        self.phases = phases
        self.writer = SummaryWriter(str(run_dir / "tensorboard" / arm))
        self.requests: list[dict] = []
        self.position_judged = [0] * k
        self.position_accepted = [0] * k
        self.seconds_by_k: dict[int, list[float]] = {}  # proposals -> [steps, wall-clock seconds]

    def step(self, trace: Trace, seconds: float) -> None:
        """One verify step's trace and its share of the engine step's wall clock."""
        tally = self.seconds_by_k.setdefault(trace.num_proposed, [0, 0.0])
        tally[0] += 1
        tally[1] += seconds
        for i in range(trace.num_proposed):
            judged = i <= trace.num_accepted  # accepted ones and the first rejected one
            self.position_judged[i] += judged
            self.position_accepted[i] += bool(trace.accept_mask[i])

    def request(self, request: Request, stats: RequestStats, decode_seconds: float, version: int,
                buffer: BufferStats | None, global_step: int) -> None:  # fmt: skip
        row = {
            "index": request.index,
            "domain": request.domain,
            "phase": request.phase,
            "tokens": stats.completion_tokens,
            "steps": stats.verify_steps,
            "proposed": stats.proposed_tokens,
            "accepted": stats.accepted_tokens,
            "accepted_length": stats.accepted_length,
            "decode_seconds": decode_seconds,
            "version": version,
        }
        self.requests.append(row)
        i = global_step
        w = self.writer
        w.add_scalar("spec/accepted_length", stats.accepted_length, i)
        w.add_scalar(f"spec/accepted_length_by_domain/{request.domain}", stats.accepted_length, i)
        w.add_scalar("charts/tokens_per_s", stats.completion_tokens / max(decode_seconds, 1e-9), i)
        w.add_scalar("charts/draft_version", version, i)
        if buffer is not None:
            w.add_scalar("charts/buffer_size", buffer.size, i)
            w.add_scalar("charts/buffer_mean_staleness", buffer.mean_staleness, i)
            w.add_scalar("charts/buffer_dropped", buffer.dropped_full + buffer.dropped_stale, i)
        if len(self.requests) % 10 == 0:
            for pos, (judged, accepted) in enumerate(zip(self.position_judged, self.position_accepted)):
                if judged:
                    w.add_scalar(f"spec/accept_rate_at_position/{pos}", accepted / judged, i)

    def learner(self, updates: list[tuple[int, dict[str, float]]]) -> None:
        """Each update's metrics at the global step it ran at (``Learner.take_metrics``)."""
        for global_step, metrics in updates:
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, global_step)

    def summary(self, extra: dict) -> dict:
        """Accepted length (tokens per verify step) overall and per traffic phase, tokens/s."""
        def aggregate(rows):
            tokens, steps = sum(r["tokens"] for r in rows), sum(r["steps"] for r in rows)
            seconds = sum(r["decode_seconds"] for r in rows)
            return {
                "accepted_length": tokens / max(steps, 1),
                "mean_k": sum(r["proposed"] for r in rows) / max(steps, 1),  # proposals per verify step
                "tokens_per_s": tokens / max(seconds, 1e-9),
                "requests": len(rows),
            }

        self.requests.sort(key=lambda row: row["index"])  # with concurrency > 1 they finish out of order
        phases = []
        for number, phase in enumerate(self.phases):
            rows = [r for r in self.requests if phase.start <= r["index"] < phase.end]
            phases.append({"phase": number, **asdict(phase), **aggregate(rows)})
        judged = self.position_judged
        return {
            **aggregate(self.requests),
            "phases": phases,
            "accept_rate_at_position": [a / j if j else None for a, j in zip(self.position_accepted, judged)],
            # what a step that proposed k tokens cost, in wall-clock ms: why tokens/s is what it is
            "step_ms_by_k": {str(k): 1e3 * seconds / steps for k, (steps, seconds) in sorted(self.seconds_by_k.items())},
            **extra,
            "per_request_accepted_length": [r["accepted_length"] for r in self.requests],
            "per_request_tokens": [r["tokens"] for r in self.requests],
        }

    def close(self, hparams: dict, result: dict) -> None:
        self.writer.add_hparams(hparams, {"hparam/accepted_length": result["accepted_length"],
                                          "hparam/tokens_per_s": result["tokens_per_s"]}, run_name=".")
        self.writer.close()
