"""Follow mode: a server that does not learn serves the versions a separate process writes to a
snapshot directory. A version written while it serves is hot-swapped in (mid-stream too),
answers stay the target's greedy output and name the learner's version; a half-written,
mismatched or unreadable snapshot is skipped without taking serving down, and a later good
one is picked up; a learner rollback is followed; learn=true + snapshots.follow is refused."""

import json
import logging
import os
import shutil
import threading

import httpx
import openai
import pytest
import torch

from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
import aurora_rl.runtime.follow as follow_module
from aurora_rl.serve.__main__ import main as serve_main
from aurora_rl.runtime.config import EngineSection, SnapshotSection
from aurora_rl.runtime.follow import LOCAL_VERSION, SnapshotFollower, follow_and_learn_error
from aurora_rl.online.snapshots import load_snapshot
from aurora_rl.online.learner import LearnerConfig
from aurora_rl.online.publish import LivePolicy
from aurora_rl.online.snapshots import SnapshotStore
from aurora_rl.runtime.server import build_server
from serving_harness import MODEL, expected_text, metric, noisy_drafter, serving, tiny, wait_for
from serving_harness import complete as harness_complete

PROMPTS = ["def fibonacci(n):\n", "SELECT name FROM", "The river ran quietly through the"]
INTERVAL = 0.05


def follower_server(directory):
    """A server following ``directory``; its own starting draft is another noisy copy."""
    tokenizer, model = tiny()
    return build_server(
        Target(model), tokenizer, noisy_drafter(model, scale=0.2, seed=1), decode=DecodeConfig(k=4), model_name=MODEL,
        engine=EngineSection(keep_request_traces=64),
        snapshots=SnapshotSection(directory=None, follow=str(directory), follow_interval=INTERVAL),
    )  # fmt: skip


def complete(url, prompt, max_tokens=24):
    answer = harness_complete(url, prompt, max_tokens)
    assert answer["choices"][0]["text"] == expected_text(prompt, max_tokens)  # lossless, whatever draft serves
    return answer


def same_weights(a, b):
    return all(torch.equal(value, b.model.state_dict()[name]) for name, value in a.model.state_dict().items())


def test_a_follower_swaps_in_a_version_another_process_writes_mid_stream(tmp_path):
    _, model = tiny()
    learner_dir = tmp_path / "learner"
    store = SnapshotStore(learner_dir)  # the learner process's side of the shared directory
    store.save(noisy_drafter(model, scale=0.3, seed=5, version=3))
    server = follower_server(learner_dir)
    assert server.live.version == 3 and server.live.swaps == 0  # starts with the learner's latest version
    assert server.snapshots is None and server.learning is None  # learns nothing, writes nothing

    new = noisy_drafter(model, scale=0.5, seed=9, version=4)
    armed, swapped = threading.Event(), threading.Event()

    def hold_at_third_step(trace):  # keeps the stream in flight until the follower swapped v4 in
        if armed.is_set() and trace.step == 2 and not swapped.is_set():
            swapped.wait(30)

    server.engine.add_trace_listener(hold_at_third_step)
    with serving(server) as url:
        assert complete(url, PROMPTS[0])["spec_decode"]["draft_versions"] == [3]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        armed.set()
        stream = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=64, temperature=0, stream=True)
        chunks = []
        for chunk in stream:
            if not swapped.is_set():  # the first chunk is out: the learner writes v4 now
                store.save(new)
                wait_for(lambda: server.live.version == 4, what="the follower to swap v4 in")
                swapped.set()
            chunks.append(chunk)
        answers = [complete(url, prompt) for prompt in PROMPTS]
        assert metric(url, "aurora_draft_version") == 4 and metric(url, "aurora_draft_swaps_total") == 1
        assert metric(url, "aurora_follow_loaded_total") == 2 and metric(url, "aurora_follow_failures_total") == 0
        assert metric(url, "aurora_follow_latest_version") == 4
        assert httpx.get(f"{url}/health").json()["draft_version"] == 4
    assert not server.follower.running and not server.engine.running  # shutdown stopped the follower

    assert "".join(c.choices[0].text for c in chunks) == expected_text(PROMPTS[2], 64)  # lossless across the swap
    assert chunks[-1].model_extra["spec_decode"]["draft_versions"] == [3, 4]  # the learner's numbers
    versions = [t.draft_version for t in server.engine.traces_of(chunks[0].id) if t.num_proposed]
    assert versions[0] == 3 and versions[-1] == 4 and versions == sorted(versions)  # never torn
    for answer in answers:  # the next requests: the new version only, named by traces and fingerprints
        assert answer["spec_decode"]["draft_versions"] == [4] and answer["system_fingerprint"] == "draft-v4"
        assert {t.draft_version for t in server.engine.traces_of(answer["id"])} == {4}
    assert same_weights(server.live.current, new)  # what serves is what the learner wrote


def test_unusable_snapshots_are_skipped_and_a_later_good_one_is_picked_up(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="aurora_rl.runtime.follow")
    loads = []
    monkeypatch.setattr(follow_module, "load_snapshot", lambda path, *args: loads.append(path.name) or load_snapshot(path, *args))
    _, model = tiny()
    shared = tmp_path / "shared"
    shared.mkdir()
    server = follower_server(shared)
    assert server.live.version == LOCAL_VERSION  # nothing to follow yet: its own draft, under a number no learner uses
    good = noisy_drafter(model, scale=0.3, seed=5, version=3)
    good.save_pretrained(tmp_path / "saved")
    pointer = shared / "LATEST.json"

    def point_at(version, name, text=None):  # atomically, as SnapshotStore does
        partial = shared / ".LATEST.json.tmp"
        partial.write_text(text if text is not None else json.dumps({"version": version, "path": name}))
        os.replace(partial, pointer)

    def skipped(count):
        wait_for(lambda: server.follower.failures >= count, what=f"{count} skipped snapshots")
        assert server.follower.failures == count

    with serving(server) as url:
        assert complete(url, PROMPTS[0])["spec_decode"]["draft_versions"] == [LOCAL_VERSION]

        half = shared / "v000001"  # a half-copied snapshot: manifest right, weights truncated
        noisy_drafter(model, scale=0.3, seed=5, version=1).save_pretrained(half)
        weights = (half / "model.safetensors").read_bytes()
        (half / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        point_at(1, "v000001")
        skipped(1)
        polls = server.follower.last_poll
        wait_for(lambda: server.follower.last_poll > polls + 4 * INTERVAL, what="more polls")
        assert server.follower.failures == 1 and loads == ["v000001"]  # unchanged files are not reloaded every interval
        assert complete(url, PROMPTS[1])["spec_decode"]["draft_versions"] == [LOCAL_VERSION]

        shutil.copytree(tmp_path / "saved", shared / "v000002")  # complete, but its manifest says v3
        point_at(2, "v000002")
        skipped(2)
        point_at(None, None, text='{"version": ')  # a LATEST.json that is not JSON
        skipped(3)
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert complete(url, PROMPTS[2])["spec_decode"]["draft_versions"] == [LOCAL_VERSION]

        SnapshotStore(shared).save(good)  # then the learner writes a good version
        wait_for(lambda: server.live.version == 3, what="the good version")
        answer = complete(url, PROMPTS[0])
        assert answer["spec_decode"]["draft_versions"] == [3]
        assert metric(url, "aurora_follow_failures_total") == 3 and metric(url, "aurora_follow_loaded_total") == 1
        assert metric(url, "aurora_draft_version") == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped v1: SafetensorError:" in w and "serving v-1 until" in w for w in warnings), warnings
    assert any("skipped v2: UnusableSnapshot:" in w and "says version 3, LATEST.json says 2" in w for w in warnings), warnings
    assert any("LATEST.json is unreadable" in w for w in warnings), warnings
    assert same_weights(server.live.current, good)


def test_a_learner_rollback_is_followed(tmp_path):
    _, model = tiny()
    store = SnapshotStore(tmp_path)
    v3, v4 = noisy_drafter(model, scale=0.3, seed=5, version=3), noisy_drafter(model, scale=0.5, seed=6, version=4)
    store.save(v3)
    follower = SnapshotFollower(tmp_path, Target(model), "small_lm", INTERVAL)
    live = LivePolicy(follower.initial(noisy_drafter(model, scale=0.2, seed=1)))
    assert live.version == 3
    assert not follower.poll(live)  # nothing new
    store.save(v4)
    assert follower.poll(live) and live.version == 4
    store.save(v3)  # what the learner does after rolling v4 back: LATEST.json points at v3 again
    assert follower.poll(live) and live.version == 3 and live.rollbacks == 1 and follower.rollbacks == 1
    store.save(noisy_drafter(model, scale=0.3, seed=7, version=2))  # older and not the one before: ignored
    assert not follower.poll(live) and live.version == 3 and follower.failures == 0


def test_learning_and_following_at_once_is_refused(tmp_path, capsys):
    message = follow_and_learn_error(str(tmp_path))
    assert message == (
        f"snapshots.follow='{tmp_path}' and learn=true: a follower serves the versions another process's learner "
        "writes and does not learn itself; set learn=false to follow, or drop snapshots.follow to learn in this process"
    )
    for argv in (["learn=true", f"snapshots.follow={tmp_path}"], [f"snapshots.follow={tmp_path}"]):  # learn defaults on
        assert serve_main(argv) == 2
        assert capsys.readouterr().err.strip() == f"error: {message}"
    tokenizer, model = tiny()
    with pytest.raises(ValueError) as error:  # build_server refuses it too
        build_server(Target(model), tokenizer, noisy_drafter(model, 0.2, 1), decode=DecodeConfig(k=4), model_name=MODEL,
                     learner=LearnerConfig(mode="async"), snapshots=SnapshotSection(directory=None, follow=str(tmp_path)))  # fmt: skip
    assert str(error.value) == message
