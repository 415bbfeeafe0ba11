"""Restart = resume, and shutdown ends streams properly: a learning server killed with SIGKILL
and restarted on its snapshot directory serves its last good version (not the pretrained
draft) and continues its learner; a short drain ends an open stream with the error event."""

import json
import signal

import httpx
import pytest
import torch

from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.online.snapshots import load_snapshot
from processes import free_ports
from serving_harness import tiny

PROMPTS = ["def fibonacci(n):\n", "SELECT name FROM", "The river ran quietly through the", "User: hello\nAssistant:",
           "def add(a, b):", "SELECT id, total FROM orders WHERE"]  # fmt: skip
MAX_TOKENS = 48


def greedy(port: int, prompt: str, max_tokens: int = MAX_TOKENS) -> dict:
    response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=300,
                          json={"model": "aurora-tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def accepted_length(policy, prompts=PROMPTS) -> float:
    """Mean accepted length of ``policy`` decoding ``prompts`` greedily, in this process."""
    tokenizer, model = tiny()
    decoder = SpeculativeDecoder(Target(model), policy, DecodeConfig(k=4), [tokenizer.eos_token_id])
    runs = [decoder.generate(tokenizer(p)["input_ids"], MAX_TOKENS) for p in prompts]
    return sum(run.accepted_length for run in runs) / len(runs)


def latest(snapshots) -> int:
    return json.loads((snapshots / "LATEST.json").read_text())["version"]


def test_a_sigkilled_learning_server_resumes_its_last_good_version(tmp_path, processes):
    port, restart_port = free_ports(2)
    snapshots = tmp_path / "snapshots"
    learning = ("draft=pretrained", f"snapshots.directory={snapshots}", "snapshots.keep=1000", "learner.min_traces=16",
                "learner.publish_every=4", "learner.gate=false", "learner.rollback_window=0")  # fmt: skip
    server = processes.serve(port, *learning)

    def learned() -> bool:  # traffic until the learner has published a few versions
        for prompt in PROMPTS:
            greedy(port, prompt, 32)
        return latest(snapshots) >= 3 and (snapshots / "learner" / "optimizer.pt").is_file()

    server.wait_until(learned, "the learner to publish v3 and save its state")
    server.kill()  # SIGKILL: no shutdown, only what was saved as it went survives
    killed_at = latest(snapshots)
    saved = json.loads((snapshots / "learner" / "learner_state.json").read_text())

    # Restarted on the same directory (learning on, but no traffic is enough to train again).
    restarted = processes.serve(restart_port, *learning[:-4], "learner.min_traces=1000000", name="restarted")
    health = httpx.get(f"http://127.0.0.1:{restart_port}/health").json()
    assert health["draft_version"] == killed_at and health["status"] == "ok"
    answers = [greedy(restart_port, prompt) for prompt in PROMPTS]
    assert all(a["spec_decode"]["draft_versions"] == [killed_at] for a in answers)
    served = sum(a["spec_decode"]["accepted_length"] for a in answers) / len(answers)
    output = restarted.stop()
    assert f"resuming v{killed_at} (the newest good version" in output
    if saved["live_version"] == killed_at:  # (unless the kill fell between a publish and the state saved after it)
        assert f"resumed the learner's copy and optimizer from {snapshots / 'learner'} ({saved['updates']} updates so far)" in output

    _, model = tiny()
    killed_version = load_snapshot(snapshots / f"v{killed_at:06d}", killed_at, "small_lm", Target(model))
    pretrained = load_snapshot(snapshots / "v000000", 0, "small_lm", Target(model))
    assert not all(torch.equal(a, b) for a, b in zip(killed_version.model.parameters(), pretrained.model.parameters()))
    assert served == pytest.approx(accepted_length(killed_version), abs=1e-9)  # the pre-kill version serves
    # The next version is numbered after the killed one: no number names two drafts.
    assert json.loads((snapshots / "LATEST.json").read_text())["newest"] >= killed_at


def test_a_short_drain_ends_an_open_stream_with_the_error_event(processes):
    (port,) = free_ports(1)
    server = processes.serve(port, "learn=false", "snapshots.directory=null", "server.drain_seconds=0",
                             "server.max_tokens=480")  # fmt: skip
    body = {"model": "aurora-tiny", "prompt": "The river ran quietly through the", "max_tokens": 480,
            "temperature": 0, "stream": True}  # fmt: skip
    events = []
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if len(events) == 1:
                    server.signal(signal.SIGTERM)  # mid-stream: drain 0 s, then cancel
    assert events[-1] != "[DONE]"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "shutting_down" and error["type"] == "service_unavailable_error"
    assert error["message"] == "The request could not be completed: the server is shutting down."
    server.popen.wait(120)
    assert server.popen.returncode == 0, server.output()
