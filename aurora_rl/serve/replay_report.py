"""What a replay run measured: per-request records and the summary printed and saved."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Record:
    """One replayed request. Times are seconds since the run started.

    ``chunk_times`` / ``chunk_versions``: arrival time and ``system_fingerprint`` (the draft
    version, on an aurora_rl server) of every streamed chunk that carried text.
    ``spec``: the response's ``spec_decode`` extension, when the server sends one.
    """

    index: int
    domain: str
    start: float
    end: float = 0.0
    status: int | None = None
    error: str | None = None
    completion_tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)
    chunk_versions: list[str | None] = field(default_factory=list)
    spec: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def time_to_first_chunk(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    def gaps(self) -> tuple[list[float], list[float]]:
        """Gaps between consecutive chunks: all of them, and those where the draft version
        changed between the two chunks (a swap in the middle of this stream)."""
        every, at_swap = [], []
        for i in range(1, len(self.chunk_times)):
            gap = self.chunk_times[i] - self.chunk_times[i - 1]
            every.append(gap)
            before, after = self.chunk_versions[i - 1], self.chunk_versions[i]
            if before is not None and after is not None and before != after:
                at_swap.append(gap)
        return every, at_swap

    def to_json(self) -> dict:
        data = asdict(self)
        data["gaps"], data["swap_gaps"] = self.gaps()
        del data["chunk_times"]
        return data


def _percentiles(values: list[float], points: dict[str, float]) -> dict[str, float] | None:
    if not values:
        return None
    return {name: float(np.percentile(values, q)) for name, q in points.items()}


def summarize(records: list[Record], wall_seconds: float, expected: int, windows: int) -> dict:
    """The run in numbers (JSON-ready)."""
    ok = [r for r in records if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    every_gap, swap_gaps = [], []
    for record in ok:
        gaps, at_swap = record.gaps()
        every_gap += gaps
        swap_gaps += at_swap
    return {
        "requests": expected,
        "completed": len(ok),
        "errors": len(records) - len(ok),
        "lost": expected - len(records),  # sent but never answered, nor failed: must be 0
        "error_kinds": dict(Counter((r.error or "").split(":")[0] for r in records if not r.ok)),
        "wall_seconds": wall_seconds,
        "requests_per_second": len(ok) / wall_seconds,
        "tokens_per_second": tokens / wall_seconds,
        "completion_tokens": tokens,
        "latency_seconds": _percentiles([r.latency for r in ok], {"p50": 50, "p90": 90, "p99": 99, "max": 100}),
        "ttft_seconds": _percentiles([t for r in ok if (t := r.time_to_first_chunk) is not None], {"p50": 50, "p99": 99}),
        "chunk_gap_seconds": _percentiles(every_gap, {"median": 50, "p99": 99, "max": 100}),
        "swap_gap_seconds": _percentiles(swap_gaps, {"median": 50, "max": 100}),
        "swaps_seen_mid_stream": len(swap_gaps),
        "windows": _windows(ok, windows),
    }


def _windows(ok: list[Record], count: int) -> list[dict]:
    """Accepted length and draft versions over consecutive windows of completed requests
    (in completion order); empty if the server sends no ``spec_decode`` stats."""
    done = sorted((r for r in ok if r.spec), key=lambda r: r.end)
    out = []
    for part in np.array_split(np.arange(len(done)), min(count, len(done))) if done else []:
        chunk = [done[i] for i in part]
        steps = sum(r.spec["verify_steps"] for r in chunk)
        versions = [v for r in chunk for v in r.spec["draft_versions"]]
        out.append({
            "requests": len(chunk),
            "until_seconds": chunk[-1].end,
            "accepted_length": sum(r.completion_tokens for r in chunk) / max(steps, 1),
            "draft_versions": [min(versions), max(versions)] if versions else [],
        })  # fmt: skip
    return out


def format_summary(s: dict, cfg) -> str:
    """A human-readable report of :func:`summarize`'s output."""
    def ms(block: dict | None, *keys: str) -> str:
        return "n/a" if block is None else "  ".join(f"{k} {block[k] * 1000:.0f} ms" for k in keys)

    lines = [
        f"{s['requests']} requests, {cfg.clients} clients, {cfg.endpoint}, max_tokens {cfg.max_tokens}, "
        f"temperature {cfg.temperature}, stream {cfg.stream}",
        f"completed {s['completed']}  errors {s['errors']} {s['error_kinds'] or ''}  lost {s['lost']}",
        f"wall {s['wall_seconds']:.1f} s  {s['requests_per_second']:.2f} req/s  {s['tokens_per_second']:.1f} tokens/s",
        f"latency      {ms(s['latency_seconds'], 'p50', 'p90', 'p99', 'max')}",
        f"first chunk  {ms(s['ttft_seconds'], 'p50', 'p99')}",
        f"chunk gaps   {ms(s['chunk_gap_seconds'], 'median', 'p99', 'max')}",
        f"swap gaps    {ms(s['swap_gap_seconds'], 'median', 'max')}  ({s['swaps_seen_mid_stream']} swaps inside a stream)",
    ]
    for i, w in enumerate(s["windows"]):
        versions = "-".join(f"v{v}" for v in dict.fromkeys(w["draft_versions"]))
        lines.append(f"window {i + 1}: {w['requests']:4d} requests until {w['until_seconds']:6.1f} s  "
                     f"accepted length {w['accepted_length']:.2f}  draft {versions}")  # fmt: skip
    return "\n".join(lines)
