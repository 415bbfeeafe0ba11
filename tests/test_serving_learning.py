"""Online learning behind a live server: hot swaps mid-stream stay lossless and are named by
the traces; the learner publishes while serving; NaN updates are rejected; a crashed
learner leaves serving up; a bad version is rolled back; shutdown saves the learner."""

import json
import re
import threading

import httpx
import openai
import pytest
import torch

from aurora_rl.algos import AlgoConfig
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.online.learner import Learner, LearnerConfig
from aurora_rl.online.publish import LivePolicy
from aurora_rl.online.snapshots import SnapshotStore
from serving_harness import MODEL, complete, expected_text, metric, noisy_drafter, serving, tiny, tiny_server, wait_for

PROMPTS = ["def fibonacci(n):\n", "SELECT name FROM", "The river ran quietly through the", "User: hello\nAssistant:"]


def test_a_swap_during_a_stream_keeps_it_lossless_and_traces_name_both_versions():
    server = tiny_server()
    tokenizer, model = tiny()
    published = threading.Event()

    def hold_at_third_step(trace):  # keeps the stream in flight until the new version is live
        if trace.step == 2 and not published.is_set():
            published.wait(30)

    server.engine.add_trace_listener(hold_at_third_step)
    old = server.live.version
    with serving(server) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=64, temperature=0, stream=True)
        chunks = []
        for chunk in stream:
            if not published.is_set():  # the first chunk is out: swap now, between two steps
                server.live.publish(noisy_drafter(model, scale=0.5, seed=9, version=server.live.next_version))
                published.set()
            chunks.append(chunk)
    new = server.live.version
    assert new == old + 1
    assert "".join(c.choices[0].text for c in chunks) == expected_text(PROMPTS[2], 64)  # the stream completed, lossless
    versions = [t.draft_version for t in server.engine.traces_of(chunks[0].id) if t.num_proposed]
    assert versions[0] == old and versions[-1] == new and versions == sorted(versions)  # both, in order, never torn
    assert chunks[-1].model_extra["spec_decode"]["draft_versions"] == [old, new]
    fingerprints = [c.system_fingerprint for c in chunks if c.choices[0].text]
    assert fingerprints[0] == f"draft-v{old}" and fingerprints[-1] == f"draft-v{new}"


def test_the_learner_publishes_versions_while_serving_losslessly(tmp_path):
    learner = LearnerConfig(mode="async", min_traces=16, publish_every=4, gate=False, rollback_window=0)
    server = tiny_server(learner=learner, snapshot_dir=tmp_path)
    with serving(server) as url:
        answers = []
        for i in range(12):
            prompt = PROMPTS[i % len(PROMPTS)]
            answers.append((prompt, complete(url, prompt)))
            if server.live.version >= 2 and i >= 7:
                break
        wait_for(lambda: server.live.version >= 1, what="a published version")
        assert metric(url, "aurora_draft_swaps_total") == server.live.swaps >= 1
    for prompt, answer in answers:
        assert answer["choices"][0]["text"] == expected_text(prompt, 24)
    used = {v for _, a in answers for v in a["spec_decode"]["draft_versions"]}
    assert len(used) >= 2  # requests were served by more than one version
    assert SnapshotStore(tmp_path).latest_version() == server.live.version  # every live version is on disk


def test_a_nan_update_is_rejected_and_serving_goes_on():
    learner = LearnerConfig(mode="async", min_traces=8, publish_every=1, gate=False, rollback_window=0)
    server = tiny_server(learner=learner)
    with torch.no_grad():  # poison the learner's private copy: every loss becomes NaN
        server.learning.learner.algorithm.policy.model.lm_head.weight[0, 0] = float("nan")
    with serving(server) as url:
        for i in range(40):
            answer = complete(url, PROMPTS[i % 4])
            assert answer["choices"][0]["text"] == expected_text(PROMPTS[i % 4], 24)
            if server.learning.learner.rejected_updates >= 3:
                break
        assert metric(url, "aurora_learner_rejected_updates_total") >= 3
        assert server.learning.learner.algorithm.last_rejection == "non-finite loss"
        assert server.learning.learner.published == 0 and server.live.version == 0  # nothing reached serving
        assert httpx.get(f"{url}/health").json()["learner"] == "running"  # rejected, not crashed


def test_a_crashed_learner_does_not_take_serving_down(tmp_path, monkeypatch):
    learner = LearnerConfig(mode="async", min_traces=8, rollback_window=0)
    server = tiny_server(learner=learner, snapshot_dir=tmp_path)

    def explode(batch):
        raise RuntimeError("simulated learner bug")

    monkeypatch.setattr(server.learning.learner.algorithm, "update", explode)
    with serving(server) as url:
        for i in range(40):  # until the buffer holds min_traces training traces and the learner tries
            assert complete(url, PROMPTS[i % 4])["choices"][0]["text"] == expected_text(PROMPTS[i % 4], 24)
            if server.learning.learner.state == "crashed":
                break
        wait_for(lambda: server.learning.learner.state == "crashed", what="the learner to crash")
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200 and health.json()["learner"] == "crashed"
        for prompt in PROMPTS:  # serving goes on with the last good version
            assert complete(url, prompt)["choices"][0]["text"] == expected_text(prompt, 24)
        assert metric(url, 'aurora_learner_state{state="crashed"}') == 1
    state = json.loads((tmp_path / "learner" / "learner_state.json").read_text())
    assert state["state"] == "crashed" and "simulated learner bug" in state["error"]


def test_a_version_that_lowers_live_acceptance_is_rolled_back():
    learner = LearnerConfig(mode="async", min_traces=10**6, rollback_window=12, rollback_drop=0.25)  # never trains
    server = tiny_server(learner=learner)
    tokenizer, model = tiny()
    with serving(server) as url:
        for prompt in PROMPTS:
            complete(url, prompt)
        server.live.publish(noisy_drafter(model, scale=5.0, seed=3, version=1))  # a much worse draft goes live
        for prompt in PROMPTS * 2:
            assert complete(url, prompt)["choices"][0]["text"] == expected_text(prompt, 24)
        # The learner thread judges the swap between its rounds.
        wait_for(lambda: server.live.rollbacks > 0, what="the learner to judge the swap and roll it back")
        assert server.live.version == 0 and server.live.rollbacks == 1
        assert server.learning.monitor.rolled_back == [1]
        assert metric(url, "aurora_draft_rollbacks_total") == 1


def test_shutdown_stops_the_learner_and_saves_its_state(tmp_path):
    learner = LearnerConfig(mode="async", min_traces=16, publish_every=4, gate=False, rollback_window=0)
    server = tiny_server(learner=learner, snapshot_dir=tmp_path)
    with serving(server) as url:
        for i in range(8):
            complete(url, PROMPTS[i % 4])
        wait_for(lambda: server.learning.learner.updates >= 4, what="learner updates")
    assert server.learning.learner.state == "idle" and not server.engine.running
    saved = tmp_path / "learner"
    state = json.loads((saved / "learner_state.json").read_text())
    assert state["updates"] == server.learning.learner.updates and state["live_version"] == server.live.version
    copy = SmallLMDrafter.from_pretrained(saved)  # the learner's trained copy, loadable as a drafter
    for name, value in copy.model.state_dict().items():
        assert torch.equal(value, server.learning.learner.algorithm.policy.model.state_dict()[name]), name
    assert SnapshotStore(tmp_path).latest_version() == server.live.version


def test_a_restarted_server_resumes_the_last_version_and_continues_the_numbers(tmp_path):
    tokenizer, model = tiny()
    left = SmallLMDrafter(model, version=7)
    SnapshotStore(tmp_path).save(left)  # left by an earlier run
    server = tiny_server(snapshot_dir=tmp_path)  # (its own starting draft is another one)
    assert server.live.version == 7 and server.live.next_version == 8 and SnapshotStore(tmp_path).latest_version() == 7
    for name, value in server.live.current.model.state_dict().items():  # v7's weights, not the starting draft's
        assert torch.equal(value, left.model.state_dict()[name]), name


def test_a_throttled_learner_rests_in_proportion_to_its_work(monkeypatch):
    """learner.async_busy_fraction=0.25: 40 ms of training is followed by 120 ms of rest
    (a fake clock and stop event, both public seams, make the schedule exact)."""
    clock, rests = [0.0], []
    config = LearnerConfig(mode="async", async_busy_fraction=0.25)
    _, model = tiny()
    learner = Learner(LivePolicy(noisy_drafter(model, scale=0.2, seed=1)), config.make_buffer(), AlgoConfig(), config,
                      clock=lambda: clock[0])  # fmt: skip

    def train_round(updates=None):
        clock[0] += 0.04
        return [{"update/rejected": 0.0}]

    class StopAfterThreeRests:
        def is_set(self):
            return len(rests) >= 3

        def wait(self, seconds):
            rests.append(seconds)

    monkeypatch.setattr(learner, "train_round", train_round)
    learner.run(StopAfterThreeRests())
    assert rests == pytest.approx([0.12] * 3)
    with pytest.raises(ValueError, match=re.escape("learner.async_busy_fraction must be in (0, 1], got 0")):
        LearnerConfig(async_busy_fraction=0)
