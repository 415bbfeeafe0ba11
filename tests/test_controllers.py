"""Draft-length controllers: every one lossless (greedy equality, the sampled-distribution
test), the cost model's closed forms, and each controller's rule on scripted verdicts."""

import numpy as np
import pytest
import torch

from aurora_rl.core.control import AcceptanceTally, draft_features, token_stats
from aurora_rl.core.cost import CostModel
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.core.trace import with_target_token
from aurora_rl.policies.controllers import (
    BanditK,
    ConfidenceThreshold,
    GoodputK,
    HeuristicSchedule,
    RefitThreshold,
    best_threshold,
)
from aurora_rl.policies.learned_controller import CONTINUE, VERIFY, LearnedController, TinyPolicy
from aurora_rl.policies.prompt_lookup import PromptLookupDrafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.policies.suffix import SuffixDrafter
from aurora_rl.policies.controller_factory import CONTROLLERS, build_controller
from conftest import perturbed_copy
from test_lossless import (
    EOS, chi_square_test, exact_distribution, peaked_llama, power_at_effect, sample_batched, seeded_prompts,
)  # fmt: skip

COST = CostModel.linear(draft_ratio=0.2, width_slope=0.08, max_k=8)


def position_policy(stop_at: int, skip_below: float = 0.0) -> TinyPolicy:
    """A hand-set TinyPolicy: skip drafting when running acceptance < skip_below, else
    continue until ``stop_at`` proposals (features: position = n / 8, running acceptance)."""
    w1 = np.zeros((2, 6), np.float32)
    w1[0, 2], w1[1, 4] = -50.0, 50.0  # unit 0 falls with position, unit 1 rises with acceptance
    b1 = np.array([50.0 * (stop_at - 0.5) / 8, -50.0 * skip_below], np.float32)
    w2 = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)  # continue iff both units agree
    return TinyPolicy([(w1, b1), (w2, np.array([0.0, -1.0], np.float32))], max_draft=8)


def controllers():
    """One fresh instance of every controller (the learned one with a hand-set policy)."""
    built = {name: build_controller(name, 8, COST, None, position_policy(3, 0.3), 256) for name in CONTROLLERS}
    built["confidence"] = ConfidenceThreshold(0.6)
    return built


@pytest.fixture(scope="module")
def draft(random_target_model):
    return SmallLMDrafter(perturbed_copy(random_target_model, scale=0.1, seed=5))


@pytest.mark.parametrize("name", CONTROLLERS)
def test_every_controller_keeps_greedy_output_equal_to_target_generate(random_target_model, draft, name):
    model = random_target_model
    controller = controllers()[name]
    decoder = SpeculativeDecoder(Target(model), draft, DecodeConfig(k=8, controller=controller), [EOS])
    proposed = []
    for prompt in seeded_prompts(8, model.config.vocab_size, seed=21):
        ours = decoder.generate(prompt, max_new_tokens=40)
        reference = model.generate(prompt[None], max_new_tokens=40, do_sample=False, eos_token_id=EOS, pad_token_id=2)
        assert ours.tokens.tolist() == reference[0, len(prompt):].tolist()
        proposed += [t.num_proposed for t in ours.traces]
    if name not in ("fixed",):  # each one really varies the draft length
        assert len(set(proposed)) > 1


@pytest.mark.parametrize("name", CONTROLLERS)
@pytest.mark.parametrize("kind", ["suffix", "prompt_lookup"])
def test_every_controller_drives_the_model_free_drafters_losslessly(random_target_model, name, kind):
    """A controller's stop rule is a callable; the model-free drafters hand it their
    frequency distribution as logits (it once crashed the default main job: the suffix
    drafter compared the callable with a float). Greedy output stays the target's."""
    model = random_target_model
    vocab = model.config.vocab_size
    drafter = SuffixDrafter(vocab) if kind == "suffix" else PromptLookupDrafter(vocab)
    decoder = SpeculativeDecoder(Target(model), drafter, DecodeConfig(k=8, controller=controllers()[name]), [EOS])
    prompts = seeded_prompts(6, vocab, seed=22)
    proposed = 0
    for prompt in prompts + prompts:  # the second pass finds the first pass's outputs in the suffix trie
        ours = decoder.generate(prompt, max_new_tokens=32)
        reference = model.generate(prompt[None], max_new_tokens=32, do_sample=False, eos_token_id=EOS, pad_token_id=2)
        assert ours.tokens.tolist() == reference[0, len(prompt):].tolist()
        proposed += sum(t.num_proposed for t in ours.traces)
    assert proposed > 0


class RandomLengths:
    """A controller that picks every budget (0..k) and every stop at random: whatever a
    real controller decides is one of its choices, so its lossless verdict covers them all."""

    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def start(self):
        return self

    def budget(self, limit, context_len):
        return int(self.rng.integers(0, limit + 1))

    def stop(self, position, raw_logits, token):
        return bool(self.rng.random() < 0.5)

    def observe(self, num_proposed, num_accepted):
        pass


def test_any_draft_length_choice_keeps_the_sampled_distribution():
    """The statistical test of tests/test_lossless.py, with draft lengths chosen at random."""
    sampling = SamplingParams(temperature=1.0)
    target_model, draft_model = peaked_llama(seed=3), peaked_llama(seed=4)
    prompt = torch.tensor([0, 3, 2])
    config = DecodeConfig(k=2, sampling=sampling, controller=RandomLengths(seed=0))
    counts, traces = sample_batched(Target(target_model), SmallLMDrafter(draft_model), prompt, config)
    lengths = {t.num_proposed for t in traces}
    pvalue, df = chi_square_test(counts, exact_distribution(target_model, prompt, sampling))
    assert power_at_effect(df, 0.12) >= 0.95
    assert pvalue > 1e-3
    assert lengths == {0, 1, 2}


def test_cost_model_closed_forms():
    cost = CostModel.linear(draft_ratio=0.25, width_slope=0.1, max_k=4, target_seconds=2e-3)
    assert cost.token_cost(0) == pytest.approx(1.0)  # a target-only step is the unit
    assert cost.step_seconds(3) == pytest.approx(2e-3 * (1 + 0.3) + 3 * 0.25 * 2e-3)
    assert cost.token_cost(3) == pytest.approx(1.3 + 0.75)
    assert cost.goodput(10, [0] * 10) == pytest.approx(10 / (10 * 2e-3))
    assert CostModel.from_json(cost.to_json()) == cost
    batched = CostModel((1, 4), ((1.0, 1.5), (2.0, 3.0)), (0.1, 0.4))
    assert batched.target(2, batch=2) == pytest.approx(1.5 + (3.0 - 1.5) / 3)  # interpolated
    assert batched.draft(8) == pytest.approx(0.1 + 0.3 / 3 * 7)  # extrapolated
    with pytest.raises(ValueError, match="verify width 6 is outside the measured 1..5: profile the cost model with max_k >= 5"):
        cost.target(6)


def test_heuristic_schedule_is_plus_two_minus_one_capped():
    schedule = HeuristicSchedule(max_k=6, start=2)
    session = schedule.start()
    assert session.budget(8, 10) == 2
    session.observe(2, 2)
    assert schedule.current == 4
    session.observe(4, 4)
    assert schedule.current == 6  # capped at max_k
    session.observe(6, 1)
    assert schedule.current == 5
    for _ in range(10):
        session.observe(1, 0)
    assert schedule.current == 1
    assert session.budget(0, 10) == 0  # never beyond the step's limit


def test_refit_threshold_minimises_cost_weighted_mistakes():
    outcomes = [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.3, False), (0.2, False)]
    # Thresholds 0.6 / 0.7 / 0.8 cost 1 refusal*w / 1 acceptance / 1 acceptance + 1 refusal*...:
    assert best_threshold(outcomes, false_continue=0.5, false_stop=1.0, current=0.5) == 0.6
    assert best_threshold(outcomes, false_continue=5.0, false_stop=1.0, current=0.5) == 0.8
    assert best_threshold([(0.4, True)], 0.5, 1.0, current=0.42) == 0.42  # one class: keep
    refit = RefitThreshold(COST, start=0.5, refit_every=4)
    refit.record([(0.95, True), (0.9, True), (0.85, False), (0.3, False), (0.25, False)])
    assert refit.threshold == pytest.approx(0.9)


def test_bandit_tries_every_k_then_prefers_the_best_goodput():
    bandit = BanditK(COST, max_k=3, exploration=0.1)
    session = bandit.start()
    for k in range(4):
        assert session.budget(8, 10) == k  # untried arms first
        session.observe(k, min(k, 1))  # only the first proposal is ever accepted
    for _ in range(200):
        k = session.budget(8, 10)
        session.observe(k, min(k, 1))
    # k=1 emits 2 tokens for 1.28 target steps; k=0: 1 for 1; k=2: 2 for 1.56
    assert bandit.chosen[-50:].count(1) > 45


def test_goodput_learns_every_k_from_one_verdict():
    controller = GoodputK(COST, max_k=3, gamma=1.0, optimism=0.0)
    controller.update(3, 1)  # position 0 accepted, position 1 refused, position 2 never judged
    assert (controller.judged, controller.accepted) == ([1.0, 1.0, 0.0], [1.0, 0.0, 0.0])
    a0, a1, a2 = 2 / 3, 1 / 3, 1 / 2  # (accepted + 1) / (judged + 2)
    emitted = [1, 1 + a0, 1 + a0 + a0 * a1, 1 + a0 + a0 * a1 + a0 * a1 * a2]
    expected = [e / COST.token_cost(k) for k, e in enumerate(emitted)]
    assert controller.expected_goodput(optimistic=False) == pytest.approx(expected)


def drive_goodput(controller: GoodputK, accepts_up_to: int, steps: int) -> list[int]:
    """Steps against a draft whose first ``accepts_up_to`` proposals are always accepted."""
    session = controller.start()
    for _ in range(steps):
        k = session.budget(8, 10)
        session.observe(k, min(k, accepts_up_to))
    return controller.chosen[-steps:]


def test_goodput_finds_the_best_k_and_falls_back_to_the_target():
    controller = GoodputK(COST, max_k=3)
    # Only the first proposal is ever accepted: k=1 emits 2 for 1.28 (best), k=2 2 for 1.56.
    assert drive_goodput(controller, 1, 300)[-100:].count(1) >= 95
    # The draft turns useless: k=0 (1 for 1) beats k=1 (1 for 1.28). Forgetting takes about
    # one discount window (1 / (1 - gamma) = 200 steps); then only rare one-step probes.
    useless = drive_goodput(controller, 0, 600)
    assert useless[-300:].count(0) >= 280


def test_goodput_reprobes_and_follows_a_draft_that_improves():
    controller = GoodputK(COST, max_k=3)
    drive_goodput(controller, 0, 400)  # settled on k=0
    # Every proposal is accepted from now on: optimism re-probes k=1, which then pays, and
    # the model extends to the deepest k (4 for 1.84 target steps).
    assert drive_goodput(controller, 3, 400)[-100:].count(3) >= 95


def test_learned_controller_follows_its_policy_and_probes_when_skipping():
    controller = LearnedController(position_policy(stop_at=2, skip_below=0.3), max_positions=256, probe_every=3)
    session = controller.start()
    assert session.budget(8, 10) == 8  # prior acceptance 0.5: draft
    logits = torch.zeros(5)
    assert session.stop(1, logits, 0) is False and session.stop(2, logits, 0) is True
    session.observe(2, 0)  # one refusal: acceptance (0 + 1) / (1 + 2) = 0.33 -> still drafts
    session.observe(1, 0)  # 1/4 < 0.3: skip
    assert [session.budget(8, 10) for _ in range(6)] == [0, 0, 1, 0, 0, 1]


def test_token_stats_closed_form_and_tokens_the_draft_can_never_propose():
    """Probability and entropy / log V of the draft distribution; a token outside a reduced
    draft vocabulary (logit -inf, as an EAGLE-3 head scatters them) adds 0, never nan."""
    prob, entropy = token_stats(torch.zeros(4), 1)  # uniform over 4: p = 1/4, entropy = log 4
    assert prob == pytest.approx(0.25) and entropy == pytest.approx(1.0)
    reduced = torch.tensor([0.0, 0.0, float("-inf"), float("-inf")])  # uniform over 2 of 4
    prob, entropy = token_stats(reduced, 0)
    assert prob == pytest.approx(0.5) and entropy == pytest.approx(np.log(2) / np.log(4))
    assert np.isfinite(draft_features(prob, entropy, 1, 8, 0.5, 0.5, 10, 100)).all()


def test_tiny_policy_round_trips_and_refuses_other_features(tmp_path):
    policy = position_policy(3)
    policy.save(tmp_path / "p")
    loaded = TinyPolicy.load(tmp_path / "p")
    features = draft_features(0.5, 0.2, 2, 8, 0.3, 0.6, 40, 256)
    assert loaded.act(features) == policy.act(features) == CONTINUE
    assert loaded.act(draft_features(0.5, 0.2, 3, 8, 0.3, 0.6, 40, 256)) == VERIFY
    manifest = (tmp_path / "p" / "controller.json")
    manifest.write_text(manifest.read_text().replace('"context"', '"context_len"'))
    with pytest.raises(ValueError, match="retrain it on DraftLength-v0"):
        TinyPolicy.load(tmp_path / "p")


def test_acceptance_tally_counts_judged_proposals():
    tally = AcceptanceTally()
    assert tally.rate == 0.5
    tally.observe(4, 2)  # 2 accepted, the 3rd refused, the 4th never judged
    tally.observe(0, 0)  # a plain target step judges nothing
    assert (tally.accepted, tally.judged) == (2, 3)


def test_short_steps_still_teach_the_target_token(random_target_model, draft):
    """A step with no proposals (or all accepted) becomes a trace with the target's own
    token as one more position: online learning does not starve when drafts get short."""
    decoder = SpeculativeDecoder(Target(random_target_model), draft,
                                 DecodeConfig(k=2, controller=build_controller("bandit", 2, COST)), [EOS])
    gen = decoder.generate(seeded_prompts(1, 97, seed=3)[0], 30)
    plain = next(t for t in gen.traces if t.num_proposed == 0)
    taught = with_target_token(plain)
    assert taught.proposed.tolist() == plain.emitted.tolist() and taught.accept_mask.tolist() == [True]
    assert taught.target_probs.shape == (2, 97)
    refused = next(t for t in gen.traces if t.num_accepted < t.num_proposed)
    assert with_target_token(refused) is refused


@pytest.mark.parametrize(
    "override, message",
    [
        ("decode.controller=greedy", "decode.controller='greedy' is not one of fixed, heuristic, confidence, refit, bandit, goodput, learned"),
        ("decode.draft_confidence=0.5", "decode.draft_confidence=0.5 is a threshold, but decode.controller=goodput decides"),
        ("decode.controller_train_steps=10", "decode.controller_train_steps=10 must be >= 256"),
        ("decode.controller_policy=/nonexistent", "decode.controller_policy is only read by decode.controller=learned"),
    ],
)
def test_bad_controller_config_names_the_key_and_the_fix(override, message):
    from aurora_rl.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config([override])
    assert load_config([]).decode.controller == "goodput"  # the main job's default
    assert load_config(["decode.controller=confidence", "decode.draft_confidence=0.4"]).decode.draft_confidence == 0.4
