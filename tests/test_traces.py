"""Traces, batches and the bounded buffer (invariants 2 and 4)."""

import re

import pytest
import torch

from aurora_rl.core.batch import TraceBatch
from aurora_rl.online.buffer import TraceBuffer
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.core.trace import TopKProbs, Trace, store_probs
from aurora_rl.policies.small_lm import SmallLMDrafter
from conftest import perturbed_copy


def fake_trace(request_id="r", version=0, k=3, accepted=1, context=5, vocab=11):
    probs = torch.softmax(torch.randn(k + 1, vocab, generator=torch.Generator().manual_seed(k)), -1)
    mask = torch.arange(k) < accepted
    return Trace(
        request_id=request_id,
        domain="d",
        step=0,
        draft_version=version,
        context_ids=torch.arange(context),
        proposed=torch.arange(k) + 1,
        draft_logprobs=torch.full((k,), -0.5),
        target_probs=probs,
        accept_mask=mask,
        emitted=torch.arange(accepted + 1),
    )


@pytest.fixture(scope="module")
def real_traces(random_target_model):
    draft = SmallLMDrafter(perturbed_copy(random_target_model, 0.1, seed=5), version=3)
    decoder = SpeculativeDecoder(Target(random_target_model), draft, DecodeConfig(k=4, trace_topk=8), [1])
    gen = decoder.generate(torch.tensor([0, 5, 6, 7]), 40, request_id="req", domain="code")
    return gen


def test_traces_reconstruct_the_output_and_name_their_version(real_traces):
    emitted = torch.cat([t.emitted for t in real_traces.traces])
    assert emitted.tolist() == real_traces.tokens.tolist()
    for trace in real_traces.traces:
        assert trace.draft_version == 3 and trace.domain == "code" and trace.request_id == "req"
        # the context of each step is everything emitted before it
        assert trace.context_ids[4:].tolist() == emitted[: trace.context_len - 4].tolist()
        assert trace.emitted[: trace.num_accepted].tolist() == trace.proposed[: trace.num_accepted].tolist()


def test_topk_probs_keep_the_largest_entries_and_renormalise():
    probs = torch.tensor([[0.5, 0.1, 0.3, 0.1]])
    stored = store_probs(probs, topk=2)
    assert isinstance(stored, TopKProbs)
    torch.testing.assert_close(stored.dense(), torch.tensor([[0.625, 0.0, 0.375, 0.0]]))
    torch.testing.assert_close(stored.dense(renormalize=False), torch.tensor([[0.5, 0.0, 0.3, 0.0]]))


def test_batch_pads_left_context_and_right_proposals(real_traces):
    traces = [t for t in real_traces.traces if t.num_proposed][:3]
    batch = TraceBatch.from_traces(traces, max_context=6, pad_id=2)
    assert batch.context_ids.shape == (3, 6) and batch.proposed.shape == (3, 4)
    for row, trace in enumerate(traces):
        kept = min(trace.context_len, 6)
        assert batch.context_ids[row, 6 - kept :].tolist() == trace.context_ids[-kept:].tolist()
        assert batch.context_ids[row, : 6 - kept].tolist() == [2] * (6 - kept)
        assert batch.accept_mask[row].sum() == trace.num_accepted
        torch.testing.assert_close(batch.target_probs[row, :4], trace.target_probs.dense()[:4])
    short = fake_trace(context=2, k=2)
    batch = TraceBatch.from_traces([short, fake_trace(context=5)], pad_id=9)
    assert batch.context_ids[0].tolist() == [9, 9, 9, 0, 1]
    assert batch.context_mask[0].tolist() == [False, False, False, True, True]
    assert batch.valid_mask[0].tolist() == [True, True, False]


def test_batch_refuses_empty_input_and_featureless_traces():
    with pytest.raises(ValueError, match="cannot build a TraceBatch from zero traces"):
        TraceBatch.from_traces([])
    with pytest.raises(ValueError, match=re.escape("with_features=True needs traces recorded with target features")):
        TraceBatch.from_traces([fake_trace()], with_features=True)


def test_buffer_is_bounded_and_counts_what_it_drops():
    buffer = TraceBuffer(capacity=5)
    for i in range(12):
        buffer.add(fake_trace(request_id=f"r{i}"))
    stats = buffer.stats()
    assert len(buffer) == 5 and stats.added == 12 and stats.dropped_full == 7
    assert [t.request_id for t in buffer.recent(5)] == [f"r{i}" for i in range(7, 12)]


def test_buffer_drops_or_downweights_stale_versions():
    dropping = TraceBuffer(capacity=10, max_staleness=1)
    weighting = TraceBuffer(capacity=10, max_staleness=1, policy="downweight", stale_decay=0.5)
    for buffer in (dropping, weighting):
        for version in range(4):
            buffer.add(fake_trace(request_id=f"r{version}", version=version))
        buffer.set_version(3)
    traces, weights = dropping.sample(10, torch.Generator().manual_seed(0))
    assert sorted(t.draft_version for t in traces) == [2, 3] and weights == [1.0, 1.0]
    assert dropping.stats().dropped_stale == 2
    traces, weights = weighting.sample(10, torch.Generator().manual_seed(0))
    by_version = {t.draft_version: w for t, w in zip(traces, weights)}
    assert by_version == {0: 0.125, 1: 0.25, 2: 1.0, 3: 1.0}


def test_buffer_holds_out_whole_requests_deterministically():
    buffer = TraceBuffer(capacity=1000, heldout_fraction=0.3)
    for request in range(200):
        for step in range(3):
            buffer.add(fake_trace(request_id=f"req-{request}"))
    heldout = {t.request_id for t in buffer.heldout()}
    train = {t.request_id for t in buffer.recent(1000)}
    assert not heldout & train
    assert 0.2 < len(heldout) / 200 < 0.4


def test_buffer_skips_traces_without_proposals():
    buffer = TraceBuffer()
    empty = fake_trace(k=0, accepted=0)
    buffer.add(empty)
    assert len(buffer) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"capacity": 0}, "capacity must be >= 1, got 0"),
        ({"policy": "fifo"}, "policy must be 'drop' or 'downweight', got 'fifo'"),
        ({"heldout_fraction": 1.0}, "heldout_fraction must be in [0, 1), got 1.0"),
    ],
)
def test_buffer_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TraceBuffer(**kwargs)


def test_a_decode_that_keeps_no_trace_skips_the_target_probabilities(random_target_model):
    """The softmax and top-K over the target's (k + 1, V) scores feed traces only: a caller
    that reads none does not pay for them, and gets the same tokens."""
    draft = SmallLMDrafter(perturbed_copy(random_target_model, 0.1, seed=5))
    decoder = SpeculativeDecoder(Target(random_target_model), draft, DecodeConfig(k=4), [1])
    prompt = torch.tensor([0, 5, 6, 7])
    state = decoder.start(prompt, 20)
    assert decoder.step(state).target_probs is not None
    assert decoder.step(state, keep_target_probs=False).target_probs is None
    seen = []
    kept = decoder.generate(prompt, 20)
    observed = decoder.generate(prompt, 20, keep_traces=False, on_trace=seen.append)
    bare = decoder.generate(prompt, 20, keep_traces=False)
    assert all(t.target_probs is not None for t in kept.traces + seen) and bare.traces == []
    assert kept.tokens.tolist() == observed.tokens.tolist() == bare.tokens.tolist()
