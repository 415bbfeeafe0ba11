"""The small-LM drafter: session sync, teacher forcing, checkpoints, vocabulary checks."""

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from aurora_rl.core.batch import TraceBatch
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.sampling import GREEDY, SamplingParams
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.small_lm import SmallLMDrafter
from conftest import make_llama, perturbed_copy


@pytest.fixture(scope="module")
def draft(random_target_model):
    return SmallLMDrafter(perturbed_copy(random_target_model, 0.1, seed=5))


def test_session_after_partial_acceptance_equals_a_fresh_session(draft):
    context = torch.tensor([0, 7, 8, 9, 10])
    session = draft.start(context)
    proposal = session.propose(4, GREEDY, None)
    session.commit(2, 33, None)  # 2 accepted, then the target's token 33
    continued = session.propose(4, GREEDY, None)
    committed = torch.cat([context, proposal.tokens[:2], torch.tensor([33])])
    fresh = draft.start(committed).propose(4, GREEDY, None)
    assert continued.tokens.tolist() == fresh.tokens.tolist()
    torch.testing.assert_close(continued.logits, fresh.logits)


def test_sampled_proposals_are_draws_from_the_returned_distribution(draft):
    sampling = SamplingParams(temperature=1.0, top_k=5)
    proposal = draft.start(torch.tensor([0, 4, 5])).propose(3, sampling, torch.Generator().manual_seed(0))
    chosen = proposal.probs.gather(-1, proposal.tokens[:, None])
    assert bool((chosen > 0).all())
    assert bool(((proposal.probs > 0).sum(-1) <= 5).all())
    torch.testing.assert_close(proposal.probs.sum(-1), torch.ones(3))


def test_teacher_forced_logits_reproduce_decode_time_proposals(random_target_model, draft):
    decoder = SpeculativeDecoder(Target(random_target_model), draft, DecodeConfig(k=4), [1])
    traces = [t for t in decoder.generate(torch.tensor([0, 11, 12, 13]), 40).traces if t.num_proposed]
    batch = TraceBatch.from_traces(traces, max_context=512)
    logits = draft.proposal_logits(batch)
    assert torch.equal(logits.argmax(-1)[batch.valid_mask], batch.proposed[batch.valid_mask])


def test_save_load_round_trip_restores_identical_proposals_and_version(draft, tmp_path):
    draft.version = 7
    draft.save_pretrained(tmp_path)
    loaded = SmallLMDrafter.from_pretrained(tmp_path)
    context = torch.tensor([0, 3, 4, 5, 6])
    assert loaded.version == 7
    a = draft.start(context).propose(5, GREEDY, None)
    b = loaded.start(context).propose(5, GREEDY, None)
    assert a.tokens.tolist() == b.tokens.tolist()
    assert torch.equal(a.logits, b.logits)


def _edit_weights(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_loading_a_wrongly_shaped_weight_names_it(draft, tmp_path):
    draft.save_pretrained(tmp_path)
    name = "model.layers.0.mlp.up_proj.weight"
    _edit_weights(tmp_path, lambda t: t.__setitem__(name, torch.zeros(3, 3)))
    with pytest.raises(ValueError, match=re.escape(f"weight {name!r} in {tmp_path / 'model.safetensors'} has shape (3, 3)")):
        SmallLMDrafter.from_pretrained(tmp_path)


def test_loading_a_renamed_weight_names_both_sides(draft, tmp_path):
    draft.save_pretrained(tmp_path)
    old, new = "model.norm.weight", "model.final_norm.weight"
    _edit_weights(tmp_path, lambda t: t.__setitem__(new, t.pop(old)))
    with pytest.raises(ValueError, match=re.escape(f"holds weights the drafter does not have: ['{new}']")):
        SmallLMDrafter.from_pretrained(tmp_path)


def test_loading_a_directory_without_manifest_says_what_it_is_not(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a saved aurora_rl drafter"):
        SmallLMDrafter.from_pretrained(tmp_path)


def test_vocabulary_mismatch_is_refused_at_construction(random_target_model):
    other_vocab = SmallLMDrafter(make_llama(vocab=50, hidden=16, layers=1, seed=0))
    with pytest.raises(ValueError, match=re.escape("draft vocabulary size 50 does not match target vocabulary size 97")):
        SpeculativeDecoder(Target(random_target_model), other_vocab)
