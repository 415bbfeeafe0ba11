"""python -m aurora_rl.serve.replay [--config FILE.yaml] [key=value ...]

Replays a traffic stream against any OpenAI-compatible endpoint with N concurrent clients
(closed loop: each client sends its next request when the previous one finished) and
reports latency percentiles, time to first token, tokens/s and errors. The stream is a
world's held-out prompts under a schedule (mixed | ordered | drift) or a .jsonl / .parquet
file with a 'prompt' column (optional 'domain').

Streaming requests also give the gaps between streamed chunks; against an aurora_rl server
each chunk's ``system_fingerprint`` names the draft version that produced it, so the gaps
where the version changed (a hot swap mid-stream) are reported beside the median gap, and
the ``spec_decode`` extension of the responses gives the accepted length over the run.

    python -m aurora_rl.serve.replay url=http://127.0.0.1:8001/v1 source=tiny num_requests=200 clients=8
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from aurora_rl.serve.config import ConfigError, describe, parse_overrides
from aurora_rl.serve.replay_report import Record, format_summary, summarize
from aurora_rl.world.traffic import SCHEDULES, Request, load_prompts, make_traffic
from aurora_rl.settings import documented



@dataclass
class ReplayConfig:
    url: str = documented("base URL of the OpenAI-compatible API (ends in /v1)", "http://127.0.0.1:8000/v1")
    api_key: str | None = documented("bearer key (null = $AURORA_RL_API_KEY, else $OPENAI_API_KEY, else none)", None)
    model: str | None = documented("model id to request (null = the first one GET /models lists)", None)
    endpoint: str = documented("completions (the prompt as is) or chat (the prompt as one user message)", "completions")
    source: str = documented("prompts: a world name (its held-out split) or a .jsonl / .parquet file with a 'prompt' column", "default")
    schedule: str = documented("how the domain mixture moves over the stream: mixed | ordered | drift", "mixed")
    domains: list[str] | None = documented("domains to draw from, in phase order (null = all of the source's)", None)
    num_requests: int = documented("requests sent in all", 100)
    clients: int = documented("concurrent clients", 8)
    max_tokens: int = documented("max_tokens of every request", 64)
    temperature: float = documented("temperature of every request (0 = greedy)", 0.0)
    stream: bool = documented("stream responses (needed for time to first token and inter-chunk gaps)", True)
    timeout_seconds: float = documented("a request taking longer than this counts as an error", 120.0)
    windows: int = documented("the run is reported in this many consecutive windows (accepted length over time)", 5)
    seed: int = documented("seeds the traffic stream and each request's sampling seed", 0)
    output: str | None = documented("write the full report (summary + per-request records) to this JSON file", None)

    def __post_init__(self) -> None:
        if self.endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint={self.endpoint!r} must be 'completions' or 'chat'")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        for name in ("num_requests", "clients", "max_tokens", "windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.timeout_seconds > 0:
            raise ValueError(f"timeout_seconds={self.timeout_seconds} must be > 0")


def _body(cfg: ReplayConfig, model: str, request: Request) -> dict:
    body = {"model": model, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature,
            "seed": cfg.seed * 1_000_003 + request.index, "stream": cfg.stream}  # fmt: skip
    if cfg.stream:
        body["stream_options"] = {"include_usage": True}
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    return body


def _text_of(chunk: dict) -> str:
    choice = (chunk.get("choices") or [{}])[0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def _error_of(response: httpx.Response, content: bytes) -> str:
    try:
        message = json.loads(content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = content[:200].decode(errors="replace")
    return f"{response.status_code}: {message}"


async def _read_stream(response: httpx.Response, record: Record, t0: float) -> None:
    """Consume an SSE stream into ``record``: chunk arrival times and versions, usage, stats."""
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data: ") :])
        if "error" in chunk:
            record.error = f"stream error: {chunk['error'].get('message')}"
            return
        if _text_of(chunk):
            record.chunk_times.append(time.perf_counter() - t0)
            record.chunk_versions.append(chunk.get("system_fingerprint"))
        record.spec = chunk.get("spec_decode") or record.spec
        if chunk.get("usage"):
            record.completion_tokens = chunk["usage"]["completion_tokens"]


async def _exchange(client: httpx.AsyncClient, cfg: ReplayConfig, model: str, request: Request, record: Record,
                    t0: float) -> None:  # fmt: skip
    path = "/chat/completions" if cfg.endpoint == "chat" else "/completions"
    async with client.stream("POST", path, json=_body(cfg, model, request)) as response:
        record.status = response.status_code
        if response.status_code != 200:
            record.error = _error_of(response, await response.aread())
        elif cfg.stream:
            await _read_stream(response, record, t0)
        else:
            data = json.loads(await response.aread())
            record.completion_tokens = data["usage"]["completion_tokens"]
            record.spec = data.get("spec_decode")


async def _send(client: httpx.AsyncClient, cfg: ReplayConfig, model: str, request: Request, t0: float) -> Record:
    """One request; never raises: a failure (HTTP error, bad body, timeout) is a record
    with ``error`` set."""
    record = Record(index=request.index, domain=request.domain, start=time.perf_counter() - t0)
    try:
        await asyncio.wait_for(_exchange(client, cfg, model, request, record, t0), cfg.timeout_seconds)
    except asyncio.TimeoutError:
        record.error = f"timeout: no complete answer within {cfg.timeout_seconds} s"
    except (httpx.HTTPError, ValueError, KeyError) as error:  # ValueError: a body that is not JSON
        record.error = f"{type(error).__name__}: {error}"
    record.end = time.perf_counter() - t0
    return record


async def replay(cfg: ReplayConfig, requests: list[Request]) -> tuple[list[Record], float]:
    """Send ``requests`` with ``cfg.clients`` concurrent clients; returns one record per
    request (in stream order) and the wall-clock seconds of the whole run."""
    key = cfg.api_key or os.environ.get("AURORA_RL_API_KEY") or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=cfg.clients, max_keepalive_connections=cfg.clients)
    async with httpx.AsyncClient(base_url=cfg.url.rstrip("/"), headers=headers, limits=limits,
                                 timeout=cfg.timeout_seconds) as client:  # fmt: skip
        model = cfg.model
        if model is None:
            listed = await client.get("/models")
            listed.raise_for_status()
            model = listed.json()["data"][0]["id"]
        pending = iter(requests)
        records: list[Record] = []
        t0 = time.perf_counter()

        async def one_client() -> None:
            for request in pending:  # a shared iterator: each request is taken exactly once
                records.append(await _send(client, cfg, model, request, t0))

        await asyncio.gather(*(one_client() for _ in range(cfg.clients)))
        wall = time.perf_counter() - t0
    return sorted(records, key=lambda r: r.index), wall


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__ + "\nConfiguration keys (key (default): help):\n" + "\n".join(describe(ReplayConfig())))
        return 0
    try:
        cfg = parse_overrides(ReplayConfig, argv, "python -m aurora_rl.serve.replay")
        prompts = load_prompts(cfg.source, split="heldout")
        stream = make_traffic(prompts, cfg.schedule, cfg.num_requests, seed=cfg.seed, domains=cfg.domains)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    try:
        records, wall = asyncio.run(replay(cfg, stream.requests))
    except httpx.HTTPError as error:
        print(f"error: cannot reach {cfg.url}: {error}", file=sys.stderr)
        return 1
    summary = summarize(records, wall, cfg.num_requests, cfg.windows)
    print(format_summary(summary, cfg))
    if cfg.output:
        report = {"config": asdict(cfg), "summary": summary, "records": [r.to_json() for r in records]}
        Path(cfg.output).write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"wrote {cfg.output}")
    return 0 if summary["errors"] == 0 and summary["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
