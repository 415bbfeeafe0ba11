"""Targets served with fp16 weights (fbgemm): close to fp32, row-independent, and lossless."""

from __future__ import annotations

import copy

import pytest
import torch

from aurora_rl.core.fp16_weights import Fp16Linear, apply_target_weights, use_fp16_weights
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import RollbackCache, Target, run_cached
from aurora_rl.policies.eagle import EagleDrafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from conftest import make_llama, perturbed_copy

EOS = 1


@pytest.fixture(scope="module")
def fp16_pair():
    """(fp32 model, the same model with fp16 weights) and a draft that agrees often."""
    reference = make_llama(vocab=97, hidden=64, layers=2, seed=0)
    draft = SmallLMDrafter(perturbed_copy(reference, scale=0.1, seed=5))
    converted = copy.deepcopy(reference)
    assert use_fp16_weights(converted) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + LM head
    return reference, converted, draft


def test_every_linear_is_packed_and_the_lm_head_stays_readable(fp16_pair):
    _, converted, _ = fp16_pair
    assert not any(isinstance(m, torch.nn.Linear) for m in converted.modules())
    head = converted.get_output_embeddings()
    assert isinstance(head, Fp16Linear) and head.weight.shape == (97, 64)
    assert not hasattr(converted.model.layers[0].mlp.up_proj, "weight")  # no fp32 copy kept


def test_fp16_weights_stay_close_to_fp32(fp16_pair):
    reference, converted, _ = fp16_pair
    ids = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = reference(ids).logits, converted(ids).logits
    # fp16 keeps 11 significant bits: a relative error of ~1e-3 per weight, far below the logit scale.
    assert (got - expected).abs().max() < 1e-2 * expected.abs().max()


def test_a_row_does_not_depend_on_its_neighbours(fp16_pair):
    """Verifying 5 tokens gives the logits of scoring them one at a time (no activation
    quantization), so the speculative verdict sees the model target-only decoding sees."""
    _, converted, _ = fp16_pair
    prompt = torch.randint(3, 97, (12,), generator=torch.Generator().manual_seed(1))
    block, single = RollbackCache(converted), RollbackCache(converted)
    run_cached(converted, block, prompt)
    run_cached(converted, single, prompt)
    new = [5, 17, 40, 3, 66]
    together = run_cached(converted, block, new).logits
    one_by_one = torch.cat([run_cached(converted, single, [t]).logits for t in new])
    assert torch.allclose(together, one_by_one, atol=1e-5, rtol=0)


def test_greedy_output_equals_generate_with_fp16_weights(fp16_pair):
    _, converted, draft = fp16_pair
    decoder = SpeculativeDecoder(Target(converted), draft, DecodeConfig(k=3), [EOS])
    gen = torch.Generator().manual_seed(2)
    taus = []
    for length in (3, 9, 17, 24):
        prompt = torch.randint(3, 97, (length,), generator=gen)
        ours = decoder.generate(prompt, max_new_tokens=40)
        reference = converted.generate(prompt[None], max_new_tokens=40, do_sample=False, eos_token_id=EOS,
                                       pad_token_id=2)[0, length:]
        assert ours.tokens.tolist() == reference.tolist()
        taus.append(ours.accepted_length)
    assert sum(taus) / len(taus) > 1.5  # drafts were accepted: the verify path really ran


def test_an_eagle_head_served_on_fp16_weights_drafts_as_before_and_stays_lossless(fp16_pair):
    """A frozen head (the benchmark's, under ``--target-weights fp16``) may run its own linears
    on the fp16 kernel: its logits move by fp16 rounding only, and the output is the target's."""
    _, converted, _ = fp16_pair
    target = Target(converted, (-1,))
    head = EagleDrafter.from_target(target, seed=3, draft_vocab=list(range(1, 97, 2)))
    fast = head.clone()
    assert use_fp16_weights(fast.trainable) == 7  # proj, fc, qkv, o_proj, gate_up, down, lm_head
    prompt = torch.randint(3, 97, (15,), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        hidden = target.forward(target.new_cache(), prompt).hidden[:-1]
        outputs = [drafter.start(prompt, hidden).propose(3, SamplingParams(), None, None) for drafter in (head, fast)]
    assert outputs[0].tokens.tolist() == outputs[1].tokens.tolist()
    assert torch.allclose(outputs[0].logits, outputs[1].logits, atol=1e-2)
    decoder = SpeculativeDecoder(target, fast, DecodeConfig(k=3), [EOS])
    ours = decoder.generate(prompt, max_new_tokens=30)
    reference = converted.generate(prompt[None], max_new_tokens=30, do_sample=False, eos_token_id=EOS, pad_token_id=2)
    assert ours.tokens.tolist() == reference[0, len(prompt):].tolist()


def test_unknown_weights_name_is_refused():
    with pytest.raises(ValueError, match=r"target weights='int4': choose one of \['fp32', 'fp16'\]"):
        apply_target_weights(make_llama(97, 16, 1, seed=0), "int4")


def test_an_eagle_head_on_an_fp16_target_drafts_with_an_fp16_copy_and_trains_in_fp32(fp16_pair):
    """The online arms and the server train the fp32 head and draft with a frozen fp16-kernel
    copy of it, rebuilt after every in-place change; the output stays the target's."""
    reference, converted, _ = fp16_pair
    prompt = torch.randint(3, 97, (15,), generator=torch.Generator().manual_seed(4))
    plain = EagleDrafter.from_target(Target(reference, (-1,)), seed=3, draft_vocab=list(range(1, 97, 2)))
    assert plain.drafting_model() is plain.trainable  # an fp32 target: the head drafts itself
    target = Target(converted, (-1,))
    drafter = EagleDrafter.from_target(target, seed=3, draft_vocab=list(range(1, 97, 2)))
    with torch.inference_mode():
        hidden = target.forward(target.new_cache(), prompt).hidden[:-1]

    def proposal(policy):
        with torch.inference_mode():
            return policy.start(prompt, hidden).propose(3, SamplingParams(), None, None)

    def converted_in_place(policy):
        fast = policy.clone()
        use_fp16_weights(fast.trainable)
        return fast

    drafting = drafter.drafting_model()
    assert isinstance(drafting.head.fc, Fp16Linear) and isinstance(drafter.head.fc, torch.nn.Linear)
    assert drafter.drafting_model() is drafting  # built once per set of weights
    assert torch.equal(proposal(drafter).logits, proposal(converted_in_place(drafter)).logits)
    with torch.no_grad():  # what an optimizer step does: change the weights in place
        drafter.head.fc.weight.mul_(1.5)
    assert drafter.drafting_model() is not drafting
    assert torch.equal(proposal(drafter).logits, proposal(converted_in_place(drafter)).logits)
    ours = SpeculativeDecoder(target, drafter, DecodeConfig(k=3), [EOS]).generate(prompt, max_new_tokens=30)
    expected = converted.generate(prompt[None], max_new_tokens=30, do_sample=False, eos_token_id=EOS, pad_token_id=2)
    assert ours.tokens.tolist() == expected[0, len(prompt):].tolist()


def test_a_full_vocabulary_head_scores_with_the_targets_fp16_lm_head_when_drafting(fp16_pair):
    reference, converted, _ = fp16_pair
    drafter = EagleDrafter.from_target(Target(converted, (-1,)), seed=3)
    outputs = torch.randn(2, 64)
    with torch.no_grad():
        fast = drafter.drafting_model().logits(outputs)
        slow = torch.nn.functional.linear(drafter.head.norm(outputs), reference.get_output_embeddings().weight)
    torch.testing.assert_close(fast, slow, atol=1e-2, rtol=1e-2)
    with torch.enable_grad():  # training reads the fp32 weight (the fp16 kernel has no autograd)
        assert drafter.trainable.logits(outputs.requires_grad_(), training=True).requires_grad
