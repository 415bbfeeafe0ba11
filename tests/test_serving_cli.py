"""One subprocess smoke run of each serving CLI: ``python -m aurora_rl.serve`` on the tiny
world, ``python -m aurora_rl.serve.replay`` against it, then a clean SIGTERM shutdown."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from aurora_rl.serve.__main__ import main as serve_main
from aurora_rl.serve.replay import main as replay_main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (held open together, so the OS cannot hand one out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_server(port: int, *args: str) -> subprocess.Popen:
    """``python -m aurora_rl.serve`` on the tiny world, returned once /health answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "aurora_rl.serve", "world.name=tiny", f"server.port={port}", "progress=false",
         "server.log_level=warning", "torch_threads=1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while True:
        assert server.poll() is None, server.stdout.read()
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server did not come up within 90 s"
            time.sleep(0.2)


def stop(server: subprocess.Popen) -> str:
    """SIGTERM (graceful drain); asserts exit status 0 and returns what it printed."""
    server.send_signal(signal.SIGTERM)
    output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output
    return output


def greedy_completion(port: int, prompt: str) -> dict:
    response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                          json={"model": "aurora-tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()


def test_serve_and_replay_clis_end_to_end_and_a_follower_process(tmp_path):
    port, follower_port = free_ports(2)
    snapshots = tmp_path / "snapshots"
    server = start_server(port, "draft=scratch", f"snapshots.directory={snapshots}", "learner.min_traces=8",
                          "learner.publish_every=2")
    follower = None
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        assert health.json()["status"] == "ok" and health.json()["model"] == "aurora-tiny"

        report = tmp_path / "replay.json"
        replay = subprocess.run(
            [sys.executable, "-m", "aurora_rl.serve.replay", f"url=http://127.0.0.1:{port}/v1", "source=tiny",
             "num_requests=6", "clients=3", "max_tokens=16", "windows=2", f"output={report}"],
            capture_output=True, text=True, env=ENV, timeout=120,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "completed 6  errors 0" in replay.stdout
        summary = json.loads(report.read_text())["summary"]
        assert (summary["completed"], summary["errors"], summary["lost"]) == (6, 0, 0)
        assert summary["latency_seconds"]["p50"] > 0 and sum(w["requests"] for w in summary["windows"]) == 6

        # A second process that learns nothing serves the versions the first one publishes.
        follower = start_server(follower_port, "learn=false", f"snapshots.follow={snapshots}",
                                "snapshots.follow_interval=0.2")
        deadline = time.monotonic() + 30
        while True:  # (the learner may publish again meanwhile: wait until both agree)
            latest = json.loads((snapshots / "LATEST.json").read_text())["version"]
            if httpx.get(f"http://127.0.0.1:{follower_port}/health").json()["draft_version"] == latest:
                break
            assert time.monotonic() < deadline, f"the follower never reached v{latest}"
            time.sleep(0.2)
        prompt = "SELECT name FROM"
        followed = greedy_completion(follower_port, prompt)
        assert followed["choices"][0]["text"] == greedy_completion(port, prompt)["choices"][0]["text"]  # both lossless
        assert min(followed["spec_decode"]["draft_versions"]) >= 0  # a learner's version, not its own start (-1)
    finally:
        follower_output = stop(follower) if follower else ""
        output = stop(server)
    assert "serving 'aurora-tiny' (draft v0, learning with forward_kl, key off)" in output
    assert "stopped: draft v" in output
    assert (snapshots / "learner" / "learner_state.json").is_file() and (snapshots / "LATEST.json").is_file()
    assert "api_key: null" in (snapshots / "serve_config.yaml").read_text()
    assert f"following {snapshots}" in follower_output and "versions followed (0 skipped)" in follower_output


@pytest.mark.parametrize(
    "main, argv, message",
    [
        (serve_main, ["learner.mode=sync"], "error: learner.mode='sync': a server learns on its own thread; set learner.mode=async"),
        (serve_main, ["draft=random"], "error: draft='random' is not one of pretrained, scratch"),
        (serve_main, ["server.max_tokens=0"], "error: server.max_tokens=0 must be >= 1"),
        (replay_main, ["clients=0"], "error: clients=0 must be >= 1"),
        (replay_main, ["endpoint=embeddings"], "error: endpoint='embeddings' must be 'completions' or 'chat'"),
    ],
)
def test_cli_config_errors_name_the_key(capsys, main, argv, message):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message
