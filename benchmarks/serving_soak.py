"""A bounded soak of the server: mixed hostile traffic with learning on, and a kill -9 + restart.

It starts ``python -m aurora_rl.serve`` (tiny world, learning on, a fresh snapshot directory)
on 127.0.0.1 only, and runs ``--clients`` closed-loop clients for ``--minutes`` (or until
``--max-requests``; it always stops by itself). Each client draws, from a seeded generator,
a streamed request (40 %), a non-streamed one (35 %), a client that disconnects early (10 %)
or a bad request that must get its exact 4xx JSON error (15 %); every 20 s a burst of
concurrent requests overflows the queue (429 with Retry-After is the right answer). Halfway
it SIGKILLs the server's process group and restarts it on the same directory and port; the
clients wait for /health meanwhile. Greedy answers must equal the first answer seen for the
same prompt (lossless across versions and the restart).

Reported: requests by outcome; errors (a 5xx, a wrong status or body, a greedy answer that
changed) and lost requests (no complete answer while the server was up) -- both should be 0;
requests cut by the kill itself; latency p50/p99 of good answers; server RSS over time; the
draft version at the kill, after the restart and at the end; the accepted length of fixed
probe prompts on the pretrained draft (a learn=false server started first), just before
the kill and just after the restart.

    python benchmarks/serving_soak.py --minutes 4                  # ~4 min, 6 clients
    python benchmarks/serving_soak.py --minutes 1 --max-requests 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from aurora_rl.world.traffic import load_prompts

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
PROBES = ["def fibonacci(n):\n", "SELECT name FROM", "The river ran quietly through the", "User: hello\nAssistant:",
          "def add(a, b):", "SELECT id, total FROM orders WHERE"]  # fmt: skip
BAD = [  # (body, status, error code) that must come back exactly
    ({"prompt": "x", "max_tokens": -1}, 400, "invalid_value"),
    ({"prompt": "ab\ud800cd"}, 400, "invalid_value"),
    ({"prompt": "x", "seed": 2**64}, 400, "invalid_value"),
    ({"prompt": "x" * 300_000}, 400, "context_length_exceeded"),
    ({"prompt": "x", "n": 3}, 400, "unsupported_parameter"),
    ({"model": "gpt-4", "prompt": "x"}, 404, "model_not_found"),
    (None, 400, "missing_body"),
]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


class Soak:
    def __init__(self, args, out: Path) -> None:
        self.args, self.out = args, out
        self.port = args.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.rng = random.Random(args.seed)
        self.prompts = list(load_prompts("tiny")["prompt"])[: args.prompts]
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.greedy: dict[tuple[str, int], str] = {}
        self.rss: list[tuple[float, float]] = []
        self.up = asyncio.Event()
        self.killed_at: float | None = None
        self.requests = 0
        self.in_flight = 0
        self.server: subprocess.Popen | None = None
        self.started = time.monotonic()

    # --- the server -------------------------------------------------------------------

    def start_server(self, tag: str, *args: str) -> None:
        log = open(self.out / f"server-{tag}.log", "w")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "aurora_rl.serve", "world.name=tiny", "draft=pretrained", f"server.port={self.port}",
             "progress=false", "server.log_level=warning", "torch_threads=1",
             f"snapshots.directory={self.out / 'snapshots'}", "snapshots.keep=1000", *self.args.serve_arg, *args],
            stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True,
        )  # fmt: skip

    async def wait_up(self, client: httpx.AsyncClient, release: bool = True) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"the server exited ({self.server.returncode}); see {self.out}/server-*.log")
            try:
                if (await client.get(f"{self.url}/health", timeout=5)).status_code == 200:
                    if release:  # let the clients go
                        self.up.set()
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("the server did not answer /health within 300 s")

    def kill(self) -> None:
        self.up.clear()
        self.killed_at = time.monotonic()
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait()

    # --- traffic ----------------------------------------------------------------------

    def count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def cut_by_kill(self, began: float) -> bool:
        """A request under way when the server was killed (or sent while it was down)."""
        return not self.up.is_set() or (self.killed_at is not None and began <= self.killed_at + 0.5)

    async def one(self, client: httpx.AsyncClient, kind: str) -> None:
        prompt = self.rng.choice(self.prompts)
        max_tokens = self.rng.choice([16, 32, 64])
        body = {"model": "aurora-tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        began = time.monotonic()
        try:
            if kind == "bad":
                payload, status, code = self.rng.choice(BAD)
                content = b"" if payload is None else json.dumps({**body, **payload}).encode()
                response = await client.post(f"{self.url}/v1/completions", content=content,
                                             headers={"Content-Type": "application/json"})  # fmt: skip
                got = (response.status_code, response.json().get("error", {}).get("code"))
                if got != (status, code):
                    self.errors.append(f"bad request {str(payload)[:60]}: got {got}, want {(status, code)}")
                self.count("refused as expected" if got == (status, code) else "error")
                return
            if kind == "disconnect":
                async with client.stream("POST", f"{self.url}/v1/completions", json={**body, "stream": True,
                                         "max_tokens": 480}) as stream:  # fmt: skip
                    async for _ in stream.aiter_lines():
                        break  # leave after the first chunk
                self.count("disconnected early")
                return
            text = await (self.stream(client, body) if kind == "stream" else self.plain(client, body))
        except httpx.TransportError as error:
            self.count("cut by the kill" if self.cut_by_kill(began) else "lost")
            if not self.cut_by_kill(began):
                self.errors.append(f"lost: {type(error).__name__}: {error}")
            return
        if text is None:
            return
        self.latencies.append(time.monotonic() - began)
        first = self.greedy.setdefault((prompt, max_tokens), text)
        if first != text:
            self.errors.append(f"greedy answer changed for {prompt[:30]!r}")
        self.count("answered")

    async def plain(self, client: httpx.AsyncClient, body: dict) -> str | None:
        response = await client.post(f"{self.url}/v1/completions", json=body)
        if not self.check(response.status_code, response.json(), response.headers):
            return None
        return response.json()["choices"][0]["text"]

    async def stream(self, client: httpx.AsyncClient, body: dict) -> str | None:
        text = ""
        async with client.stream("POST", f"{self.url}/v1/completions", json={**body, "stream": True}) as response:
            if response.status_code != 200:
                self.check(response.status_code, json.loads(await response.aread()), response.headers)
                return None
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    event = json.loads(line.removeprefix("data: "))
                    if "error" in event:
                        self.errors.append(f"stream error event: {event['error']['message']}")
                        self.count("error")
                        return None
                    text += event["choices"][0]["text"] if event["choices"] else ""
        return text

    def check(self, status: int, body: dict, headers) -> bool:
        if status == 200:
            return True
        if status == 429 and body["error"]["code"] == "queue_full" and headers.get("retry-after"):
            self.count("429 queue full")
        else:
            self.errors.append(f"status {status}: {body}")
            self.count("error")
        return False

    async def client_loop(self, client: httpx.AsyncClient, deadline: float) -> None:
        while time.monotonic() < deadline and self.requests < self.args.max_requests:
            await self.up.wait()
            self.requests += 1
            roll = self.rng.random()
            kind = "stream" if roll < 0.40 else "plain" if roll < 0.75 else "disconnect" if roll < 0.85 else "bad"
            self.in_flight += 1
            try:
                await self.one(client, kind)
            finally:
                self.in_flight -= 1

    async def bursts(self, client: httpx.AsyncClient, deadline: float) -> None:
        while time.monotonic() + 20 < deadline:
            await asyncio.sleep(20)
            await self.up.wait()
            self.requests += self.args.burst
            self.in_flight += 1
            try:
                await asyncio.gather(*(self.one(client, "plain") for _ in range(self.args.burst)))
            finally:
                self.in_flight -= 1

    async def sample_memory(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self.rss.append((round(time.monotonic() - self.started, 1), rss_mib(self.server.pid)))
            await asyncio.sleep(1.0)

    async def probe(self, client: httpx.AsyncClient) -> dict:
        """Accepted length of the probe prompts (greedy, 48 tokens) and the versions that served."""
        lengths, versions = [], set()
        for prompt in PROBES:
            body = {"model": "aurora-tiny", "prompt": prompt, "max_tokens": 48, "temperature": 0}
            answer = (await client.post(f"{self.url}/v1/completions", json=body)).json()
            lengths.append(answer["spec_decode"]["accepted_length"])
            versions.update(answer["spec_decode"]["draft_versions"])
        return {"accepted_length": round(sum(lengths) / len(lengths), 3), "versions": sorted(versions)}

    async def run(self) -> dict:
        limits = httpx.Limits(max_connections=self.args.clients + self.args.burst + 4)
        async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10), limits=limits) as client:
            self.start_server("pretrained", "learn=false", "snapshots.directory=null")  # the probe's baseline
            await self.wait_up(client)
            report = {"probe_pretrained": await self.probe(client)}
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(120)
            self.up.clear()
            self.start_server("first")
            await self.wait_up(client)
            end = time.monotonic() + self.args.minutes * 60
            memory = asyncio.create_task(self.sample_memory(end + 600))
            half = time.monotonic() + self.args.minutes * 30
            workers = [asyncio.create_task(self.client_loop(client, end)) for _ in range(self.args.clients)]
            workers.append(asyncio.create_task(self.bursts(client, end)))
            await asyncio.sleep(max(half - time.monotonic(), 0))
            self.up.clear()  # the clients pause (bursts too) for the probe; the learner may still publish
            while self.in_flight:
                await asyncio.sleep(0.05)
            report["probe_before_kill"] = await self.probe(client)
            report["version_at_kill"] = json.loads((self.out / "snapshots" / "LATEST.json").read_text())["version"]
            self.kill()
            down = time.monotonic()
            self.start_server("restarted")
            await self.wait_up(client, release=False)
            report["restart_seconds"] = round(time.monotonic() - down, 1)
            report["probe_after_restart"] = await self.probe(client)  # before the clients are back
            self.up.set()
            await asyncio.gather(*workers)
            memory.cancel()
            metrics = (await client.get(f"{self.url}/metrics")).text
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(120)
        lat = sorted(self.latencies)
        rss = [(t, m) for t, m in self.rss if m == m]  # NaN: no server process (the restart)
        pick = lambda q: round(lat[min(int(q * len(lat)), len(lat) - 1)], 3) if lat else None  # noqa: E731
        final = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                 if line.startswith(("aurora_draft_version ", "aurora_learner_updates_total ", "aurora_internal_errors_total "))}  # fmt: skip
        report.update({
            "minutes": self.args.minutes, "clients": self.args.clients, "requests": self.requests,
            "outcomes": dict(sorted(self.counts.items())), "errors": len(self.errors), "first_errors": self.errors[:10],
            "lost": self.counts.get("lost", 0), "latency_p50_s": pick(0.50), "latency_p99_s": pick(0.99),
            "final_metrics": final, "server_exit_code": self.server.returncode,
            "rss_mib": {"start": rss[0][1], "peak": max(m for _, m in rss), "end": rss[-1][1], "per_30s": rss[::30]},
        })  # fmt: skip
        return report


def offline_accepted_length(snapshots: Path, version: int) -> float:
    """Mean accepted length of the probes (greedy, 48 tokens) decoding with ``snapshots``/v<version>."""
    from aurora_rl.core.generate import SpeculativeDecoder
    from aurora_rl.core.spec import DecodeConfig
    from aurora_rl.core.target import Target
    from aurora_rl.online.snapshots import load_snapshot
    from aurora_rl.world import get_world

    world = get_world("tiny", progress=False)
    tokenizer, target = world.tokenizer(), Target(world.target())
    policy = load_snapshot(snapshots / f"v{version:06d}", version, "small_lm", target)
    decoder = SpeculativeDecoder(target, policy, DecodeConfig(k=4), [tokenizer.eos_token_id])
    runs = [decoder.generate(tokenizer(prompt)["input_ids"], 48) for prompt in PROBES]
    return round(sum(run.accepted_length for run in runs) / len(runs), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--burst", type=int, default=80, help="concurrent requests of each burst (queue: 64)")
    parser.add_argument("--prompts", type=int, default=40, help="distinct held-out prompts drawn from")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-arg", action="append", default=[], help="extra key=value for the server (repeatable)")
    parser.add_argument("--out", default="runs/serving_soak")
    args = parser.parse_args()
    out = Path(args.out)
    if (out / "snapshots").exists():
        raise SystemExit(f"{out}/snapshots exists: give a fresh --out (the soak starts from the pretrained draft)")
    out.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, out)
    try:
        report = asyncio.run(soak.run())
    finally:
        if soak.server is not None and soak.server.poll() is None:
            os.killpg(soak.server.pid, signal.SIGKILL)
    report["offline_accepted_length"] = {  # the same probes decoded in this process from the files
        "v0 (pretrained)": offline_accepted_length(out / "snapshots", 0),
        f"v{report['version_at_kill']} (live at the kill)": offline_accepted_length(out / "snapshots", report["version_at_kill"]),
    }  # fmt: skip
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rss_mib"}, indent=2))
    rss = report["rss_mib"]
    print(f"server RSS MiB: start {rss['start']:.0f} peak {rss['peak']:.0f} end {rss['end']:.0f}; every 30 s: "
          + " ".join(f"{m:.0f}" for _, m in rss["per_30s"]))  # fmt: skip
    print(f"wrote {out / 'soak.json'}")
    return 1 if report["errors"] or report["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
