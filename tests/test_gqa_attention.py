"""Grouped-query attention read in place: the verify pass's numbers unchanged, no K/V copy."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers.integrations.sdpa_attention as hf_sdpa

from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.gqa_attention import GQA_SDPA, use_gqa_attention
from aurora_rl.core.ragged import run_cached_ragged
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import RollbackCache, Target, run_cached
from aurora_rl.policies.small_lm import SmallLMDrafter
from conftest import make_llama, perturbed_copy

EOS = 1


@pytest.fixture(scope="module")
def gqa_pair():
    """(a GQA Llama on transformers' sdpa, the same model switched to in-place GQA)."""
    reference = make_llama(vocab=97, hidden=64, layers=2, seed=0, heads=4, kv_heads=2)
    switched = copy.deepcopy(reference)
    assert use_gqa_attention(switched)
    assert reference.config._attn_implementation == "sdpa" and switched.config._attn_implementation == GQA_SDPA
    return reference, switched


def prefilled(model, prompt):
    cache = RollbackCache(model)
    run_cached(model, cache, prompt)
    return cache


def test_a_verify_pass_gives_the_same_logits_without_copying_the_cache(gqa_pair, monkeypatch):
    reference, switched = gqa_pair
    prompt = torch.randint(3, 97, (30,), generator=torch.Generator().manual_seed(0))
    feed = [5, 17, 40, 3, 66]
    expected = run_cached(reference, prefilled(reference, prompt), feed)
    copies = []
    monkeypatch.setattr(hf_sdpa, "repeat_kv", lambda states, n: copies.append(n) or states.repeat_interleave(n, 1))
    got = run_cached(switched, prefilled(switched, prompt), feed)
    assert copies == []  # transformers' sdpa would repeat K and V of both layers here
    run_cached(reference, prefilled(reference, prompt), feed)
    assert copies == [2] * 4  # ... as this shows
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-6, atol=1e-6)


def test_a_ragged_batch_gives_each_row_its_own_logits(gqa_pair):
    """Padding masks differ per row; each row still reads only its own real keys."""
    reference, switched = gqa_pair
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 97, (n,), generator=gen) for n in (9, 23, 14)]
    feeds = [[4, 8], [50, 51, 52, 53, 54], [7]]
    expected = [run_cached(reference, prefilled(reference, p), f).logits for p, f in zip(prompts, feeds)]
    got = run_cached_ragged(switched, [prefilled(switched, p) for p in prompts], feeds, pad_id=2)
    for row, want in zip(got, expected):
        torch.testing.assert_close(row.logits, want, rtol=1e-5, atol=1e-5)


def test_speculative_greedy_on_a_gqa_target_equals_generate(gqa_pair):
    reference, _ = gqa_pair
    model = copy.deepcopy(reference)
    target = Target(model)  # switches it
    assert model.config._attn_implementation == GQA_SDPA
    draft = SmallLMDrafter(perturbed_copy(reference, scale=0.1, seed=5))
    decoder = SpeculativeDecoder(target, draft, DecodeConfig(k=4), [EOS])
    for seed in range(3):
        prompt = torch.randint(3, 97, (8,), generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            want = reference.generate(prompt[None], do_sample=False, max_new_tokens=30, eos_token_id=EOS, pad_token_id=2)
        got = decoder.generate(prompt, 30, keep_traces=False)
        assert got.tokens.tolist() == want[0, len(prompt):].tolist()
        assert got.accepted > 0  # the draft agreed often, so multi-token verify passes ran


def test_models_without_grouped_heads_or_on_other_attention_are_left_alone():
    plain = make_llama(vocab=31, hidden=32, layers=1, seed=0, heads=2)
    assert not use_gqa_attention(plain) and plain.config._attn_implementation == "sdpa"
    eager = make_llama(vocab=31, hidden=32, layers=1, seed=0, heads=4, kv_heads=2)
    eager.set_attn_implementation("eager")
    assert not use_gqa_attention(eager) and eager.config._attn_implementation == "eager"
