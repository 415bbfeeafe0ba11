"""The snapshot directory under faults: a server (and a follower) starts on the newest good
version and says which and why; a failed write degrades /health until writing works again;
staging of killed writes is cleaned; LATEST never names a pruned version; one file mode;
a follower refuses implausible versions and keeps following; the learner idles without
new traffic."""

import json
import logging
import re
import shutil

import httpx
import pytest
import torch

from aurora_rl.core.target import Target
from aurora_rl.runtime.follow import SnapshotFollower
from aurora_rl.online.learner import LearnerConfig
from aurora_rl.online.publish import LivePolicy
from aurora_rl.online.snapshots import SnapshotStore, UnusableSnapshot, load_snapshot, relative_change, weights_of
from aurora_rl.policies.eagle import EagleDrafter
from serving_harness import complete, metric, noisy_drafter, serving, tiny, tiny_server, wait_for

PROMPTS = ["def fibonacci(n):\n", "SELECT name FROM", "The river ran quietly through the", "User: hello\nAssistant:"]


def write_versions(directory, *versions, keep=10):
    _, model = tiny()
    store = SnapshotStore(directory, keep=keep)
    drafts = {v: noisy_drafter(model, scale=0.2, seed=10 + v, version=v) for v in versions}
    for draft in drafts.values():
        store.save(draft)
    return drafts


def truncate(path):
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


@pytest.mark.parametrize("latest", ["", "{not json", '{"version": "seven"}'])
def test_a_garbage_latest_json_resumes_the_newest_good_version_naming_the_file(tmp_path, latest):
    write_versions(tmp_path, 1, 2)
    (tmp_path / "LATEST.json").write_text(latest)
    server = tiny_server(snapshot_dir=tmp_path)
    assert server.live.version == 2
    assert server.resumed.startswith("resuming v2 (the newest good version; the configured draft is not used")
    assert f"skipped {tmp_path / 'LATEST.json'}" in server.resumed
    assert json.loads((tmp_path / "LATEST.json").read_text())["version"] == 2  # repaired
    assert server.live.next_version == 3


def test_a_truncated_newest_version_falls_back_to_the_one_before(tmp_path, caplog):
    write_versions(tmp_path, 1, 2)
    truncate(tmp_path / "v000002")
    caplog.set_level(logging.INFO, logger="aurora_rl.runtime.follow")
    _, model = tiny()
    follower = SnapshotFollower(tmp_path, Target(model), "small_lm", interval=1.0)
    assert follower.initial(noisy_drafter(model, 0.2, 1)).version == 1  # not the untrained local draft
    messages = [r.message for r in caplog.records if r.name == "aurora_rl.runtime.follow"]
    assert any("skipped v2: SafetensorError: " in m for m in messages), messages
    assert any(m.endswith("starting with v1 (passed over 1 unusable: see above)") for m in messages), messages

    server = tiny_server(snapshot_dir=tmp_path)  # a learning server restarted there does the same
    assert server.live.version == 1 and "skipped v2: SafetensorError: " in server.resumed
    assert server.live.next_version == 3  # v2's number stays used


def test_staging_of_killed_writes_is_removed_and_files_share_one_mode(tmp_path):
    write_versions(tmp_path, 1)
    (tmp_path / ".v000002.tmp-4242-1").mkdir()
    (tmp_path / ".v000002.tmp-4242-1" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".LATEST.json.tmp-4242-1").write_text("{")
    (tmp_path / ".learner.tmp-4242-7").mkdir()
    store = SnapshotStore(tmp_path)
    assert store.cleaned == [".LATEST.json.tmp-4242-1", ".learner.tmp-4242-7", ".v000002.tmp-4242-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST.json", "v000001"]
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "v000001").iterdir()}
    assert len(set(modes.values())) == 1, modes  # the weights are not 0600 while the rest is 0644


def test_latest_never_names_a_pruned_version_with_keep_1_and_a_rollback(tmp_path):
    drafts = write_versions(tmp_path, 0, 1, keep=1)
    store = SnapshotStore(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.glob("v*")) == ["v000001"]
    assert store.write_live(drafts[0])  # a rollback to v0, whose directory was pruned
    assert store.latest_version() == 0 and (tmp_path / "v000000" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.glob("v*")) == ["v000000"]  # v1 went, not the live v0
    assert store.newest_number() == 1  # v1's number is never given to another draft


def test_a_failed_snapshot_write_degrades_health_until_writing_works_again(tmp_path, monkeypatch):
    learner = LearnerConfig(mode="async", min_traces=8, publish_every=2, gate=False, rollback_window=0)
    server = tiny_server(learner=learner, snapshot_dir=tmp_path)
    store = server.snapshots
    save = store.save
    unwritable = True

    def save_or_fail(policy):  # the directory turned read-only (root ignores chmod, so fault injection)
        if unwritable:
            raise OSError(30, "Read-only file system", str(tmp_path))
        return save(policy)

    monkeypatch.setattr(store, "save", save_or_fail)
    with serving(server) as url:
        traffic = iter(PROMPTS * 100)
        wait_for(lambda: complete(url, next(traffic)) and server.live.version >= 1, what="a publish while read-only")
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "degraded" and health["learner"] == "running"
        # The async learner may publish (and fail to write) again before /health is read.
        problem = rf"writing v\d+ to {re.escape(str(tmp_path))} failed: OSError: \[Errno 30\] Read-only file system"
        assert re.match(problem, health["problems"][0]), health["problems"]
        assert metric(url, "aurora_degraded") == 1 and metric(url, "aurora_snapshot_write_failures_total") >= 1
        unwritable = False
        published = server.live.version
        wait_for(lambda: complete(url, next(traffic)) and server.live.version > published, what="the next publish")
        wait_for(lambda: store.latest_version() == server.live.version, what="LATEST.json to catch up")
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and "problems" not in health
        assert metric(url, "aurora_degraded") == 0


def test_a_follower_refuses_implausible_versions_and_keeps_following(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="aurora_rl.runtime.follow")
    _, model = tiny()
    store = SnapshotStore(tmp_path)
    store.save(noisy_drafter(model, scale=0.2, seed=1, version=5))
    follower = SnapshotFollower(tmp_path, Target(model), "small_lm", interval=1.0, max_change=1.0, max_jump=1000)
    live = LivePolicy(follower.initial(noisy_drafter(model, 0.2, 2)))
    assert live.version == 5

    store.save(noisy_drafter(model, scale=5.0, seed=2, version=6))  # finite garbage
    assert not follower.poll(live) and live.version == 5
    assert "snapshots.follow_max_change=1.0); not a learner's next version" in caplog.records[-1].message

    crafted = tmp_path / f"v{10**12:06d}"
    shutil.copytree(tmp_path / "v000005", crafted)
    manifest = json.loads((crafted / "policy.json").read_text())
    (crafted / "policy.json").write_text(json.dumps({**manifest, "version": 10**12}))
    store.point_latest(10**12, "small_lm")
    assert not follower.poll(live) and live.version == 5
    assert "versions ahead of the live v5 (more than snapshots.follow_max_jump=1000)" in caplog.records[-1].message

    shutil.rmtree(crafted)
    store.save(noisy_drafter(model, scale=0.2, seed=3, version=7))  # the learner's real next version
    assert follower.poll(live) and live.version == 7


def test_the_learner_idles_without_new_traffic(tmp_path):
    learner_config = LearnerConfig(mode="async", min_traces=16, publish_every=4, gate=False, rollback_window=0,
                                   max_passes=2.0)  # fmt: skip
    server = tiny_server(learner=learner_config)
    learner = server.learning.learner
    with serving(server) as url:
        for prompt in PROMPTS * 4:
            complete(url, prompt)
        wait_for(lambda: learner.budget() == 0, what="the learner to spend what the traffic paid for")
        spent = learner.idle_waits
        wait_for(lambda: learner.idle_waits > spent, what="the learner's round in progress to end")
        updates, version, idle = learner.updates, server.live.version, learner.idle_waits
        wait_for(lambda: learner.idle_waits >= idle + 40, what="40 idle rounds of the learner")
        assert (learner.updates, server.live.version) == (updates, version)  # no traffic, no training
    added = server.learning.buffer.added_for_training
    assert updates + learner.rejected_updates == learner.batches_drawn == int(added * 2.0 / 32)  # 2 passes of 32-trace batches
    assert updates > 0


def test_snapshot_checks_read_each_kinds_own_weights(tmp_path):
    """The non-finite check and the follower's change guard look at a drafter's own weights:
    a small LM's model, an EAGLE head (not the target it reads)."""
    _, model = tiny()
    target = Target(model, hidden_layers=(-1,))
    small, head = noisy_drafter(model, scale=0.2, seed=1, version=1), EagleDrafter.from_target(target, seed=0)
    assert relative_change(small, small) == 0.0 and relative_change(head, head) == 0.0
    assert relative_change(noisy_drafter(model, scale=0.2, seed=2), small) > 0
    assert relative_change(head, small) == float("inf")  # different weights altogether
    with torch.no_grad():
        next(weights_of(small).parameters()).view(-1)[0] = float("nan")
    small.save_pretrained(tmp_path / "v000001")
    with pytest.raises(UnusableSnapshot, match=re.escape("has non-finite weights: ['model.model.embed_tokens.weight']")):
        load_snapshot(tmp_path / "v000001", 1, "small_lm", Target(model))
