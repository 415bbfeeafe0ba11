"""Serving with the training-free drafters and the hybrid: every answer is the target's own
greedy text, the global suffix trie fills from the traffic, the hybrid's learner trains and
publishes while the suffix drafter proposes, and the serve CLI refuses meaningless pairs."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.hybrid import HybridDrafter
from aurora_rl.policies.prompt_lookup import PromptLookupDrafter
from aurora_rl.policies.suffix import SuffixDrafter
from aurora_rl.serve.__main__ import main as serve_main
from aurora_rl.runtime.config import EngineSection, SnapshotSection
from aurora_rl.online.learner import LearnerConfig
from aurora_rl.runtime.server import build_server
from serving_harness import MODEL, complete, expected_text, noisy_drafter, serving, tiny, wait_for

PROMPTS = ["def add(a, b):", "SELECT name", "The river", "Q: 3 + 4 =", "def mul(a, b):", "SELECT city"]


def served(drafter, learner=None, snapshot_dir=None):
    tokenizer, model = tiny()
    return build_server(
        Target(model), tokenizer, drafter, decode=DecodeConfig(k=4), model_name=MODEL, learner=learner,
        engine=EngineSection(max_batch=4), snapshots=SnapshotSection(directory=snapshot_dir),
    )  # fmt: skip


def answer_twice_concurrently(url):
    """Every prompt twice (batched steps, rows sharing the trie); returns the answers."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda p: (p, complete(url, p)["choices"][0]["text"]), PROMPTS * 2))


@pytest.mark.parametrize("kind", ["suffix", "prompt_lookup"])
def test_model_free_server_answers_with_the_target_greedy_text(kind):
    _, model = tiny()
    vocab = model.config.vocab_size
    drafter = SuffixDrafter(vocab) if kind == "suffix" else PromptLookupDrafter(vocab)
    server = served(drafter)
    with serving(server) as url:
        for prompt, text in answer_twice_concurrently(url):
            assert text == expected_text(prompt)
    if kind == "suffix":
        assert drafter.index.num_sequences >= len(PROMPTS) * 2 and drafter.index.num_tokens > 100


def test_hybrid_server_learns_publishes_and_stays_lossless(tmp_path):
    _, model = tiny()
    hybrid = HybridDrafter(noisy_drafter(model, scale=0.2, seed=1), SuffixDrafter(model.config.vocab_size))
    learner = LearnerConfig(mode="async", min_traces=8, publish_every=2, gate=False, rollback_window=0)
    server = served(hybrid, learner, str(tmp_path / "snapshots"))
    with serving(server) as url:
        for prompt, text in answer_twice_concurrently(url):
            assert text == expected_text(prompt)
        wait_for(lambda: server.live.version >= 1, what="a published hybrid version")
        for prompt, text in answer_twice_concurrently(url):
            assert text == expected_text(prompt)
    live = server.live.current
    assert isinstance(live, HybridDrafter) and live.suffix is hybrid.suffix  # versions share the trie
    assert min(hybrid.counts.values()) > 0
    assert (tmp_path / "snapshots" / "learner" / "suffix" / "suffix_index.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["drafter.kind=suffix"], "error: drafter.kind='suffix' has nothing to train (it adapts by remembering the traffic): "
                                  "set learn=false, or serve a learned draft with with_suffix=true to learn and use the suffix drafter together"),
        (["drafter.kind=prompt_lookup", "learn=false", "with_suffix=true"],
         "error: with_suffix=true combines a learned draft with the suffix drafter: set drafter.kind to one of small_lm, eagle"),
        (["with_suffix=true", "learn=false", "snapshots.follow=/tmp"],
         "error: snapshots.follow serves small_lm or eagle snapshots only; drop with_suffix / use a learned drafter.kind"),
        (["decode.k=8", "drafter.suffix.max_depth=8"],
         "error: drafter.suffix.max_depth=8 must exceed decode.k=8: the trie holds the matched tokens and the proposal "
         "together; raise max_depth or lower k"),
    ],
)  # fmt: skip
def test_serve_cli_refuses_bad_model_free_configs(capsys, argv, message):
    assert serve_main(argv) == 2
    assert capsys.readouterr().err.strip() == message
