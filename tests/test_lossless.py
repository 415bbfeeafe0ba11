"""Invariant 1 -- lossless: speculative output is the target's own output.

Greedy: token for token against ``model.generate(do_sample=False)``.
Sampling: the distribution of the first tokens equals the target's, tested exactly.
"""

import copy
import itertools

import pytest
import torch
from scipy import stats

import aurora_rl.core.spec as spec_module
from aurora_rl.core.acceptance import Verdict, rejection_verdict
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.sampling import SamplingParams, probs_from_logits
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.small_lm import SmallLMDrafter
from conftest import make_llama, perturbed_copy

EOS = 1


def seeded_prompts(count, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 24, (count,), generator=gen)
    return [torch.randint(3, vocab, (int(n),), generator=gen) for n in lengths]


@pytest.fixture(scope="module")
def drafts(random_target_model):
    return {
        "agrees_often": SmallLMDrafter(perturbed_copy(random_target_model, scale=0.1, seed=5)),
        "almost_never_agrees": SmallLMDrafter(make_llama(97, 32, 1, seed=11)),
    }


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("draft_name", ["agrees_often", "almost_never_agrees"])
def test_greedy_output_equals_target_generate(random_target_model, drafts, draft_name, k):
    model = random_target_model
    decoder = SpeculativeDecoder(Target(model), drafts[draft_name], DecodeConfig(k=k), [EOS])
    accepted_lengths = []
    for prompt in seeded_prompts(16, model.config.vocab_size, seed=k):
        ours = decoder.generate(prompt, max_new_tokens=48)
        reference = model.generate(
            prompt[None], max_new_tokens=48, do_sample=False, eos_token_id=EOS, pad_token_id=2
        )[0, len(prompt):]
        assert ours.tokens.tolist() == reference.tolist()
        accepted_lengths.append(ours.accepted_length)
    mean_tau = sum(accepted_lengths) / len(accepted_lengths)
    # The two drafts must really exercise both regimes (long accepted runs vs none).
    if draft_name == "agrees_often":
        assert mean_tau > 1.5
    else:
        assert mean_tau < 1.1


# --- sampling ---------------------------------------------------------------------------

VOCAB, NUM_TOKENS, SAMPLES, ALPHA = 4, 3, 6000, 1e-3
DETECTABLE_EFFECT_W = 0.12  # Cohen's w at which the test's power is asserted >= 0.95


def peaked_llama(seed, hidden=16):
    """Random weights give near-uniform outputs; a scaled LM head makes them peaked."""
    model = make_llama(VOCAB, hidden, 1, seed, heads=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def exact_distribution(model, prompt, sampling):
    """P(first NUM_TOKENS tokens) of sampling from ``model`` alone, by enumeration."""
    probs = {}
    for seq in itertools.product(range(VOCAB), repeat=NUM_TOKENS):
        ids = torch.cat([prompt, torch.tensor(seq[:-1], dtype=torch.long)])[None]
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 :]
        dists = probs_from_logits(logits, sampling)
        probs[seq] = float(torch.prod(torch.stack([dists[i, t] for i, t in enumerate(seq)])))
    return probs


def sample_speculatively(target_model, draft_model, prompt, sampling, k=2, samples=SAMPLES):
    policy = SmallLMDrafter(draft_model)
    return sample_batched(Target(target_model), policy, prompt, DecodeConfig(k=k, sampling=sampling), samples)[0]


def sample_batched(target, policy, prompt, config, samples=SAMPLES, rows=500, seed=1234):
    """``samples`` independent speculative samples of ``NUM_TOKENS`` tokens after ``prompt``.

    Decoded ``rows`` requests at a time by ``SpeculativeDecoder.finish_together``, i.e.
    ``speculate_batch`` -- the batched step the engine runs for 1..N rows
    (``tests/test_batched_decode.py`` pins the one-row ``speculate_step`` to it) -- each row
    with its own generator. The prompt's prefill is deterministic, so each row starts from a
    copy of one prefilled state. Returns the counts of each output and every step's trace."""
    decoder = SpeculativeDecoder(target, policy, config)
    start = decoder.start(prompt, NUM_TOKENS)
    counts, traces = {}, []
    for first in range(0, samples, rows):
        states = [copy.deepcopy(start) for _ in range(min(rows, samples - first))]
        generators = [torch.Generator().manual_seed(seed + first + row) for row in range(len(states))]
        row_traces, _ = decoder.finish_together(states, generators)
        traces += [trace for one_row in row_traces for trace in one_row]
        for state in states:
            outcome = tuple(state.generated.tolist())
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts, traces


def chi_square_test(counts, exact):
    """Pearson's test on outcomes with expected count >= 5; the rest pooled into one bin.

    Outcomes the target can never produce (cut by top-k / top-p) must never be observed.
    """
    samples = sum(counts.values())
    impossible = [o for o, prob in exact.items() if prob == 0.0]
    assert sum(counts.get(o, 0) for o in impossible) == 0
    outcomes = sorted((o for o in exact if exact[o] > 0), key=exact.get, reverse=True)
    big = [o for o in outcomes if exact[o] * samples >= 5]
    small = [o for o in outcomes if exact[o] * samples < 5]
    observed = [counts.get(o, 0) for o in big]
    expected = [exact[o] for o in big]
    if small:
        observed.append(sum(counts.get(o, 0) for o in small))
        expected.append(sum(exact[o] for o in small))
    total = sum(expected)
    expected = [e / total * samples for e in expected]
    result = stats.chisquare(observed, expected)
    return result.pvalue, len(observed) - 1


def power_at_effect(df, effect_w):
    """Power of the test at level ALPHA against any alternative at Cohen's effect size w."""
    critical = stats.chi2.ppf(1 - ALPHA, df)
    return stats.ncx2.sf(critical, df, SAMPLES * effect_w**2)


SAMPLING_CASES = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.8, top_k=3, top_p=0.9),
]


@pytest.mark.parametrize("sampling", SAMPLING_CASES, ids=["t1", "t0.8-topk3-topp0.9"])
def test_sampled_output_has_the_target_distribution(sampling):
    """6000 speculative samples of 3 tokens over a 4-token vocabulary (64 outcomes).

    The draft differs a lot from the target (total variation 0.5 over the 64 outcomes),
    so rejections and residual draws are frequent. Pearson's chi-square at level 1e-3
    (fixed seed, so the result is deterministic); its power against *any* alternative at
    Cohen's effect size w >= 0.12 is asserted >= 0.95 below (0.98-0.99 for these bins),
    so an error of that size would be caught 19 times in 20. The next test shows it
    catches a real bug in the rule.
    """
    target_model, draft_model = peaked_llama(seed=3), peaked_llama(seed=4)
    prompt = torch.tensor([0, 3, 2])
    exact = exact_distribution(target_model, prompt, sampling)
    counts = sample_speculatively(target_model, draft_model, prompt, sampling)
    pvalue, df = chi_square_test(counts, exact)
    assert power_at_effect(df, DETECTABLE_EFFECT_W) >= 0.95
    assert pvalue > ALPHA


def residual_ignoring_rule(proposed, draft_probs, target_probs, generator):
    """A classic bug: on rejection, resample from p instead of norm(max(0, p - q))."""
    correct = rejection_verdict(proposed, draft_probs, target_probs, generator)
    rows = torch.arange(proposed.shape[0])
    p_next = target_probs[rows, correct.num_accepted]
    resampled = torch.multinomial(p_next, 1, generator=generator).squeeze(1)
    return Verdict(correct.accept_mask, correct.num_accepted, resampled)


BROKEN_RULE_SAMPLES = 1500


def test_the_distribution_test_detects_a_broken_rule(monkeypatch):
    """The chi-square test flags a real bug from a quarter of the samples the lossless tests
    draw (p = 1.3e-54 at 1500, against the 1e-3 level); its power only grows with the
    sample count, so the 6000-sample tests catch it too."""
    sampling = SamplingParams(temperature=1.0)
    target_model, draft_model = peaked_llama(seed=3), peaked_llama(seed=4)
    prompt = torch.tensor([0, 3, 2])
    monkeypatch.setattr(spec_module, "rejection_verdict", residual_ignoring_rule)
    counts = sample_speculatively(target_model, draft_model, prompt, sampling, samples=BROKEN_RULE_SAMPLES)
    pvalue, _ = chi_square_test(counts, exact_distribution(target_model, prompt, sampling))
    print(f"broken rule: p = {pvalue:.3g}")
    assert pvalue < ALPHA


@pytest.mark.parametrize("k", [3, 8])
def test_early_stopped_drafting_stays_lossless_and_drafts_less(random_target_model, drafts, k):
    """``draft_confidence`` shortens proposals where the draft is unsure; output is unchanged."""
    model = random_target_model
    full = SpeculativeDecoder(Target(model), drafts["agrees_often"], DecodeConfig(k=k), [EOS])
    adaptive = SpeculativeDecoder(Target(model), drafts["agrees_often"], DecodeConfig(k=k, draft_confidence=0.6), [EOS])
    proposed_full = proposed_adaptive = 0
    for prompt in seeded_prompts(8, model.config.vocab_size, seed=100 + k):
        a, b = full.generate(prompt, 40), adaptive.generate(prompt, 40)
        assert a.tokens.tolist() == b.tokens.tolist()
        proposed_full += sum(t.num_proposed for t in a.traces)
        proposed_adaptive += sum(t.num_proposed for t in b.traces)
    assert proposed_adaptive < proposed_full
