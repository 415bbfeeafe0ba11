"""The decode engine on small random models, and the text side (detokenisation, chat
formatting): interleaved decoding equals decoding alone, limits and cancellation behave."""

import copy
import queue
import re

import pytest
import torch

from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.core.spec import DecodeConfig, speculate_batch
from aurora_rl.core.target import Target
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.runtime.chat import PLAIN_STOP, format_chat, plain_transcript
from aurora_rl.runtime.config import EngineSection
from aurora_rl.runtime.detokenize import IncrementalDetokenizer
from aurora_rl.runtime.engine import SHUTTING_DOWN, Engine, EngineClosed, EngineFull, GenerationRequest
from conftest import make_llama, perturbed_copy
from serving_harness import tiny

EOS = 1


@pytest.fixture(scope="module")
def models(random_target_model):
    return Target(random_target_model), SmallLMDrafter(perturbed_copy(random_target_model, scale=0.1, seed=5))


def prompts(count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(3, 97, (int(n),), generator=gen).tolist()) for n in torch.randint(2, 12, (count,), generator=gen)]


def submit_all(engine, requests):
    """Submit all; each request's outputs arrive on its own queue."""
    outputs = {r.request_id: queue.Queue() for r in requests}
    for r in requests:
        engine.submit(r, outputs[r.request_id].put)
    return outputs


def run(engine, requests):
    """Submit all, collect every request's outputs (engine running)."""
    return gather(submit_all(engine, requests))


def drive(engine, requests):
    """Submit all, then step the engine on this thread until it is idle (no worker, no race:
    every request is queued before the first step, so batch sizes are deterministic)."""
    outputs = submit_all(engine, requests)
    steps = 0
    while engine.busy:
        assert engine.step() >= 1
        steps += 1
    assert engine.step() == 0 and not engine.busy
    return gather(outputs)


def gather(outputs):
    """Every request's outputs, up to and including its final one."""
    collected = {}
    for request_id, q in outputs.items():
        items = [q.get(timeout=300)]
        while not items[-1].finished:
            items.append(q.get(timeout=300))
        collected[request_id] = items
    return collected


def tokens(items):
    return [t for output in items for t in output.token_ids]


def recording_step():
    """An engine ``step`` (the public seam) that records the rows of every batched step."""
    sizes = []

    def recording(policy, target, states, configs, generators):
        sizes.append(len(states))
        return speculate_batch(policy, target, states, configs, generators)

    return recording, sizes


@pytest.mark.parametrize("max_batch", [1, 3])
def test_interleaved_requests_each_equal_decoding_alone(models, max_batch):
    target, draft = models
    section = EngineSection(max_active=3, max_batch=max_batch, keep_request_traces=16)
    step, batch_sizes = recording_step()
    engine = Engine(target, draft, DecodeConfig(k=3), [EOS], section, step=step)
    order = []
    engine.add_trace_listener(lambda trace: order.append(trace.request_id))
    requests = [GenerationRequest(f"r{i}", p, 24) for i, p in enumerate(prompts(7))]
    collected = drive(engine, requests)
    alone = SpeculativeDecoder(target, draft, DecodeConfig(k=3), [EOS])
    for r in requests:
        reference = target.model.generate(torch.tensor([r.prompt_ids]), max_new_tokens=24, do_sample=False,
                                          eos_token_id=EOS, pad_token_id=2)[0, len(r.prompt_ids):]  # fmt: skip
        assert tokens(collected[r.request_id]) == reference.tolist() == alone.generate(r.prompt_ids, 24).tokens.tolist()
        stats = collected[r.request_id][-1].stats
        assert stats.finish_reason in ("eos", "length") and stats.completion_tokens == len(reference)
        assert stats.verify_steps == len(engine.traces_of(r.request_id))
    switches = sum(a != b for a, b in zip(order, order[1:]))
    assert switches > len(requests) * 2  # round-robin: steps of different requests alternate
    total_steps = sum(len(engine.traces_of(r.request_id)) for r in requests)
    if max_batch == 1:
        # one code path for 1..N rows: a lone request's step is a one-row batched step
        assert batch_sizes == [1] * total_steps and engine.verify_forwards == total_steps
    else:
        assert max(batch_sizes) == 3
        assert engine.verify_forwards < total_steps / 2  # most steps shared a forward pass


def test_seeded_sampling_equals_decoding_alone_with_the_same_seed(models):
    """Batched with whichever requests happen to be in flight, a seeded request still
    draws exactly what it draws alone."""
    target, draft = models
    sampling = SamplingParams(temperature=1.0, top_k=20)
    step, batch_sizes = recording_step()
    engine = Engine(target, draft, DecodeConfig(k=3), [EOS], EngineSection(max_active=4), step=step)
    requests = [GenerationRequest(f"s{i}", p, 20, sampling, seed=100 + i) for i, p in enumerate(prompts(5, seed=1))]
    collected = drive(engine, requests)
    alone = SpeculativeDecoder(target, draft, DecodeConfig(k=3, sampling=sampling), [EOS])
    for r in requests:
        expected = alone.generate(r.prompt_ids, 20, torch.Generator().manual_seed(r.seed)).tokens.tolist()
        assert tokens(collected[r.request_id]) == expected
    assert batch_sizes[0] == 4  # all queued before the first step: it takes max_active rows


def test_the_worker_thread_and_a_caller_stepping_the_engine_produce_the_same_outputs(models):
    """``Engine.step()`` is what the worker loops on: driving it by hand gives the same
    tokens, step counts and traces; while the worker runs, stepping by hand is refused.
    One request at a time (max_active=1), so the worker's timing cannot change who is
    batched with whom."""
    target, draft = models
    requests = [GenerationRequest(f"w{i}", p, 16) for i, p in enumerate(prompts(4, seed=2))]
    by_hand = Engine(target, draft, DecodeConfig(k=3), [EOS], EngineSection(max_active=1, keep_request_traces=8))
    collected_by_hand = drive(by_hand, requests)
    threaded = Engine(target, draft, DecodeConfig(k=3), [EOS], EngineSection(max_active=1, keep_request_traces=8))
    threaded.start()
    try:
        with pytest.raises(RuntimeError, match=r"the engine's worker thread is stepping it \(start\(\) was called\)"):
            threaded.step()
        collected_threaded = run(threaded, requests)
    finally:
        threaded.close()
    for r in requests:
        assert tokens(collected_by_hand[r.request_id]) == tokens(collected_threaded[r.request_id])
        hand_stats, thread_stats = collected_by_hand[r.request_id][-1].stats, collected_threaded[r.request_id][-1].stats
        assert hand_stats.verify_steps == thread_stats.verify_steps and hand_stats.accepted_tokens == thread_stats.accepted_tokens
        assert [t.proposed.tolist() for t in by_hand.traces_of(r.request_id)] == [
            t.proposed.tolist() for t in threaded.traces_of(r.request_id)
        ]


def test_a_full_queue_refuses_and_closing_cancels_what_waits(models):
    target, draft = models
    engine = Engine(target, draft, DecodeConfig(k=2), [EOS], EngineSection(max_queue=2))  # not started
    got = queue.Queue()
    for i in range(2):
        engine.submit(GenerationRequest(f"q{i}", (5, 6), 8), got.put)
    with pytest.raises(EngineFull, match=re.escape("2 requests are already waiting (engine.max_queue); retry later")):
        engine.submit(GenerationRequest("q2", (5, 6), 8), got.put)
    assert engine.queue_depth == 2
    engine.close()
    finals = [got.get_nowait() for _ in range(2)]
    assert [(o.stats.finish_reason, o.error, o.token_ids) for o in finals] == [("cancelled", SHUTTING_DOWN, ())] * 2
    with pytest.raises(EngineClosed):
        engine.submit(GenerationRequest("late", (5, 6), 8), got.put)


def test_closing_drains_requests_in_flight(models):
    target, draft = models
    engine = Engine(target, draft, DecodeConfig(k=2), [EOS], EngineSection(max_active=2))
    got = {f"d{i}": queue.Queue() for i in range(4)}
    engine.start()
    for i, p in enumerate(prompts(4, seed=2)):
        engine.submit(GenerationRequest(f"d{i}", p, 16), got[f"d{i}"].put)
    engine.close(drain_seconds=60)
    for q in got.values():
        items = list(q.queue)
        assert items[-1].stats.finish_reason in ("eos", "length") and all(o.error is None for o in items)


def test_cancel_stops_a_request_and_a_failing_step_fails_only_its_request(models):
    target, draft = models

    def batched_step(policy, target, states, configs, generators):  # fails the batch boom is in, and boom alone
        if any(state.request_id == "boom" and state.steps == 1 for state in states):
            raise RuntimeError("simulated kernel failure")
        return speculate_batch(policy, target, states, configs, generators)

    engine = Engine(target, draft, DecodeConfig(k=2), [EOS], EngineSection(max_active=4), step=batched_step)
    engine.add_trace_listener(lambda trace: 1 / 0)  # a broken listener must not stop decoding either
    cancelled_q, stopped_q, boom_q, fine_q = queue.Queue(), queue.Queue(), queue.Queue(), queue.Queue()
    handle = engine.submit(GenerationRequest("cancelled", (5, 6, 7), 200), cancelled_q.put)
    engine.submit(GenerationRequest("stopped", (5, 6), 200), stopped_q.put).cancel("stop")  # the caller saw a stop string
    engine.submit(GenerationRequest("boom", (5, 6, 7), 32), boom_q.put)
    engine.submit(GenerationRequest("fine", (8, 9), 32), fine_q.put)
    engine.start()
    cancelled_q.get(timeout=300)  # it has started
    handle.cancel()
    try:
        queues = [("cancelled", cancelled_q), ("stopped", stopped_q), ("boom", boom_q), ("fine", fine_q)]
        outputs = {name: [q.get(timeout=300)] for name, q in queues}
        for name, q in queues:
            while not outputs[name][-1].finished:
                outputs[name].append(q.get(timeout=300))
    finally:
        engine.close()
    assert outputs["cancelled"][-1].stats.finish_reason == "cancelled"
    assert outputs["cancelled"][-1].stats.completion_tokens < 200
    assert (outputs["stopped"][-1].stats.finish_reason, outputs["stopped"][-1].error) == ("stop", None)
    assert outputs["boom"][-1].stats.finish_reason == "error"
    assert outputs["boom"][-1].error == "decoding failed: RuntimeError: simulated kernel failure"
    assert outputs["fine"][-1].stats.finish_reason in ("eos", "length") and outputs["fine"][-1].error is None
    # "fine" shared the failed batched step with "boom"; retried alone, it lost nothing
    expected = SpeculativeDecoder(target, draft, DecodeConfig(k=2), [EOS]).generate((8, 9), 32).tokens.tolist()
    assert tokens(outputs["fine"]) == expected


def collect(engine, requests):
    engine.start()
    try:
        return run(engine, requests)
    finally:
        engine.close()


class FailingCommits:
    """A drafter (the public DraftPolicy seam) whose sessions on ``bad_prompt`` raise at
    their ``fail_at``-th commit: a row failing while the batched step settles it."""

    def __init__(self, drafter, bad_prompt, fail_at: int) -> None:
        self.drafter, self.bad_prompt, self.fail_at = drafter, list(bad_prompt), fail_at
        self.version, self.vocab_size = drafter.version, drafter.vocab_size
        self.uses_target_features = drafter.uses_target_features

    def start(self, context_ids, target_hidden=None):
        session = self.drafter.start(context_ids, target_hidden)
        if context_ids.tolist() != self.bad_prompt:
            return session
        commits, commit = [0], session.commit

        def failing_commit(*args):
            commits[0] += 1
            if commits[0] == self.fail_at:
                raise FloatingPointError("simulated NaN distribution")
            return commit(*args)

        session.commit = failing_commit
        return session


def test_a_row_failing_inside_a_batched_step_fails_alone(models):
    """The batch's forward ran and the other rows settled: they stream on, losslessly."""
    target, draft = models
    requests = [GenerationRequest(name, p, 24) for name, p in zip(["a", "bad", "b"], prompts(3, seed=4))]
    failing = FailingCommits(draft, requests[1].prompt_ids, fail_at=3)
    step, sizes = recording_step()
    engine = Engine(target, failing, DecodeConfig(k=3), [EOS], EngineSection(max_active=4), step=step)
    collected = drive(engine, requests)  # no worker: all three are in every step until "bad" fails
    # the third commit of "bad" came in the third step, a batched one of all three; it ran without "bad" after
    assert sizes[:3] == [3, 3, 3] and max(sizes[3:]) <= 2
    assert collected["bad"][-1].error == "decoding failed: FloatingPointError: simulated NaN distribution"
    assert collected["bad"][-1].stats.finish_reason == "error"
    alone = SpeculativeDecoder(target, draft, DecodeConfig(k=3), [EOS])
    for r in requests:
        if r.request_id != "bad":
            assert tokens(collected[r.request_id]) == alone.generate(r.prompt_ids, 24).tokens.tolist()
            assert collected[r.request_id][-1].error is None


def test_a_failed_batch_is_retried_with_the_same_seeded_draws(models):
    """The failed step already drew proposals with each request's generator; the retry
    rewinds them, so seeded sampled outputs still equal decoding alone."""
    target, draft = models
    failures = []

    def failing_once(policy, target, states, configs, generators):
        if not failures:
            failures.append(1)
            for generator in generators:  # the draws a step makes before it fails
                torch.rand(3, generator=generator)
            raise RuntimeError("simulated out of memory")
        return speculate_batch(policy, target, states, configs, generators)

    sampling = SamplingParams(temperature=1.0)
    engine = Engine(target, draft, DecodeConfig(k=3), [EOS], EngineSection(max_active=4), step=failing_once)
    requests = [GenerationRequest(f"s{i}", p, 20, sampling, seed=7 + i) for i, p in enumerate(prompts(4, seed=6))]
    outputs = submit_all(engine, requests)  # queued before the worker starts: the first step batches all 4
    engine.start()
    try:
        collected = gather(outputs)
    finally:
        engine.close()
    assert failures == [1]
    alone = SpeculativeDecoder(target, draft, DecodeConfig(k=3, sampling=sampling), [EOS])
    for r in requests:
        expected = alone.generate(r.prompt_ids, 20, torch.Generator().manual_seed(r.seed)).tokens.tolist()
        assert tokens(collected[r.request_id]) == expected and collected[r.request_id][-1].error is None


class UnreadableTrace:
    """What a buggy step might return: the engine's bookkeeping fails reading it."""

    @property
    def num_proposed(self):
        raise KeyError("simulated bookkeeping bug")


def test_an_engine_bug_fails_that_rounds_requests_and_the_worker_keeps_serving(models):
    target, draft = models

    def buggy_step(policy, target, states, configs, generators):
        traces = speculate_batch(policy, target, states, configs, generators)
        return [UnreadableTrace() if state.request_id == "unlucky" else trace for state, trace in zip(states, traces)]

    engine = Engine(target, draft, DecodeConfig(k=2), [EOS], EngineSection(max_active=1), step=buggy_step)
    collected = collect(engine, [GenerationRequest("unlucky", (5, 6), 8), GenerationRequest("fine", (8, 9), 8)])
    assert collected["unlucky"][-1].error == "decoding failed: KeyError: 'simulated bookkeeping bug'"
    assert len(collected["unlucky"]) == 1  # one final output, nothing after it
    expected = SpeculativeDecoder(target, draft, DecodeConfig(k=2), [EOS]).generate((8, 9), 8).tokens.tolist()
    assert tokens(collected["fine"]) == expected and collected["fine"][-1].error is None


def test_a_mismatched_draft_is_refused_at_construction(models):
    target, _ = models
    with pytest.raises(ValueError, match="draft vocabulary size 50 does not match target vocabulary size 97"):
        Engine(target, SmallLMDrafter(make_llama(50, 16, 1, seed=0)), DecodeConfig(), [EOS])


# --- text ---------------------------------------------------------------------------------


def test_incremental_text_equals_the_full_decode_even_mid_character():
    tokenizer, _ = tiny()
    text = "naïve café: 温度 ✓ — done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode(ids[:i]) for i in range(1, len(ids)))  # some token splits a character
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push([t]) for t in ids] + [detok.flush()]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("stop", ["café", ": 温", "done", "absent"])
def test_stop_strings_cut_the_text_and_are_never_streamed(stop):
    tokenizer, _ = tiny()
    text = "naïve café: 温度 ✓ — done"
    detok = IncrementalDetokenizer(tokenizer, stop=[stop, "zzz"])
    deltas = [detok.push([t]) for t in tokenizer(text, add_special_tokens=False)["input_ids"]] + [detok.flush()]
    expected = text.split(stop)[0]
    assert "".join(deltas) == detok.text == expected
    assert detok.stopped == (stop in text)


def test_plain_chat_transcript_matches_the_world_chat_format():
    tokenizer, _ = tiny()
    messages = [("system", "Answer clearly and briefly."), ("user", "What is latency?"),
                ("assistant", "The time between a request and its response."), ("user", "An example?")]  # fmt: skip
    transcript = ("System: Answer clearly and briefly.\nUser: What is latency?\n"
                  "Assistant: The time between a request and its response.\nUser: An example?\nAssistant:")  # fmt: skip
    assert plain_transcript(messages) == transcript
    prompt = format_chat(tokenizer, messages)
    assert prompt.token_ids == tokenizer(transcript)["input_ids"] and prompt.stop == PLAIN_STOP


def test_a_tokenizer_chat_template_is_used_when_present():
    tokenizer = copy.deepcopy(tiny()[0])
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    prompt = format_chat(tokenizer, [("user", "hi")])
    assert tokenizer.decode(prompt.token_ids) == "<user>hi\n<assistant>" and prompt.stop == ()
