"""A bounded load run of the server: learning on vs off, same traffic, loopback only.

For each setting it starts ``python -m aurora_rl.serve`` as a subprocess, replays a fixed
number of requests through the replay client with N concurrent clients, samples the
server's resident memory every half second, scrapes /metrics at the end, and stops the
server with SIGTERM (graceful drain + learner save). Printed and written as JSON: errors and
lost requests, latency p50/p99, tokens/s, the longest gap between streamed chunks where the
draft version changed mid-stream vs the median gap, the accepted length over the run, and
the server's memory at start / peak / end.

    python benchmarks/serving_load.py                                  # tiny world, 200 requests, 8 clients
    python benchmarks/serving_load.py --requests 400 --serve-arg learner.publish_every=8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from aurora_rl.serve.replay import ReplayConfig, replay
from aurora_rl.serve.replay_report import format_summary, summarize
from aurora_rl.world.traffic import load_prompts, make_traffic

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(url: str) -> dict[str, float]:
    """Unlabelled and labelled samples of the aurora_* metrics, keyed by their text."""
    samples = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("aurora_") and "_created" not in line and "_bucket" not in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def run_setting(name: str, serve_args: list[str], cfg: ReplayConfig, requests, out_dir: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (out_dir / f"{name}.server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "aurora_rl.serve", f"server.port={port}", "progress=false",
                               "server.log_level=warning", f"snapshots.directory={out_dir / name / 'snapshots'}",
                               *serve_args], stdout=log, stderr=subprocess.STDOUT, env=ENV)  # fmt: skip
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}; see {log.name}")
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        memory = [(0.0, rss_mib(server.pid))]
        done = threading.Event()

        def sample_memory() -> None:
            t0 = time.perf_counter()
            while not done.wait(0.5):
                memory.append((time.perf_counter() - t0, rss_mib(server.pid)))

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        records, wall = asyncio.run(replay(ReplayConfig(**{**cfg.__dict__, "url": f"{url}/v1"}), requests))
        done.set()
        sampler.join()
        metrics = scrape(url)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
        log.close()
    summary = summarize(records, wall, len(requests), cfg.windows)
    summary["server_rss_mib"] = {"start": memory[0][1], "peak": max(m for _, m in memory), "end": memory[-1][1],
                                 "timeline": memory}  # fmt: skip
    summary["metrics"] = metrics
    summary["server_exit_code"] = server.returncode
    print(f"\n=== {name}: serve {' '.join(serve_args)}")
    print(format_summary(summary, cfg))
    rss = summary["server_rss_mib"]
    print(f"server RSS   start {rss['start']:.0f} MiB  peak {rss['peak']:.0f} MiB  end {rss['end']:.0f} MiB")
    keys = ["aurora_draft_version", "aurora_draft_swaps_total", "aurora_draft_rollbacks_total",
            "aurora_learner_updates_total", "aurora_learner_rejected_updates_total", "aurora_learner_gate_rejections_total"]  # fmt: skip
    print("metrics      " + "  ".join(f"{k.removeprefix('aurora_')} {metrics[k]:.0f}" for k in keys if k in metrics))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="tiny")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--schedule", default="mixed")
    parser.add_argument("--draft", default="scratch", help="pretrained | scratch")
    parser.add_argument("--settings", default="on,off", help="learning settings to run, in order")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra key=value for the server (repeatable)")
    parser.add_argument("--out", default="runs/serving_load")
    args = parser.parse_args()

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = ReplayConfig(source=args.world, schedule=args.schedule, num_requests=args.requests, clients=args.clients,
                       max_tokens=args.max_tokens, windows=5)  # fmt: skip
    requests = make_traffic(load_prompts(args.world), args.schedule, args.requests, seed=0).requests
    base = [f"world.name={args.world}", f"draft={args.draft}", "torch_threads=1", *args.serve_arg]
    results = {}
    for setting in args.settings.split(","):
        results[f"learning_{setting}"] = run_setting(f"learning_{setting}", [*base, f"learn={setting == 'on'}"],
                                                     cfg, requests, out_dir)  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out_dir / 'results.json'}")
    failed = any(r["errors"] or r["lost"] for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
