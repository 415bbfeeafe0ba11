"""The suffix trie, the suffix drafter's state, prompt lookup's matching, and the hybrid's
learning view: closed forms on hand-made sequences, bounded memory, save/load round trips."""

import itertools
import random

import pytest
import torch

from aurora_rl.core.sampling import GREEDY, SamplingParams
from aurora_rl.core.spec import DecodeConfig, speculate_step, start_decode
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.target import Target
from aurora_rl.core.trace import Trace
from aurora_rl.policies.eagle import EagleDrafter
from aurora_rl.policies.hybrid import HybridDrafter
from aurora_rl.policies.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.policies.suffix import SuffixConfig, SuffixDrafter
from aurora_rl.policies.suffix_index import SuffixIndex
from aurora_rl.train.config import ConfigError, load_config
from conftest import make_llama


def all_substrings(sequences, depth):
    counts = {}
    for seq in sequences:
        for start, end in itertools.combinations(range(len(seq) + 1), 2):
            if end - start <= depth:
                key = tuple(seq[start:end])
                counts[key] = counts.get(key, 0) + 1
    return counts


def trie_paths(node, prefix=()):
    for token, child in node.children.items():
        yield prefix + (token,), child.count
        yield from trie_paths(child, prefix + (token,))


def test_trie_counts_every_substring_up_to_its_depth_and_forgets_evicted_sequences():
    rng = random.Random(0)
    sequences = [[rng.randrange(4) for _ in range(rng.randrange(1, 30))] for _ in range(12)]
    index = SuffixIndex(max_depth=5)
    for seq_id, seq in enumerate(sequences):  # appended in pieces, as decoding commits them
        for start in range(0, len(seq), 3):
            index.extend(seq_id, seq[start : start + 3])
    assert dict(trie_paths(index.root)) == all_substrings(sequences, 5)
    for seq_id in (3, 0, 7):
        index.remove(seq_id)
    kept = [seq for i, seq in enumerate(sequences) if i not in (3, 0, 7)]
    assert dict(trie_paths(index.root)) == all_substrings(kept, 5)
    assert index.num_nodes == len(all_substrings(kept, 5))
    assert index.num_tokens == sum(map(len, kept))


def test_longest_match_is_the_longest_context_tail_seen_with_a_continuation():
    index = SuffixIndex(max_depth=8)
    index.extend(0, [5, 6, 7, 8, 9])
    match = index.longest_match([1, 2, 6, 7, 8], max_length=7)
    assert match.length == 3 and list(match.node.children) == [9]
    assert index.longest_match([1, 2, 9], max_length=7) is None  # 9 was never followed
    assert index.longest_match([6, 7, 8], max_length=2).length == 2


def test_memory_stays_within_its_bound_under_a_long_stream():
    """FIFO eviction keeps tokens <= max_cached_tokens and nodes <= tokens * depth."""
    drafter = SuffixDrafter(50, SuffixConfig(max_depth=6, max_cached_tokens=300))
    rng = random.Random(1)
    for request in range(400):
        session = drafter.start(torch.tensor([0, 1, 2]))
        for _ in range(rng.randrange(5, 40)):
            proposal = session.propose(4, GREEDY, None)
            session.commit(rng.randrange(len(proposal) + 1), rng.randrange(50), None)
        index = drafter.index
        assert index.num_tokens <= 300
        assert index.num_nodes <= index.num_tokens * 6
    assert index.evicted > 300
    assert index.num_nodes == len(all_substrings([t for _, t in index.sequences()], 6))


def test_proposals_follow_the_most_frequent_continuation_with_adaptive_length_and_cutoff():
    drafter = SuffixDrafter(20, SuffixConfig(max_depth=10, min_token_prob=0.3, use_request=False))
    for tokens in ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 9, 9], [7, 2, 3, 4, 6]):
        drafter.add_output(next(drafter._ids), tokens)
    session = drafter.start(torch.tensor([0, 1, 2]))  # match "1 2" (length 2): at most 2 tokens
    proposal = session.propose(8, GREEDY, None)
    assert proposal.tokens.tolist() == [3, 4]
    assert torch.equal(proposal.probs, torch.nn.functional.one_hot(torch.tensor([3, 4]), 20).float())
    session.commit(2, 4, None)  # the sequence is now 0 1 2 3 4 4: tail "4" continues as 5 (2/3) or 6
    assert session.propose(8, GREEDY, None).tokens.tolist() == [5]
    # Under sampling each token carries the empirical q it was drawn from.
    sampled = drafter.start(torch.tensor([1, 2, 3])).propose(1, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert sampled.probs[0, 4].item() == pytest.approx(2 / 3) and sampled.probs[0, 9].item() == pytest.approx(1 / 3)


def test_suffix_state_round_trips_through_save_and_load(tmp_path):
    drafter = SuffixDrafter(30, SuffixConfig(max_depth=7, max_cached_tokens=90))
    rng = random.Random(2)
    for _ in range(20):
        drafter.add_output(next(drafter._ids), [rng.randrange(30) for _ in range(12)])
    drafter.save_pretrained(tmp_path / "suffix")
    loaded = SuffixDrafter.from_pretrained(tmp_path / "suffix")
    assert loaded.config == drafter.config and loaded.vocab_size == 30
    assert loaded.index.sequences() == drafter.index.sequences()
    assert dict(trie_paths(loaded.index.root)) == dict(trie_paths(drafter.index.root))
    context = torch.tensor(drafter.index.sequences()[-1][1][:5])
    assert loaded.start(context).propose(6, GREEDY, None).tokens.tolist() == drafter.start(context).propose(6, GREEDY, None).tokens.tolist()


def test_prompt_lookup_proposes_what_followed_the_latest_earlier_occurrence(tmp_path):
    drafter = PromptLookupDrafter(20, PromptLookupConfig(max_ngram=2))
    session = drafter.start(torch.tensor([4, 5, 6, 7, 4, 5, 8, 9, 4, 5]))
    assert session.propose(3, GREEDY, None).tokens.tolist() == [8, 9, 4]  # "4 5" last followed by 8
    session.commit(1, 3, None)  # ... 4 5 8 3: "8 3" unseen, "3" unseen
    assert session.propose(3, GREEDY, None).tokens.tolist() == []
    drafter.save_pretrained(tmp_path / "pl")
    assert PromptLookupDrafter.from_pretrained(tmp_path / "pl").config == drafter.config


def test_hybrid_relabels_suffix_steps_onto_the_target_path_and_saves_both_parts(tmp_path):
    learned = SmallLMDrafter(make_llama(20, 16, 1, seed=3))
    suffix = SuffixDrafter(20, SuffixConfig(max_depth=8, use_request=False))
    suffix.add_output(99, [1, 2, 3, 4, 5, 6])
    hybrid = HybridDrafter(learned, suffix, min_suffix_score=1.0)
    session = hybrid.start(torch.tensor([0, 1, 2, 3]))
    proposal = session.propose(3, GREEDY, None)
    assert proposal.tokens.tolist() == [4, 5, 6] and hybrid.counts == {"suffix": 1, "learned": 0}
    trace = Trace(
        request_id="r", domain="d", step=0, draft_version=0, context_ids=torch.tensor([0, 1, 2, 3]),
        proposed=proposal.tokens, draft_logprobs=proposal.logprobs, target_probs=torch.rand(4, 20).softmax(-1),
        accept_mask=torch.tensor([True, False, False]), emitted=torch.tensor([4, 7]),
    )  # fmt: skip
    view = hybrid.learning_view(trace)
    assert view.proposed.tolist() == [4] and view.accept_mask.tolist() == [True]
    assert torch.equal(view.target_probs, trace.target_probs[:2])
    assert hybrid.learning_view(trace) is trace  # a step it did not propose with the suffix drafter
    hybrid.save_pretrained(tmp_path / "h")
    loaded = HybridDrafter.from_pretrained(tmp_path / "h", SmallLMDrafter.from_pretrained)
    assert loaded.suffix.index.sequences() == suffix.index.sequences()
    assert all(torch.equal(a, b) for a, b in zip(loaded.learned.model.state_dict().values(), learned.model.state_dict().values()))


class NeverDraft:
    """A controller that budgets no proposals and records every verdict it is shown."""

    name = "never"

    def __init__(self) -> None:
        self.asked, self.observed = 0, []

    def start(self):
        return self

    def budget(self, limit: int, context_len: int) -> int:
        self.asked += 1
        return 0

    def stop(self, position, raw_logits, token) -> bool:
        return False

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        self.observed.append((num_proposed, num_accepted))


def test_hybrid_suffix_steps_are_not_the_controllers_and_its_learned_steps_are():
    target = Target(make_llama(20, 16, 1, seed=5))
    suffix = SuffixDrafter(20, SuffixConfig(max_depth=8, use_request=False))
    suffix.add_output(99, [1, 2, 3, 4, 5, 6])
    hybrid = HybridDrafter(SmallLMDrafter(make_llama(20, 16, 1, seed=3)), suffix, min_suffix_score=1.0)
    controller = NeverDraft()
    config = DecodeConfig(k=3, controller=controller)
    # A context the trie continues: a free suffix step with the whole k, unseen by the controller.
    matched = start_decode(target, [0, 1, 2, 3], 8, max_k=3)
    trace = speculate_step(hybrid, target, matched, config)
    assert trace.proposed.tolist() == [4, 5, 6] and (controller.asked, controller.observed) == (0, [])
    # No match: the learned drafter's step, which the controller budgets (0 here) and observes.
    unmatched = start_decode(target, [0, 9, 9, 9], 8, max_k=3)
    trace = speculate_step(hybrid, target, unmatched, config)
    assert trace.num_proposed == 0 and (controller.asked, controller.observed) == (1, [(0, 0)])


@pytest.mark.parametrize("learned_kind", ["small_lm", "eagle"])
def test_hybrid_parts_both_keep_the_whole_sequence_whoever_proposed(learned_kind):
    model = make_llama(20, 16, 1, seed=7)  # greedy: 18 2 18 2 18 2 0 6 7 8 19 3 6 7 8 12 12 ...
    if learned_kind == "eagle":
        target = Target(model, hidden_layers=(-1,))
        learned = EagleDrafter.from_target(target, seed=1)
    else:
        target, learned = Target(model), SmallLMDrafter(make_llama(20, 16, 1, seed=3))
    suffix = SuffixDrafter(20, SuffixConfig(max_depth=8, use_request=False))
    greedy = SpeculativeDecoder(target, None, DecodeConfig(k=1), eos_token_ids=[]).generate(torch.tensor([0, 1, 2]), 30)
    suffix.add_output(99, [0, 1, 2, *greedy.tokens.tolist()[:6]])  # the trie knows the output's first part
    hybrid = HybridDrafter(learned, suffix, min_suffix_score=1.0)
    state = start_decode(target, [0, 1, 2], 30, max_k=3)
    while state.remaining > 4:  # the finishing step commits to nobody: stop before it
        speculate_step(hybrid, target, state, DecodeConfig(k=3))
    assert hybrid.counts["suffix"] > 0 and hybrid.counts["learned"] > 0  # both parts proposed
    sequence = state.sequence.tolist()
    assert sequence[3:] == greedy.tokens.tolist()[: len(sequence) - 3]  # lossless
    assert state.session.suffix.tokens == sequence
    assert state.session.learned.tokens == sequence


@pytest.mark.parametrize(
    "override, message",
    [
        ("drafter.suffix.max_depth=4", "drafter.suffix.max_depth=4 must exceed decode.k=4: the trie holds the matched tokens and the proposal together; raise max_depth or lower k"),
        ("drafter.suffix.min_token_prob=1.5", "drafter.suffix.min_token_prob=1.5 must be in [0, 1)"),
        ("drafter.suffix.max_spec_factor=0", "drafter.suffix.max_spec_factor=0.0 must be > 0"),
        ("drafter.prompt_lookup.min_ngram=4", "drafter.prompt_lookup: need 1 <= min_ngram <= max_ngram, got min_ngram=4, max_ngram=3"),
        ("drafter.hybrid_min_suffix_score=0", "drafter.hybrid_min_suffix_score=0.0 must be > 0"),
        ("drafter.kind=suffix", "drafter.kind='suffix' is not one of small_lm, eagle (model-free drafters are arms: arms=[suffix,prompt_lookup])"),
    ],
)
def test_bad_model_free_config_names_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError) as error:
        load_config([override])
    assert str(error.value) == message
