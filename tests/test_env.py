"""``aurora_rl/SpecDecode-v0``: Gymnasium conformance, seeding, errors, rewards, rendering."""

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import InvalidAction, ResetNeeded
from gymnasium.utils.env_checker import check_env

import aurora_rl  # noqa: F401  (registers the env)
from aurora_rl.envs.agent import DraftAgent
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.policies.suffix import SuffixDrafter
from aurora_rl.world import get_world

ENV_ID = "aurora_rl/SpecDecode-v0"


@pytest.fixture(scope="module")
def env():
    return gym.make(ENV_ID)  # no arguments: the tiny world


def test_registered_env_passes_gymnasium_checker(env):
    check_env(env.unwrapped, skip_render_check=True)


# Draft logits are unbounded on purpose: finite bounds would reject a sharp draft's real
# logits (or make sampled actions degenerate), so the checker's "probably too low" is moot.
@pytest.mark.filterwarnings("ignore:.*Box action space m.* value is .*infinity")
def test_sampling_env_passes_gymnasium_checker():
    check_env(gym.make(ENV_ID, temperature=1.0, k=3, max_new_tokens=16).unwrapped, skip_render_check=True)


def rollout(env, seed, actions_seed):
    """A whole episode of random actions; everything observable, for comparison."""
    obs, info = env.reset(seed=seed)
    env.action_space.seed(actions_seed)
    frames = [(obs["tokens"].copy(), info["prompt_domain"])]
    while True:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        frames.append((obs["tokens"].copy(), reward, info["accept_mask"].tolist(), info["emitted_tokens"]))
        if terminated or truncated:
            return frames


def _frames_equal(a, b):
    if len(a) != len(b):
        return False
    return all(
        all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(fa, fb))
        for fa, fb in zip(a, b)
    )


def test_same_seed_gives_identical_episodes_across_envs():
    a = gym.make(ENV_ID, temperature=0.8, max_new_tokens=24)
    b = gym.make(ENV_ID, temperature=0.8, max_new_tokens=24)
    assert _frames_equal(rollout(a, seed=3, actions_seed=4), rollout(b, seed=3, actions_seed=4))
    assert not _frames_equal(rollout(a, seed=3, actions_seed=4), rollout(a, seed=5, actions_seed=4))


def test_episode_output_is_the_targets_greedy_output_and_reward_counts_accepts(env):
    """Whatever the agent proposes, the text is the target's own; reward = accepted proposals."""
    unwrapped = env.unwrapped
    world = get_world("tiny")
    drafter = SmallLMDrafter.from_config(world.drafter_config(), seed=0)
    proposers = {"random": drafter, "target": SmallLMDrafter(unwrapped.target.model),
                 "suffix": SuffixDrafter(unwrapped.vocab_size)}  # short proposals: filled up to k  # fmt: skip
    for proposer in ("random", "target", "suffix", "suffix"):  # the second suffix episode reads the first's output
        obs, info = env.reset(seed=11)
        prompt = obs["tokens"][: obs["length"]].copy()
        agent = DraftAgent(proposers[proposer], env)
        agent.begin(obs, info)
        total_reward, accepted = 0.0, 0
        while True:
            obs, reward, terminated, truncated, info = env.step(agent.act(obs))
            assert reward == info["num_accepted"] == int(info["accept_mask"].sum())
            assert info["per_token_reward"].tolist() == info["accept_mask"].astype(np.float32).tolist()
            total_reward += reward
            accepted += info["num_accepted"]
            if terminated or truncated:
                break
            agent.observe(info)
        generated = obs["tokens"][len(prompt) : obs["length"]]
        reference = unwrapped.target.model.generate(
            torch.tensor(prompt)[None], max_new_tokens=unwrapped.max_new_tokens, do_sample=False,
            eos_token_id=unwrapped.eos_token_ids[0], pad_token_id=unwrapped.pad_id,
        )[0, len(prompt):]
        assert generated.tolist() == reference.tolist()
        if proposer == "target":  # the target drafting for itself is always accepted
            assert all(info["accept_mask"][: info["num_verified"]])


def test_info_carries_target_probabilities_for_every_verified_position(env):
    obs, info = env.reset(seed=2)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    probs = info["target_probs"]
    k = env.unwrapped.k
    assert probs.shape == (k + 1, env.unwrapped.vocab_size)
    np.testing.assert_allclose(probs[: info["num_verified"] + 1].sum(-1), 1.0, rtol=1e-5)
    # greedy: the target's token after the accepted prefix is the argmax at that position
    assert info["next_token"] == int(probs[info["num_accepted"]].argmax())


def test_topk_target_probabilities_are_fixed_shape():
    env = gym.make(ENV_ID, target_probs_topk=5)
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["target_topk_probs"].shape == (env.unwrapped.k + 1, 5)
    assert info["target_topk_ids"].dtype == np.int64 and "target_probs" not in info


def test_episode_truncates_at_the_token_budget_and_k_shrinks_near_it():
    env = gym.make(ENV_ID, k=4, max_new_tokens=6)
    obs, _ = env.reset(seed=0, options={"prompt": "SELECT"})
    start, verified = obs["length"], []
    while True:
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        verified.append(info["num_verified"])
        if terminated or truncated:
            break
    assert terminated or obs["length"] - start == 6
    assert all(v <= 4 for v in verified)


def test_step_before_reset_is_refused():
    env = gym.make(ENV_ID).unwrapped
    with pytest.raises(ResetNeeded, match=re.escape("Cannot call env.step() before calling env.reset()")):
        env.step(env.action_space.sample())


def test_action_outside_the_space_is_refused_with_the_expected_shape(env):
    env.reset(seed=0)
    vocab, k = env.unwrapped.vocab_size, env.unwrapped.k
    bad = {"tokens": np.full(k, vocab, dtype=np.int64)}
    with pytest.raises(InvalidAction, match=re.escape(f"give 'tokens' as {k} ints in [0, {vocab})")):
        env.unwrapped.step(bad)


def test_k_larger_than_the_budget_is_refused():
    with pytest.raises(ValueError, match=re.escape("k=8 proposals cannot fit max_new_tokens=8: a step emits up to k + 1 tokens; use k < max_new_tokens")):
        gym.make(ENV_ID, k=8, max_new_tokens=8)


def test_vocab_mismatch_between_model_and_tokenizer_is_refused(tmp_path):
    """A model directory whose tokenizer is larger than the model's vocabulary."""
    from conftest import make_llama

    world = get_world("tiny")
    small = make_llama(vocab=64, hidden=16, layers=1, seed=0)
    small.save_pretrained(tmp_path)
    world.tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=re.escape("but the model's vocabulary has 64: they do not belong together")):
        gym.make(ENV_ID, model=str(tmp_path))


def test_a_model_saved_locally_works_through_the_same_path(tmp_path):
    world = get_world("tiny")
    world.target().save_pretrained(tmp_path)
    world.tokenizer().save_pretrained(tmp_path)
    env = gym.make(ENV_ID, model=str(tmp_path))
    obs, _ = env.reset(seed=0)
    _, reward, _, _, info = env.step(env.action_space.sample())
    assert 0 <= reward <= env.unwrapped.k and len(info["emitted_tokens"]) >= 1


def test_ansi_render_marks_accepted_rejected_and_target_tokens():
    env = gym.make(ENV_ID, render_mode="ansi")
    obs, info = env.reset(seed=0)
    agent = DraftAgent(SmallLMDrafter(env.unwrapped.target.model), env)
    agent.begin(obs, info)
    env.step(agent.act(obs))
    text = env.render()
    assert "\033[32m" in text and "\033[1;33m" in text
    assert re.search(r"\[step 0: accepted \d/4, \d+/64 tokens\]", text)


def test_env_trace_equals_engine_trace_and_vector_copies_share_one_target():
    """Same prompt, same drafter, greedy: the env's ``last_trace`` and the serving engine's
    traces are the same steps (proposals, verdicts, emitted tokens, target probabilities).
    Env copies built from one ``load_env_sources`` share its target model."""
    from aurora_rl.core.spec import DecodeConfig
    from aurora_rl.envs.sources import load_env_sources
    from aurora_rl.envs.spec_decode import SpecDecodeEnv
    from aurora_rl.runtime.config import EngineSection
    from aurora_rl.runtime.engine import Engine, GenerationRequest

    sources = load_env_sources("tiny", None, None, None)
    envs = [SpecDecodeEnv(k=3, max_new_tokens=32, sources=sources) for _ in range(2)]
    assert envs[0].target.model is envs[1].target.model is sources.model
    env = envs[0]
    noisy = SmallLMDrafter.from_config(sources.model.config, seed=0)
    noisy.model.load_state_dict(sources.model.state_dict())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the target with noise: agrees part of the time, so verdicts vary
        for param in noisy.model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3 * param.std().clamp_min(1e-3))

    obs, info = env.reset(seed=5)
    prompt = tuple(int(t) for t in obs["tokens"][: obs["length"]])
    agent = DraftAgent(noisy, env)
    agent.begin(obs, info)
    env_traces = []
    while True:
        obs, _, terminated, truncated, info = env.step(agent.act(obs))
        env_traces.append(env.last_trace)
        if terminated or truncated:
            break
        agent.observe(info)

    engine = Engine(env.target, noisy, DecodeConfig(k=3), env.eos_token_ids, EngineSection(max_active=1))
    engine_traces = []
    engine.add_trace_listener(engine_traces.append)
    engine.submit(GenerationRequest("r", prompt, 32), lambda output: None)
    while engine.busy:
        engine.step()

    assert len(env_traces) == len(engine_traces) > 3
    assert {t.num_accepted for t in env_traces} != {3}  # some rejections: the comparison has teeth
    for ours, theirs in zip(env_traces, engine_traces):
        assert ours.context_ids.tolist() == theirs.context_ids.tolist()
        assert ours.proposed.tolist() == theirs.proposed.tolist()
        assert ours.accept_mask.tolist() == theirs.accept_mask.tolist()
        assert ours.emitted.tolist() == theirs.emitted.tolist()
        torch.testing.assert_close(ours.target_probs, theirs.target_probs)
