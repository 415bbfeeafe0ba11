"""The publish gate replays each trace under the sampling rule its verdict used."""

import pytest
import torch

from aurora_rl.core.batch import TraceBatch
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.sampling import SamplingParams, probs_from_logits
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.online.gate import acceptance_score
from aurora_rl.policies.small_lm import SmallLMDrafter
from conftest import make_llama


def traces_under(rule: SamplingParams) -> list:
    target = Target(make_llama(24, 16, 1, seed=0))
    draft = SmallLMDrafter(make_llama(24, 16, 1, seed=1))
    decoder = SpeculativeDecoder(target, draft, DecodeConfig(k=3, sampling=rule), eos_token_ids=[])
    generator = torch.Generator().manual_seed(0)
    traces = decoder.generate(torch.tensor([0, 5, 7, 9]), 24, generator=generator).traces
    return [t for t in traces if t.num_proposed]


def closed_form(draft, batch: TraceBatch, rule: SamplingParams) -> float:
    """Mean of sum_x min(p, q) over judged positions, both shaped by ``rule``."""
    logits = draft.trainable(batch).float()
    q = probs_from_logits(logits, rule)
    p = probs_from_logits(batch.target_probs.clamp_min(1e-30).log(), rule)
    overlap = torch.minimum(p, q).sum(-1)
    judged = batch.valid_mask & (batch.accept_mask.long().cumsum(-1) - batch.accept_mask.long() == torch.arange(batch.k))
    return float(overlap[judged].mean())


@pytest.mark.parametrize("rule", [SamplingParams(1.0), SamplingParams(0.7, top_k=2), SamplingParams(1.2, top_p=0.6)])
def test_traces_carry_the_whole_rule_and_the_gate_shapes_by_it(rule):
    traces = traces_under(rule)
    assert traces and all(t.sampling == rule for t in traces)
    batch = TraceBatch.from_traces(traces)
    assert batch.sampling_rules() == [rule] * len(traces)
    draft = SmallLMDrafter(make_llama(24, 16, 1, seed=1))
    score, positions = acceptance_score(draft, batch)
    assert positions > 0
    assert score == pytest.approx(closed_form(draft, batch, rule), abs=1e-6)


def test_top_k_one_scores_like_greedy_and_differs_from_temperature_alone():
    rule = SamplingParams(1.0, top_k=1)  # one token survives: p and q are one-hot
    batch = TraceBatch.from_traces(traces_under(rule))
    draft = SmallLMDrafter(make_llama(24, 16, 1, seed=1))
    score, _ = acceptance_score(draft, batch)
    assert score == pytest.approx(closed_form(draft, batch, SamplingParams()), abs=1e-6)  # argmax agreement
    assert score != pytest.approx(closed_form(draft, batch, SamplingParams(1.0)), abs=1e-3)
