"""Invariant 1 for the training-free drafters and the hybrid: greedy output is the target's
own, token for token (alone and batched); sampled output has the target's distribution
(the exact chi-square test of ``test_lossless``)."""

import random

import pytest
import torch

from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.hybrid import HybridDrafter
from aurora_rl.policies.prompt_lookup import PromptLookupDrafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.policies.suffix import SuffixConfig, SuffixDrafter
from conftest import perturbed_copy
from test_batched_decode import decode_alone, decode_together
from test_lossless import (
    ALPHA, DETECTABLE_EFFECT_W, SAMPLES, VOCAB, chi_square_test, exact_distribution, peaked_llama,
    power_at_effect, sample_batched, seeded_prompts,
)  # fmt: skip

EOS = 1


def drafter(name, target_model):
    vocab = target_model.config.vocab_size
    if name == "suffix":
        return SuffixDrafter(vocab, SuffixConfig(max_depth=12))
    if name == "prompt_lookup":
        return PromptLookupDrafter(vocab)
    learned = SmallLMDrafter(perturbed_copy(target_model, scale=0.1, seed=5))
    return HybridDrafter(learned, SuffixDrafter(vocab, SuffixConfig(max_depth=12)), min_suffix_score=1.0)


@pytest.mark.parametrize("k", [3, 8])
@pytest.mark.parametrize("name", ["suffix", "prompt_lookup", "hybrid"])
def test_greedy_output_equals_target_generate(random_target_model, name, k):
    """Each prompt twice, so the second pass finds the first one's outputs in the global trie."""
    model = random_target_model
    policy = drafter(name, model)
    decoder = SpeculativeDecoder(Target(model), policy, DecodeConfig(k=k), [EOS])
    taus = []
    for prompt in seeded_prompts(12, model.config.vocab_size, seed=k) * 2:
        ours = decoder.generate(prompt, max_new_tokens=40)
        reference = model.generate(prompt[None], max_new_tokens=40, do_sample=False, eos_token_id=EOS, pad_token_id=2)
        assert ours.tokens.tolist() == reference[0, len(prompt) :].tolist()
        taus.append(ours.accepted_length)
    assert sum(taus) / len(taus) > 1.5  # the proposals were really accepted, long runs included
    if name == "hybrid":
        assert min(policy.counts.values()) > 0  # both drafters proposed


@pytest.mark.parametrize("name", ["suffix", "hybrid"])
def test_batched_rows_give_the_target_output(random_target_model, name):
    """Batched steps (``speculate_batch``: every row proposes, then every row commits, so
    rows read each other's outputs in the shared global trie) still give each row the
    target's own greedy output, as decoding it alone does."""
    model, target = random_target_model, Target(random_target_model)
    prompts = seeded_prompts(5, model.config.vocab_size, seed=21)
    configs = [DecodeConfig(k=4), DecodeConfig(k=2), DecodeConfig(k=4), DecodeConfig(k=3), DecodeConfig(k=4)]
    alone = [decode_alone(drafter(name, model), target, p, c, seed=i, max_new_tokens=24)
             for i, (p, c) in enumerate(zip(prompts, configs))]  # fmt: skip
    outputs, _, _ = decode_together(drafter(name, model), target, prompts, configs, list(range(5)), 24)
    assert outputs == [tokens for tokens, _ in alone]


def seeded_suffix(max_cached_tokens=200):
    """A global trie holding random sequences: a draft ``q`` far from the peaked target."""
    suffix = SuffixDrafter(VOCAB, SuffixConfig(max_depth=4, max_cached_tokens=max_cached_tokens,
                                               max_spec_factor=2.0, min_token_prob=0.0))  # fmt: skip
    rng = random.Random(7)
    for _ in range(20):
        suffix.add_output(next(suffix._ids), [rng.randrange(VOCAB) for _ in range(8)])
    return suffix


@pytest.mark.parametrize("name", ["suffix", "hybrid"])
def test_sampled_output_has_the_target_distribution(name):
    """6000 samples of 3 tokens (k = 2) while the global trie keeps learning from them
    (and evicting: at most 200 tokens), so ``q`` changes from request to request. 20
    requests at a time, so the 200-token trie holds finished outputs, not only live ones."""
    sampling = SamplingParams(temperature=1.0)
    target_model = peaked_llama(seed=3)
    policy = seeded_suffix()
    if name == "hybrid":
        policy = HybridDrafter(SmallLMDrafter(peaked_llama(seed=4)), policy, min_suffix_score=0.5)
    prompt = torch.tensor([0, 3, 2])
    counts, traces = sample_batched(Target(target_model), policy, prompt, DecodeConfig(k=2, sampling=sampling), rows=20)
    proposed = sum(t.num_proposed for t in traces)
    assert proposed > SAMPLES  # proposals on most steps: the rule was exercised
    if name == "hybrid":
        assert min(policy.counts.values()) > SAMPLES // 10
    pvalue, df = chi_square_test(counts, exact_distribution(target_model, prompt, sampling))
    assert power_at_effect(df, DETECTABLE_EFFECT_W) >= 0.95
    assert pvalue > ALPHA
