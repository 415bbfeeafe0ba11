"""One subprocess smoke run of each serving CLI: ``python -m aurora_rl.serve`` on the tiny
world, ``python -m aurora_rl.serve.replay`` against it, then a clean SIGTERM shutdown."""

import json
import subprocess
import sys

import httpx
import pytest

from aurora_rl.serve.__main__ import main as serve_main
from aurora_rl.serve.replay import main as replay_main
from processes import ENV, READY_SECONDS, free_ports


def greedy_completion(port: int, prompt: str) -> dict:
    response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                          json={"model": "aurora-tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()


def test_serve_and_replay_clis_end_to_end_and_a_follower_process(tmp_path, processes):
    port, follower_port = free_ports(2)
    snapshots = tmp_path / "snapshots"
    server = processes.serve(port, "draft=scratch", f"snapshots.directory={snapshots}", "learner.min_traces=8",
                             "learner.publish_every=2")
    follower = None
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        assert health.json()["status"] == "ok" and health.json()["model"] == "aurora-tiny"

        report = tmp_path / "replay.json"
        replay = subprocess.run(
            [sys.executable, "-m", "aurora_rl.serve.replay", f"url=http://127.0.0.1:{port}/v1", "source=tiny",
             "num_requests=6", "clients=3", "max_tokens=16", "windows=2", f"output={report}"],
            capture_output=True, text=True, env=ENV, timeout=READY_SECONDS,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "completed 6  errors 0" in replay.stdout
        summary = json.loads(report.read_text())["summary"]
        assert (summary["completed"], summary["errors"], summary["lost"]) == (6, 0, 0)
        assert summary["latency_seconds"]["p50"] > 0 and sum(w["requests"] for w in summary["windows"]) == 6

        # A second process that learns nothing serves the versions the first one publishes.
        follower = processes.serve(follower_port, "learn=false", f"snapshots.follow={snapshots}",
                                   "snapshots.follow_interval=0.2", name="follower")

        def follower_caught_up() -> bool:  # (the learner may publish again meanwhile: wait until both agree)
            latest = json.loads((snapshots / "LATEST.json").read_text())["version"]
            return httpx.get(f"http://127.0.0.1:{follower_port}/health").json()["draft_version"] == latest

        follower.wait_until(follower_caught_up, "the follower to serve the version LATEST.json names")
        prompt = "SELECT name FROM"
        followed = greedy_completion(follower_port, prompt)
        assert followed["choices"][0]["text"] == greedy_completion(port, prompt)["choices"][0]["text"]  # both lossless
        assert min(followed["spec_decode"]["draft_versions"]) >= 0  # a learner's version, not its own start (-1)
    finally:  # (the processes fixture kills both groups if a stop below fails)
        follower_output = follower.stop() if follower else ""
        output = server.stop()
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
