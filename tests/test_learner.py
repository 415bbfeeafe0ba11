"""The learner, publishing and rollback (invariants 2 and 3), on small random models."""

import json
import re

import pytest
import torch

from aurora_rl.algos import AlgoConfig
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.online.learner import Learner, LearnerConfig
from aurora_rl.online.learning import OnlineLearning
from aurora_rl.runtime.config import DecodeSection
from aurora_rl.online.publish import LivePolicy
from aurora_rl.online.snapshots import SnapshotStore
from conftest import make_llama


@pytest.fixture(scope="module")
def target():
    model = make_llama(97, 64, 2, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(5)  # a peaked target, so a draft can learn it quickly
    return Target(model)


def fresh_draft(version=0):
    return SmallLMDrafter(make_llama(97, 32, 1, seed=7), version=version)


def serve(target, live, buffer, learner, requests, start=0, observe=None, train_every=8):
    """Decode ``requests`` prompts; traces go to ``observe`` (default: the buffer), and the
    learner (if any) trains every ``train_every`` steps."""
    decoder = SpeculativeDecoder(target, live, DecodeConfig(k=4), [1])
    steps, taus, versions = [0], [], []

    def on_trace(trace):
        steps[0] += 1
        versions.append(trace.draft_version)
        (observe or buffer.add)(trace)
        if learner and steps[0] % train_every == 0:
            learner.train_round()

    for i in range(start, start + requests):
        prompt = torch.randint(3, 97, (8,), generator=torch.Generator().manual_seed(i))
        gen = decoder.generate(prompt, 32, request_id=f"r{i}", keep_traces=False, on_trace=on_trace)
        taus.append(gen.accepted_length)
    return taus, versions


def test_online_learning_publishes_better_versions(target):
    live = LivePolicy(fresh_draft())
    config = LearnerConfig(train_every=8, updates_per_round=2, publish_every=8, min_traces=32)
    buffer = config.make_buffer()
    # prompts here are uniform random tokens: a context language-model term would fit noise
    learner = Learner(live, buffer, AlgoConfig(lr=3e-3, context_lm_coef=0.0), config)
    untrained = live.current
    _, versions = serve(target, live, buffer, learner, requests=40)
    assert learner.published >= 3 and live.version >= 3
    # judged on the same 10 unseen prompts: the published draft beats the one it started from
    held_out_before, _ = serve(target, LivePolicy(untrained), buffer, None, requests=10, start=1000)
    held_out_after, _ = serve(target, LivePolicy(live.current), buffer, None, requests=10, start=1000)
    assert sum(held_out_after) / 10 > sum(held_out_before) / 10 + 0.5
    # every trace names the version that proposed it, and versions only move forward
    assert versions == sorted(versions) and versions[0] == 0 and versions[-1] == live.version


def test_versions_are_never_reused_even_after_rollback():
    live = LivePolicy(fresh_draft())
    live.publish(fresh_draft(version=1))
    live.rollback()
    assert live.version == 0 and live.next_version == 2
    with pytest.raises(ValueError, match=re.escape("cannot publish version 1: version 1 was already published")):
        live.publish(fresh_draft(version=1))
    live.publish(fresh_draft(version=2))
    assert live.version == 2


def test_a_published_version_is_a_private_copy(target):
    """No torn weights: training the learner's copy never touches the live version."""
    live = LivePolicy(fresh_draft())
    config = LearnerConfig(min_traces=16, publish_every=1000, gate=False)
    buffer = config.make_buffer()
    learner = Learner(live, buffer, AlgoConfig(lr=1e-2), config)
    before = {k: v.clone() for k, v in live.current.model.state_dict().items()}
    serve(target, live, buffer, None, requests=6)
    learner.train_round(10)
    assert learner.updates == 10
    for name, value in live.current.model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_nan_update_is_rejected_and_weights_stay_finite(target):
    live = LivePolicy(fresh_draft())
    config = LearnerConfig(min_traces=16, publish_every=1, gate=False)
    buffer = config.make_buffer()
    learner = Learner(live, buffer, AlgoConfig(), config)
    serve(target, live, buffer, None, requests=6)
    trainable = learner.algorithm.policy.model
    with torch.no_grad():
        trainable.lm_head.weight[0, 0] = float("nan")
    metrics = learner.train_round(1)
    assert metrics[0]["update/rejected"] == 1.0
    assert learner.algorithm.last_rejection == "non-finite loss"
    assert learner.published == 0 and live.version == 0  # nothing reached serving
    assert learner.state == "idle"  # a rejected update is not a crash: learning goes on


def test_a_crashed_learner_stops_learning_but_not_decoding(target, monkeypatch):
    live = LivePolicy(fresh_draft())
    config = LearnerConfig(train_every=4, min_traces=8)
    buffer = config.make_buffer()
    learner = Learner(live, buffer, AlgoConfig(), config)

    def explode(batch):
        raise RuntimeError("simulated learner bug")

    monkeypatch.setattr(learner.algorithm, "update", explode)
    taus, _ = serve(target, live, buffer, learner, requests=5)
    assert len(taus) == 5  # every request was served
    assert learner.state == "crashed" and "simulated learner bug" in learner.error
    assert learner.train_round() == []  # a crashed learner does nothing more


def test_async_learner_runs_beside_decoding_and_stops_cleanly(target):
    live = LivePolicy(fresh_draft())
    config = LearnerConfig(mode="async", publish_every=4, min_traces=16, gate=False)
    buffer = config.make_buffer()
    learner = Learner(live, buffer, AlgoConfig(lr=3e-3), config)
    learner.start()
    try:
        assert learner.state == "running"
        serve(target, live, buffer, None, requests=30)
    finally:
        learner.stop()
    assert learner.state == "idle" and learner.updates > 0


def test_a_worse_version_is_rolled_back_after_judging_it_on_its_own_live_traces(target):
    live = LivePolicy(SmallLMDrafter(target.model))  # the target drafting itself: accepts everything
    config = LearnerConfig(min_traces=10**6, rollback_window=20, rollback_drop=0.1)  # never trains
    restored = []
    learner = Learner(live, config.make_buffer(), AlgoConfig(), config, on_rollback=lambda bad, good: restored.append((bad, good.version)))
    serve(target, live, learner.buffer, None, requests=3, observe=learner.observe)
    live.publish(fresh_draft(version=1))  # a much worse draft goes live
    serve(target, live, learner.buffer, None, requests=4, start=3, observe=learner.observe)
    assert live.version == 1  # decoding never judges: the learner does, between rounds
    learner.train_round()
    (judgement,) = learner.monitor.judgements
    assert judgement.rolled_back and judgement.score < judgement.previous_score
    assert restored == [(1, 0)] and live.version == 0 and live.rollbacks == 1
    assert learner.monitor.rolled_back == [1]


def test_a_traffic_shift_alone_does_not_roll_back_an_equal_version(target):
    """Live acceptance falls when traffic changes whatever the draft; judging both versions
    on the same traces keeps that from being blamed on the new version."""
    good = SmallLMDrafter(make_llama(97, 32, 1, seed=7))
    live = LivePolicy(good)
    config = LearnerConfig(min_traces=10**6, rollback_window=20, rollback_drop=0.1)
    learner = Learner(live, config.make_buffer(), AlgoConfig(), config)
    serve(target, live, learner.buffer, None, requests=4, observe=learner.observe)
    live.publish(good.clone(version=1))  # the same weights under a new version number
    serve(target, live, learner.buffer, None, requests=4, start=50, observe=learner.observe)  # other prompts
    learner.train_round()
    (judgement,) = learner.monitor.judgements
    assert not judgement.rolled_back and judgement.score == judgement.previous_score
    assert live.version == 1 and live.rollbacks == 0


def test_snapshot_store_writes_complete_versions_atomically(tmp_path):
    store = SnapshotStore(tmp_path, keep=2)
    for version in range(4):
        store.save(fresh_draft(version=version))
    assert store.latest_version() == 3
    assert sorted(p.name for p in tmp_path.glob("v*")) == ["v000002", "v000003"]
    assert json.loads((tmp_path / "LATEST.json").read_text())["path"] == "v000003"
    loaded = SmallLMDrafter.from_pretrained(store.latest_path())
    assert loaded.version == 3
    assert not list(tmp_path.glob(".*tmp*"))  # no half-written leftovers


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "threads"}, "learner.mode must be 'sync' or 'async', got 'threads'"),
        ({"publish_every": 0}, "learner.publish_every must be >= 1, got 0"),
        ({"rollback_drop": 1.5}, "learner.rollback_drop must be in [0, 1), got 1.5"),
        # the buffer's own checks, under the learner's keys
        ({"buffer_capacity": 0}, "learner.buffer_capacity must be >= 1, got 0"),
        ({"staleness_policy": "fifo"}, "learner.staleness_policy must be 'drop' or 'downweight', got 'fifo'"),
        ({"max_staleness": -1}, "learner.max_staleness must be >= 0 or None, got -1"),
        ({"heldout_fraction": 1.0}, "learner.heldout_fraction must be in [0, 1), got 1.0"),
        ({"gate_traces": 0}, "learner.gate_traces must be >= 1, got 0"),
    ],
)
def test_learner_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LearnerConfig(**kwargs)


def test_only_a_consumer_turns_on_the_target_distributions_in_traces():
    decode = DecodeSection(temperature=0.5).to_decode_config()
    assert decode.record_target_probs is False  # a static arm, learn=false, a follower: no softmax and copy
    live = LivePolicy(SmallLMDrafter(make_llama(vocab=64, hidden=16, layers=1, seed=0)))
    learning = OnlineLearning(live, AlgoConfig(name="pg"), LearnerConfig(), pad_id=0, seed=0)
    learned = learning.decode_config(decode)
    assert learned.record_target_probs is True and learned.explore_temperature == AlgoConfig(name="pg").explore_temperature
    assert learned.sampling == decode.sampling
