"""Batched decoding (``speculate_batch``, ``run_cached_ragged``) equals the one-sequence path.

The one-sequence path is pinned to the target's own output elsewhere (test_lossless); here
every row of a ragged batch must reproduce it token for token: greedy, sampled under a seed,
with mixed decoding rules per row, and with rows finishing at different steps.
"""

import pytest
import torch
import transformers

from aurora_rl.core.draft import DraftAsk, propose_autoregressively_batched
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.ragged import batchable, run_cached_ragged
from aurora_rl.core.sampling import GREEDY, SamplingParams
from aurora_rl.core.spec import DecodeConfig, speculate_batch, speculate_step, start_decode
from aurora_rl.core.target import RollbackCache, Target, run_cached
from aurora_rl.policies.eagle import EagleDrafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.policies.suffix import SuffixConfig, SuffixDrafter
from conftest import make_llama, perturbed_copy

EOS = 1


def prompts_of_lengths(lengths, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen) for n in lengths]


def decode_alone(policy, target, prompt, config, seed, max_new_tokens):
    state = start_decode(target, prompt, max_new_tokens, [EOS], max_k=config.k)
    generator = torch.Generator().manual_seed(seed)
    traces = []
    while not state.finished:
        traces.append(speculate_step(policy, target, state, config, generator))
    return state.generated.tolist(), traces


def decode_together(policy, target, prompts, configs, seeds, max_new_tokens):
    """All prompts in lockstep; a row leaves the batch when it finishes."""
    states = [start_decode(target, p, max_new_tokens, [EOS], max_k=c.k) for p, c in zip(prompts, configs)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    traces = [[] for _ in prompts]
    batch_sizes = []
    while live := [row for row, state in enumerate(states) if not state.finished]:
        batch_sizes.append(len(live))
        stepped = speculate_batch(
            policy, target, [states[r] for r in live], [configs[r] for r in live], [generators[r] for r in live]
        )
        for row, trace in zip(live, stepped):
            traces[row].append(trace)
    return [s.generated.tolist() for s in states], traces, batch_sizes


def assert_same_traces(batched, alone):
    assert len(batched) == len(alone)
    for ours, theirs in zip(batched, alone):
        assert ours.proposed.tolist() == theirs.proposed.tolist()
        assert ours.accept_mask.tolist() == theirs.accept_mask.tolist()
        assert ours.emitted.tolist() == theirs.emitted.tolist()
        assert ours.draft_version == theirs.draft_version
        torch.testing.assert_close(ours.draft_logprobs, theirs.draft_logprobs, atol=1e-5, rtol=1e-4)


# --- the ragged forward -------------------------------------------------------------------


def test_ragged_forward_equals_one_forward_per_row(random_target_model):
    model = random_target_model
    prompts = prompts_of_lengths([0, 1, 5, 40, 17], 97, seed=0)
    feeds = prompts_of_lengths([3, 1, 5, 2, 4], 97, seed=1)
    alone, together = [RollbackCache(model) for _ in prompts], [RollbackCache(model) for _ in prompts]
    for cache, prompt in zip(alone + together, prompts + prompts):
        if len(prompt):
            run_cached(model, cache, prompt)
    for step in range(2):  # the second step runs on caches the first one extended
        expected = [run_cached(model, c, f, (0, -1)) for c, f in zip(alone, feeds)]
        got = run_cached_ragged(model, together, feeds, (0, -1))
        for ours, theirs in zip(got, expected):
            torch.testing.assert_close(ours.logits, theirs.logits, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(ours.hidden, theirs.hidden, atol=2e-5, rtol=1e-4)
        assert [len(c) for c in together] == [len(c) for c in alone]
        feeds = [f[:1] for f in feeds]


ARCHITECTURES = {  # absolute positions (GPT-2, OPT), rotary with GQA and biases (Qwen2), parallel blocks (NeoX)
    "gpt2": lambda: transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                            bos_token_id=0, eos_token_id=EOS),  # fmt: skip
    "opt": lambda: transformers.OPTConfig(vocab_size=97, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                          num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128),  # fmt: skip
    "qwen2": lambda: transformers.Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=1),  # fmt: skip
    "gpt_neox": lambda: transformers.GPTNeoXConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=2),  # fmt: skip
}


def model_from(config):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_ragged_forward_works_across_architectures(name):
    model = model_from(ARCHITECTURES[name]())
    prompts = prompts_of_lengths([1, 5, 20, 12], 97, seed=0)
    feeds = prompts_of_lengths([3, 1, 5, 2], 97, seed=1)
    alone, together = [RollbackCache(model) for _ in prompts], [RollbackCache(model) for _ in prompts]
    for cache, prompt in zip(alone + together, prompts + prompts):
        run_cached(model, cache, prompt)
    assert batchable(together)
    expected = [run_cached(model, c, f) for c, f in zip(alone, feeds)]
    for ours, theirs in zip(run_cached_ragged(model, together, feeds), expected):
        torch.testing.assert_close(ours.logits, theirs.logits, atol=2e-5, rtol=1e-4)


SLIDING = {  # every layer windowed (Mistral); windowed and full layers alternating (Gemma 2)
    "mistral": lambda: transformers.MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=2, num_key_value_heads=1, sliding_window=8),  # fmt: skip
    "gemma2": lambda: transformers.Gemma2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                                sliding_window=8),  # fmt: skip
}


@pytest.mark.parametrize("name", SLIDING)
def test_sliding_window_targets_roll_back_past_the_window_and_stay_lossless(name):
    """Sliding-window caches are not plain per-position K/V: they are verified row by row,
    and rolling back after the window is full needs past recording (RollbackCache)."""
    model = model_from(SLIDING[name]())
    target = Target(model)
    assert not batchable([target.new_cache()])
    prompts = prompts_of_lengths([3, 14], 97, seed=2)
    draft = SmallLMDrafter(make_llama(97, 32, 1, seed=11))
    outputs, _, _ = decode_together(draft, target, prompts, [DecodeConfig(k=3)] * 2, range(2), 20)
    for prompt, output in zip(prompts, outputs):
        reference = model.generate(prompt[None], max_new_tokens=20, do_sample=False, eos_token_id=EOS, pad_token_id=2)
        assert output == reference[0, len(prompt) :].tolist()


def test_rows_near_the_end_of_learned_position_embeddings(random_target_model):
    """GPT-2 knows 32 positions. A row about to reach the 32nd, batched with rows that feed
    more tokens (a fresh draft session catching up on a whole prompt, a wider verify), must
    not be handed padding positions past its own end."""
    make = lambda seed: transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=2, n_positions=32,  # noqa: E731
                                                bos_token_id=0, eos_token_id=EOS)  # fmt: skip
    target_model, draft_model = model_from(make(0)), model_from(make(1))
    target, draft = Target(target_model), SmallLMDrafter(draft_model)
    prompts = prompts_of_lengths([29, 3, 12], 97, seed=8)
    budgets = [3, 20, 16]
    states = [start_decode(target, p, n, [EOS], max_k=4) for p, n in zip(prompts, budgets)]
    config = DecodeConfig(k=4)
    while live := [s for s in states if not s.finished]:
        speculate_batch(draft, target, live, [config] * len(live), [None] * len(live))
    for prompt, budget, state in zip(prompts, budgets, states):
        reference = target_model.generate(prompt[None], max_new_tokens=budget, do_sample=False, eos_token_id=EOS,
                                          pad_token_id=2)  # fmt: skip
        assert state.generated.tolist() == reference[0, len(prompt) :].tolist()


def test_ragged_forward_refuses_bad_rows(random_target_model):
    caches = [RollbackCache(random_target_model) for _ in range(2)]
    with pytest.raises(ValueError, match="2 caches but 1 feeds: give one feed per cache"):
        run_cached_ragged(random_target_model, caches, [[5]])
    with pytest.raises(ValueError, match="every row must feed at least one token"):
        run_cached_ragged(random_target_model, caches, [[5], []])


# --- whole requests in lockstep -----------------------------------------------------------


@pytest.fixture(scope="module")
def agreeing_draft(random_target_model):
    return SmallLMDrafter(perturbed_copy(random_target_model, scale=0.1, seed=5))


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_batch_equals_target_generate_and_the_one_sequence_path(random_target_model, agreeing_draft, k):
    model, target = random_target_model, Target(random_target_model)
    prompts = prompts_of_lengths([1, 3, 9, 20, 6, 14], 97, seed=k)
    config = DecodeConfig(k=k)
    outputs, traces, batch_sizes = decode_together(agreeing_draft, target, prompts, [config] * 6, range(6), 40)
    for prompt, output, row_traces in zip(prompts, outputs, traces):
        reference = model.generate(prompt[None], max_new_tokens=40, do_sample=False, eos_token_id=EOS, pad_token_id=2)
        assert output == reference[0, len(prompt) :].tolist()
        _, alone = decode_alone(agreeing_draft, target, prompt, config, 0, 40)
        assert_same_traces(row_traces, alone)
    assert batch_sizes[0] == 6 and sum(t.num_accepted for row in traces for t in row) > 0


def test_sampled_batch_with_mixed_rules_equals_each_row_alone(random_target_model, agreeing_draft):
    """Per-row generators, temperatures, lookaheads and early stops: each row's seeded
    output equals its output decoded alone (whose distribution test_lossless pins)."""
    target = Target(random_target_model)
    configs = [
        DecodeConfig(k=3, sampling=SamplingParams(temperature=1.0)),
        DecodeConfig(k=2, sampling=SamplingParams(temperature=0.7, top_k=20)),
        DecodeConfig(k=4),
        DecodeConfig(k=4, explore_temperature=1.3),
        DecodeConfig(k=5, sampling=SamplingParams(temperature=1.2, top_p=0.9), draft_confidence=0.3),
    ]
    prompts = prompts_of_lengths([4, 1, 12, 7, 30], 97, seed=3)
    seeds = [11, 12, 13, 14, 15]
    outputs, traces, _ = decode_together(agreeing_draft, target, prompts, configs, seeds, 32)
    for prompt, config, seed, output, row_traces in zip(prompts, configs, seeds, outputs, traces):
        alone_output, alone_traces = decode_alone(agreeing_draft, target, prompt, config, seed, 32)
        assert output == alone_output
        assert_same_traces(row_traces, alone_traces)


def test_generate_batch_equals_generate_per_row(random_target_model, agreeing_draft):
    """``SpeculativeDecoder.generate_batch`` (the on-policy rounds' decoder): row i, seeded
    ``seed + i``, decodes as ``generate`` does alone with that seed -- greedy and sampled."""
    target = Target(random_target_model)
    prompts = prompts_of_lengths([3, 9, 1, 20], 97, seed=4)
    for config in (DecodeConfig(k=3), DecodeConfig(k=2, sampling=SamplingParams(temperature=0.9))):
        decoder = SpeculativeDecoder(target, agreeing_draft, config, [EOS])
        together = decoder.generate_batch(prompts, 24, seed=40)
        for row, (prompt, ours) in enumerate(zip(prompts, together)):
            alone = decoder.generate(prompt, 24, torch.Generator().manual_seed(40 + row))
            assert ours.tokens.tolist() == alone.tokens.tolist()
            assert (ours.num_steps, ours.accepted, ours.finish_reason) == (alone.num_steps, alone.accepted, alone.finish_reason)
            assert_same_traces(ours.traces, alone.traces)


@pytest.mark.parametrize("layers", [(-1,), (1, -1)], ids=str)
def test_eagle_batch_equals_target_generate(random_target_model, layers):
    """The EAGLE head drafts for all rows per round from each row's own features."""
    model = random_target_model
    target = Target(model, hidden_layers=layers)
    drafter = EagleDrafter.from_target(target, seed=1)
    prompts = prompts_of_lengths([2, 11, 5], 97, seed=7)
    outputs, traces, _ = decode_together(drafter, target, prompts, [DecodeConfig(k=3)] * 3, range(3), 24)
    for prompt, output, row_traces in zip(prompts, outputs, traces):
        reference = model.generate(prompt[None], max_new_tokens=24, do_sample=False, eos_token_id=EOS, pad_token_id=2)
        assert output == reference[0, len(prompt) :].tolist()
        _, alone = decode_alone(drafter, target, prompt, DecodeConfig(k=3), 0, 24)
        assert_same_traces(row_traces, alone)


def test_target_only_batch_equals_target_generate(random_target_model):
    model = random_target_model
    prompts = prompts_of_lengths([1, 8, 3], 97, seed=9)
    outputs, traces, _ = decode_together(None, Target(model), prompts, [DecodeConfig()] * 3, range(3), 20)
    for prompt, output, row_traces in zip(prompts, outputs, traces):
        reference = model.generate(prompt[None], max_new_tokens=20, do_sample=False, eos_token_id=EOS, pad_token_id=2)
        assert output == reference[0, len(prompt) :].tolist()
        assert all(t.num_proposed == 0 for t in row_traces)


def test_rows_with_different_budgets_match_each_row_alone(random_target_model, agreeing_draft):
    """Budgets of 1, 2 and 30 tokens: near the end of its budget a row drafts fewer
    proposals (then none), finishes and leaves, while the others decode exactly as alone."""
    target = Target(random_target_model)
    prompts = prompts_of_lengths([5, 5, 5], 97, seed=4)
    budgets, config = [1, 2, 30], DecodeConfig(k=4)
    states = [start_decode(target, p, n, [EOS], max_k=4) for p, n in zip(prompts, budgets)]
    first = speculate_batch(agreeing_draft, target, states, [config] * 3, [None] * 3)
    assert [t.num_proposed for t in first] == [0, 1, 4]
    assert states[0].finished
    while live := [s for s in states if not s.finished]:
        speculate_batch(agreeing_draft, target, live, [config] * len(live), [None] * len(live))
    for prompt, budget, state in zip(prompts, budgets, states):
        alone, _ = decode_alone(agreeing_draft, target, prompt, config, 0, budget)
        assert state.generated.tolist() == alone


# --- the batched draft loop ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["small_lm", "eagle"])
def test_batched_proposals_equal_each_session_alone(random_target_model, kind):
    prompts = prompts_of_lengths([3, 17, 1, 8], 97, seed=5)
    if kind == "small_lm":
        drafter = SmallLMDrafter(make_llama(97, 32, 1, seed=11))
        start = lambda prompt: drafter.start(prompt)  # noqa: E731
    else:
        target = Target(random_target_model, hidden_layers=(-1,))
        drafter = EagleDrafter.from_target(target, seed=3)

        def start(prompt):
            features = target.forward(target.new_cache(), prompt[:-1]).hidden if len(prompt) > 1 else torch.zeros(0, 64)
            return drafter.start(prompt, features)

    samplings = [SamplingParams(temperature=1.0), GREEDY, SamplingParams(temperature=0.5), SamplingParams(top_k=5)]
    ks, confidences = [4, 2, 5, 3], [None, None, 0.2, None]
    sessions = [start(p) for p in prompts]
    generators = [torch.Generator().manual_seed(s) for s in range(4)]
    for _ in range(2):  # proposing twice without a verdict redrafts from the same place
        together = drafter.propose_batch(sessions, [DraftAsk(*row) for row in zip(ks, samplings, generators, confidences)])
    for row, prompt in enumerate(prompts):
        session, generator = start(prompt), torch.Generator().manual_seed(row)
        for _ in range(2):
            alone = session.propose(ks[row], samplings[row], generator, confidences[row])
        assert together[row].tokens.tolist() == alone.tokens.tolist()
        torch.testing.assert_close(together[row].probs, alone.probs, atol=1e-5, rtol=1e-4)


def test_batched_draft_loop_needs_a_proposal_per_row():
    with pytest.raises(ValueError, match=r"every row needs k >= 1 proposals, got \[2, 0\]"):
        propose_autoregressively_batched(lambda rows, fed: [], [DraftAsk(2, GREEDY), DraftAsk(0, GREEDY)])


def test_a_batch_with_more_rows_than_asks_is_refused_not_cut_short():
    drafter = SuffixDrafter(32, SuffixConfig())
    sessions = [drafter.start(torch.tensor([1, 2, 3])) for _ in range(3)]
    with pytest.raises(ValueError, match=r"^3 sessions and 2 asks: give one DraftAsk per session$"):
        drafter.propose_batch(sessions, [DraftAsk(2, GREEDY)] * 2)
