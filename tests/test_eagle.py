"""The EAGLE-style drafter: lossless decoding, session sync, teacher forcing equal to
decoding, unrolled gradients, training, checkpoints and hot-swap."""

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from aurora_rl.algos.config import AlgoConfig
from aurora_rl.algos.losses import forward_kl
from aurora_rl.algos.zoo import make_algorithm
from aurora_rl.core.batch import TraceBatch
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.sampling import GREEDY, SamplingParams, probs_from_logits
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.eagle import EagleDrafter
from conftest import make_llama

EOS = 1
VOCAB = 97
LAYER_CHOICES = [(-1,), (1, -1)]


def seeded_prompts(count, seed, max_len=16):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len, (count,), generator=gen)
    return [torch.randint(3, VOCAB, (int(n),), generator=gen) for n in lengths]


def reference_tokens(model, prompt, max_new_tokens):
    out = model.generate(
        prompt[None], max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=EOS, pad_token_id=2
    )
    return out[0, len(prompt) :].tolist()


def true_features(model, layers, ids):
    """``(len(ids), D)``: the target's features after every token, from one uncached pass."""
    with torch.no_grad():
        states = model(ids[None], output_hidden_states=True).hidden_states
    return torch.cat([states[layer][0] for layer in layers], dim=-1)


def proposal_traces(decoder, prompts, max_new_tokens):
    generations = [decoder.generate(prompt, max_new_tokens) for prompt in prompts]
    traces = [t for g in generations for t in g.traces if t.num_proposed]
    tau = sum(len(g.tokens) for g in generations) / sum(g.num_steps for g in generations)
    return traces, tau


class RecordingDrafter:
    """Delegates to an EAGLE drafter and keeps every proposal its sessions make, in order."""

    uses_target_features = True

    def __init__(self, drafter):
        self.drafter = drafter
        self.version, self.vocab_size = drafter.version, drafter.vocab_size
        self.proposals = []

    def start(self, context_ids, target_hidden):
        session = self.drafter.start(context_ids, target_hidden)
        propose = session.propose

        def recording(*args):
            proposal = propose(*args)
            self.proposals.append(proposal)
            return proposal

        session.propose = recording
        return session


@pytest.fixture(scope="module")
def peaked_model():
    """Random weights give near-uniform targets; a scaled LM head makes them peaked, so a
    trained draft can agree with the target's argmax often."""
    model = make_llama(VOCAB, 64, 2, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


# --- decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("layers", LAYER_CHOICES, ids=str)
def test_greedy_output_equals_target_generate(random_target_model, layers, k):
    model = random_target_model
    drafter = EagleDrafter.from_target(Target(model, hidden_layers=layers), seed=1)
    decoder = SpeculativeDecoder(Target(model, hidden_layers=layers), drafter, DecodeConfig(k=k), [EOS])
    accepted = 0
    for prompt in seeded_prompts(6, seed=k):
        ours = decoder.generate(prompt, max_new_tokens=32)
        assert ours.tokens.tolist() == reference_tokens(model, prompt, 32)
        accepted += ours.accepted
    assert accepted > 0  # some proposals were kept, so the commit-after-acceptance path ran


@pytest.mark.parametrize("layers", LAYER_CHOICES, ids=str)
def test_session_after_a_verdict_equals_a_fresh_session(random_target_model, layers):
    """After propose + commit (any number accepted, then a token the draft did not
    propose), the session drafts exactly what a session opened on the committed sequence
    with the true features drafts: rolling back the unrolled entries and re-feeding the
    accepted tokens with true features leaves no trace of the rejected draft."""
    model, k = random_target_model, 4
    drafter = EagleDrafter.from_target(Target(model, hidden_layers=layers), seed=2)
    for prompt in seeded_prompts(2, seed=7):
        for accepted in range(k + 1):
            sequence = prompt
            session = drafter.start(sequence, true_features(model, layers, sequence)[:-1])
            proposal = session.propose(k, GREEDY, None)
            for _ in range(2):
                correction = int(proposal.tokens[accepted] + 1) % VOCAB if accepted < k else 3
                kept = torch.cat([sequence, proposal.tokens[:accepted], torch.tensor([correction])])
                features = true_features(model, layers, kept)
                session.commit(accepted, correction, features[len(sequence) - 1 : len(kept) - 1])
                sequence = kept
                proposal = session.propose(k, GREEDY, None)
                expected = drafter.start(sequence, features[:-1]).propose(k, GREEDY, None)
                assert proposal.tokens.tolist() == expected.tokens.tolist()
                torch.testing.assert_close(proposal.logits, expected.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layers", LAYER_CHOICES, ids=str)
def test_teacher_forced_logits_equal_decode_time_proposals(random_target_model, layers):
    """``proposal_logits`` on real traces (full context in the window) reproduces what the
    sessions drafted: the argmax is the proposed token at every valid position, exactly,
    and the logits agree to float rounding."""
    model = random_target_model
    target = Target(model, hidden_layers=layers)
    recorder = RecordingDrafter(EagleDrafter.from_target(target, seed=3))
    decoder = SpeculativeDecoder(target, recorder, DecodeConfig(k=4), [EOS])
    traces, _ = proposal_traces(decoder, seeded_prompts(5, seed=11), max_new_tokens=24)
    batch = TraceBatch.from_traces(traces, max_context=10_000, with_features=True)

    logits = recorder.drafter.proposal_logits(batch)

    assert logits.shape == (len(traces), 4, VOCAB)
    valid = batch.valid_mask
    assert torch.equal(logits.argmax(-1)[valid], batch.proposed[valid])
    decoded = torch.zeros_like(logits)
    for row, proposal in enumerate(recorder.proposals):
        decoded[row, : len(proposal)] = proposal.logits
    torch.testing.assert_close(logits[valid], decoded[valid], atol=1e-4, rtol=0)


def test_sampled_proposals_are_seeded_draws_from_the_shaped_distribution(random_target_model):
    """The rejection rule is lossless only if ``tokens[i] ~ probs[i]`` with ``probs`` the
    draft logits shaped exactly like the target's."""
    model = random_target_model
    drafter = EagleDrafter.from_target(Target(model, hidden_layers=(-1,)), seed=8)
    sampling = SamplingParams(temperature=0.8, top_k=5)
    prompt = seeded_prompts(1, seed=3)[0]
    features = true_features(model, (-1,), prompt)[:-1]
    first, second = (
        drafter.start(prompt, features).propose(6, sampling, torch.Generator().manual_seed(0))
        for _ in range(2)
    )
    assert torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.probs, probs_from_logits(first.logits, sampling))
    assert bool((first.probs.gather(-1, first.tokens[:, None]) > 0).all())


def test_proposal_logits_need_target_features(random_target_model):
    target = Target(random_target_model, hidden_layers=(-1,))
    drafter = EagleDrafter.from_target(target)
    decoder = SpeculativeDecoder(target, drafter, DecodeConfig(k=2), [EOS])
    traces, _ = proposal_traces(decoder, seeded_prompts(1, seed=0), max_new_tokens=4)
    with pytest.raises(ValueError, match=re.escape("TraceBatch.from_traces(..., with_features=True)")):
        drafter.proposal_logits(TraceBatch.from_traces(traces))


# --- training ---------------------------------------------------------------------------


def test_unrolled_steps_backpropagate_through_the_heads_own_outputs(random_target_model):
    """A loss on proposal 2 reaches the head output that predicted proposal 1 and, through
    it, the one that predicted proposal 0: the head learns from its own previous outputs.
    A loss on proposal 0 reaches neither unrolled step."""
    target = Target(random_target_model, hidden_layers=(-1,))
    drafter = EagleDrafter.from_target(target, seed=4)
    decoder = SpeculativeDecoder(target, drafter, DecodeConfig(k=3), [EOS])
    traces, _ = proposal_traces(decoder, seeded_prompts(2, seed=5), max_new_tokens=12)
    batch = TraceBatch.from_traces([t for t in traces if t.num_proposed == 3], with_features=True)
    outputs = []  # per head call: the context pass, then unrolled steps 1 and 2
    hook = drafter.head.register_forward_hook(lambda module, args, out: outputs.append(out))
    logits = drafter.proposal_logits(batch)
    hook.remove()
    context_out, step1_out, step2_out = outputs

    loss_at_2 = -logits[:, 2].log_softmax(-1).gather(-1, batch.proposed[:, 2:3]).sum()
    grads = torch.autograd.grad(loss_at_2, [context_out, step1_out, step2_out], retain_graph=True)
    assert grads[1].abs().sum() > 0 and grads[0][:, -1].abs().sum() > 0 and grads[2].abs().sum() > 0

    loss_at_0 = -logits[:, 0].log_softmax(-1).gather(-1, batch.proposed[:, :1]).sum()
    grads = torch.autograd.grad(loss_at_0, [step1_out, step2_out])
    assert all(torch.count_nonzero(grad) == 0 for grad in grads)


@pytest.fixture(scope="module")
def training_run(peaked_model):
    """Forward-KL training of a fresh head on its own greedy traces, measured before and after."""
    target = Target(peaked_model, hidden_layers=(-1,))
    drafter = EagleDrafter.from_target(target, intermediate_size=128, seed=0)
    prompts = seeded_prompts(8, seed=0, max_len=12)

    def decode():
        decoder = SpeculativeDecoder(target, drafter, DecodeConfig(k=4), [EOS])
        traces, tau = proposal_traces(decoder, prompts, max_new_tokens=32)
        return TraceBatch.from_traces(traces, max_context=10_000, with_features=True), tau

    batch, tau_before = decode()
    optimizer = torch.optim.Adam(drafter.trainable.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = forward_kl(drafter.proposal_logits(batch), batch.target_probs, batch.valid_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final_loss = forward_kl(drafter.proposal_logits(batch), batch.target_probs, batch.valid_mask).item()
    _, tau_after = decode()
    return {"drafter": drafter, "prompts": prompts, "losses": losses + [final_loss], "tau": (tau_before, tau_after)}


def test_training_reduces_the_loss_and_raises_accepted_length(training_run, peaked_model):
    losses, (tau_before, tau_after) = training_run["losses"], training_run["tau"]
    assert losses[-1] < 0.6 * losses[0]
    assert tau_after > tau_before + 0.2
    # Only the head trained: the shared embedding and LM head got no gradient.
    assert all(p.grad is None for p in peaked_model.parameters())


def test_trained_head_decodes_losslessly_with_long_accepted_runs(training_run, peaked_model):
    drafter = training_run["drafter"]
    decoder = SpeculativeDecoder(Target(peaked_model, hidden_layers=(-1,)), drafter, DecodeConfig(k=4), [EOS])
    taus = []
    for prompt in training_run["prompts"][:4]:
        ours = decoder.generate(prompt, max_new_tokens=32)
        assert ours.tokens.tolist() == reference_tokens(peaked_model, prompt, 32)
        taus.append(ours.accepted_length)
    assert max(taus) > 2.0  # whole proposals accepted: the bonus-token commit path ran


def test_a_learner_algorithm_trains_the_head_and_nothing_else(random_target_model):
    """The learner's seam: ``Algorithm`` optimises ``drafter.trainable``, whose
    ``forward(batch)`` is the unrolled pass; the shared target weights never move."""
    model = random_target_model
    target = Target(model, hidden_layers=(1, -1))
    drafter = EagleDrafter.from_target(target, intermediate_size=96, seed=5)
    decoder = SpeculativeDecoder(target, drafter, DecodeConfig(k=3), [EOS])
    traces, _ = proposal_traces(decoder, seeded_prompts(4, seed=17), max_new_tokens=16)
    algorithm = make_algorithm(drafter, AlgoConfig(name="forward_kl", lr=1e-2, context_lm_coef=0.0))
    batch = algorithm.batch(traces)
    shared = [model.get_input_embeddings().weight.clone(), model.get_output_embeddings().weight.clone()]
    fc_before = drafter.head.fc.weight.detach().clone()
    metrics = [algorithm.update(batch) for _ in range(5)]
    assert all(m["update/rejected"] == 0.0 for m in metrics)
    assert metrics[-1]["losses/forward_kl"] < metrics[0]["losses/forward_kl"]
    assert not torch.equal(drafter.head.fc.weight, fc_before)
    assert torch.equal(model.get_input_embeddings().weight, shared[0])
    assert torch.equal(model.get_output_embeddings().weight, shared[1])


# --- checkpoints --------------------------------------------------------------------------


def greedy_proposals(drafter, model, prompts, k=4):
    out = []
    for prompt in prompts:
        session = drafter.start(prompt, true_features(model, drafter.hidden_layers, prompt)[:-1])
        out.append(session.propose(k, GREEDY, None))
    return out


@pytest.fixture
def saved_head(random_target_model, tmp_path):
    target = Target(random_target_model, hidden_layers=(-1,))
    drafter = EagleDrafter.from_target(target, num_heads=4, intermediate_size=96, seed=6).clone(version=7)
    drafter.save_pretrained(tmp_path / "head")
    return drafter, tmp_path / "head"


def test_save_load_round_trip_restores_identical_proposals(random_target_model, saved_head):
    drafter, directory = saved_head
    loaded = EagleDrafter.from_pretrained(directory, Target(random_target_model, hidden_layers=(-1,)))
    assert loaded.version == 7 and loaded.head.config == drafter.head.config
    prompts = seeded_prompts(3, seed=9)
    for ours, theirs in zip(greedy_proposals(drafter, random_target_model, prompts),
                            greedy_proposals(loaded, random_target_model, prompts)):
        assert torch.equal(ours.tokens, theirs.tokens) and torch.equal(ours.logits, theirs.logits)
    # The checkpoint and the trainable parameters are the head's only, never the shared
    # target weights.
    assert set(load_file(directory / "model.safetensors")) == set(drafter.head.state_dict())
    assert {id(p) for p in drafter.trainable.parameters()} == {id(p) for p in drafter.head.parameters()}


def test_loading_a_weight_of_the_wrong_shape_names_it(random_target_model, saved_head):
    _, directory = saved_head
    weights = load_file(directory / "model.safetensors")
    weights["block.down.weight"] = torch.zeros(64, 95)
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(ValueError, match=re.escape("weight 'block.down.weight'") + ".*shape \\(64, 95\\)"):
        EagleDrafter.from_pretrained(directory, Target(random_target_model, hidden_layers=(-1,)))


def test_loading_a_weight_with_the_wrong_name_names_it(random_target_model, saved_head):
    _, directory = saved_head
    weights = load_file(directory / "model.safetensors")
    weights["fc.kernel"] = weights.pop("fc.weight")
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(ValueError, match=re.escape("does not have: ['fc.kernel']")):
        EagleDrafter.from_pretrained(directory, Target(random_target_model, hidden_layers=(-1,)))


def test_a_target_recording_other_layers_is_refused(random_target_model, saved_head):
    _, directory = saved_head
    message = (
        "the EAGLE head reads target hidden_layers (-1,) but the Target records hidden_layers "
        "(1, -1); build it with Target(model, hidden_layers=(-1,))"
    )
    other_layers = Target(random_target_model, hidden_layers=(1, -1))
    with pytest.raises(ValueError, match=re.escape(message)):
        EagleDrafter.from_pretrained(directory, other_layers)
    with pytest.raises(ValueError, match=re.escape(message)):
        EagleDrafter.from_target(other_layers, hidden_layers=(-1,))


def test_a_target_of_another_size_is_refused(saved_head):
    _, directory = saved_head
    smaller = Target(make_llama(VOCAB, 32, 2, seed=0), hidden_layers=(-1,))
    message = (
        "the EAGLE head was built for a target of hidden size 64 and vocabulary 97, but this "
        "target has hidden size 32 and vocabulary 97"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        EagleDrafter.from_pretrained(directory, smaller)


# --- hot-swap ---------------------------------------------------------------------------


def test_hot_swap_mid_sequence_stays_lossless(random_target_model):
    """A new version published between steps takes over the in-flight sequence
    (``sync_session`` opens a new session from the kept tokens and features)."""
    model = random_target_model
    target = Target(model, hidden_layers=(-1,))
    old = EagleDrafter.from_target(target, seed=1)
    new = old.clone(version=1)
    with torch.no_grad():
        for param in new.trainable.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    assert new.target_model is old.target_model
    assert not torch.equal(new.head.fc.weight, old.head.fc.weight)
    live = {"policy": old}
    decoder = SpeculativeDecoder(target, lambda: live["policy"], DecodeConfig(k=3), [EOS])
    for prompt in seeded_prompts(3, seed=14):
        live["policy"] = old
        state = decoder.start(prompt, max_new_tokens=32)
        versions = []
        while not state.finished:
            if state.steps == 2:
                live["policy"] = new
            versions.append(decoder.step(state).draft_version)
        assert state.generated.tolist() == reference_tokens(model, prompt, 32)
        assert len(versions) > 2 and versions[:2] == [0, 0] and set(versions[2:]) == {1}


def test_decoder_refuses_a_target_recording_other_layers_of_the_same_width():
    model = make_llama(vocab=61, hidden=32, layers=2, seed=0)
    head = EagleDrafter.from_target(Target(model, (-1,)))
    with pytest.raises(ValueError, match=re.escape("the drafter reads the target's hidden_layers (-1,) but the Target records (1,)")):
        SpeculativeDecoder(Target(model, (1,)), head)
