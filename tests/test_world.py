"""The miniature world: building, loading, caching and the LM trainer.

The tiny world is built once into the default cache (later runs load it in well under a
second); cache behaviour is tested on a micro recipe in temporary directories.
"""

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from aurora_rl.world import RECIPES, LMTraining, ModelShape, WorldRecipe, get_world, train_causal_lm, world_dir

# Every stage of a real build, at a size that builds in about a second.
MICRO = dataclasses.replace(
    RECIPES["tiny"],
    name="micro",
    train_samples_per_domain=24,
    heldout_samples_per_domain=4,
    vocab_size=320,
    target=ModelShape(layers=1, hidden=32, heads=2, intermediate=64),
    drafter=ModelShape(layers=1, hidden=16, heads=2, intermediate=32),
    training=LMTraining(steps=3, batch_size=2, seq_len=64, lr=3e-3, warmup=1),
)


@pytest.fixture(scope="module")
def tiny():
    return get_world("tiny", progress=False)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_world_loads_like_a_hub_model(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.path)
    model = AutoModelForCausalLM.from_pretrained(tiny.path)
    assert isinstance(model, LlamaForCausalLM)
    assert len(tokenizer) == model.config.vocab_size == tiny.info["vocab_size"]
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
    )  # fmt: skip
    assert model.config.max_position_embeddings >= 512
    prompt = tiny.dataset("heldout")[0]["prompt"]
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompt
    # The World accessors give the same objects as the Auto classes.
    assert tiny.tokenizer().get_vocab() == tokenizer.get_vocab()
    target = tiny.target()
    assert not target.training
    for (name, mine), (_, theirs) in zip(target.state_dict().items(), model.state_dict().items()):
        assert torch.equal(mine, theirs), name


def test_datasets_have_domains_columns_and_disjoint_splits(tiny):
    assert tiny.domains == ["code", "prose", "math", "sql", "chat"]
    prompts = {}
    for split, per_domain in (("train", tiny.recipe.train_samples_per_domain), ("heldout", tiny.recipe.heldout_samples_per_domain)):
        dataset = tiny.dataset(split)
        assert dataset.column_names == ["domain", "prompt", "reference"]
        domains = list(dataset["domain"])
        assert {domain: domains.count(domain) for domain in tiny.domains} == dict.fromkeys(tiny.domains, per_domain)
        assert all(prompt and reference for prompt, reference in zip(dataset["prompt"], dataset["reference"]))
        prompts[split] = set(dataset["prompt"])
    assert not prompts["train"] & prompts["heldout"]
    with pytest.raises(ValueError, match="unknown split 'test'"):
        tiny.dataset("test")


def test_a_split_restricted_to_domains_holds_exactly_their_rows(tiny):
    some = tiny.dataset("train", ["sql", "math"])
    everything = tiny.dataset("train")
    assert set(some["domain"]) == {"math", "sql"}
    assert len(some) == 2 * tiny.recipe.train_samples_per_domain
    assert list(some["prompt"]) == [row["prompt"] for row in everything if row["domain"] in ("math", "sql")]
    assert len(tiny.dataset("heldout", None)) == len(tiny.dataset("heldout"))


def test_each_domain_looks_like_itself(tiny):
    heldout = tiny.dataset("heldout")
    first = {row["domain"]: row for row in reversed(list(heldout))}
    assert "def " in first["code"]["prompt"] + first["code"]["reference"] or "    " in first["code"]["reference"]
    assert first["math"]["prompt"].startswith("Problem: ") and "Answer: " in first["math"]["reference"]
    assert first["sql"]["prompt"].startswith("-- Tables: ") and ";" in first["sql"]["reference"]
    assert first["chat"]["prompt"].endswith("Assistant:") and "\nUser: " in first["chat"]["reference"]


def test_tiny_target_is_a_real_model(tiny):
    tokenizer, target = tiny.tokenizer(), tiny.target()
    heldout = tiny.dataset("heldout")
    for domain in tiny.domains:
        prompt = next(row["prompt"] for row in heldout if row["domain"] == domain)
        inputs = tokenizer(prompt, return_tensors="pt")
        output = target.generate(**inputs, do_sample=False, max_new_tokens=32, pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
        assert len(set(new_tokens)) >= 4, (domain, tokenizer.decode(new_tokens))
    # Far better than uniform guessing (perplexity = vocabulary size) on every domain.
    assert all(ppl < tiny.info["vocab_size"] / 5 for ppl in tiny.info["heldout_perplexity"].values())


def test_drafter_config_shares_vocabulary_and_is_smaller(tiny):
    target, drafter = tiny.target().config, tiny.drafter_config()
    for field in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings"):
        assert getattr(drafter, field) == getattr(target, field), field
    assert drafter.hidden_size < target.hidden_size
    assert tiny.info["drafter_params"] < tiny.info["target_params"]


def test_cached_world_loads_fast(tiny):
    began = time.perf_counter()
    again = get_world("tiny", progress=False)
    assert time.perf_counter() - began < 2.0
    assert again.path == tiny.path and again.info == tiny.info


def test_same_recipe_and_seed_build_identical_worlds(tmp_path):
    first = get_world(MICRO, cache_dir=tmp_path / "a", progress=False)
    second = get_world(MICRO, cache_dir=tmp_path / "b", progress=False)
    for name in ("model.safetensors", "tokenizer.json", "data/train.parquet", "data/heldout.parquet"):
        assert sha256(first.path / name) == sha256(second.path / name), name


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda path: os.truncate(path / "model.safetensors", 100), "model.safetensors has 100 bytes"),
        (lambda path: (path / "world.json").unlink(), "manifest world.json is missing"),
        (lambda path: (path / "tokenizer.json").write_text((path / "tokenizer.json").read_text().replace("<eos>", "<eoz>")),
         "tokenizer.json does not match its sha256"),
    ],
    ids=["truncated-weights", "no-manifest", "edited-tokenizer"],
)  # fmt: skip
def test_damaged_cache_is_rebuilt_not_loaded(tmp_path, caplog, corrupt, reason):
    world = get_world(MICRO, cache_dir=tmp_path, progress=False)
    good = sha256(world.path / "model.safetensors")
    corrupt(world.path)
    with caplog.at_level(logging.WARNING, logger="aurora_rl.world.world"):
        rebuilt = get_world(MICRO, cache_dir=tmp_path, progress=False)
    assert reason in caplog.text and "rebuilding" in caplog.text
    assert rebuilt.path == world.path
    assert sha256(rebuilt.path / "model.safetensors") == good
    manifest = json.loads((rebuilt.path / "world.json").read_text())
    assert all(sha256(rebuilt.path / name) == entry["sha256"] for name, entry in manifest["files"].items())
    assert AutoTokenizer.from_pretrained(rebuilt.path).eos_token == "<eos>"
    assert not [p for p in rebuilt.path.parent.iterdir() if p.name.startswith(".")], "staging directories left behind"


def test_recipe_change_moves_the_world_elsewhere(tmp_path, monkeypatch):
    base = world_dir(MICRO, tmp_path)
    assert base.parent == tmp_path / "worlds" and base.name.startswith("micro-")
    assert world_dir(dataclasses.replace(MICRO, seed=1), tmp_path) != base
    assert world_dir(dataclasses.replace(MICRO, training=MICRO.training.with_steps(4)), tmp_path) != base
    monkeypatch.setattr("aurora_rl.world.recipe.BUILD_VERSION", 10**6)
    assert world_dir(MICRO, tmp_path) != base
    monkeypatch.undo()
    monkeypatch.setenv("AURORA_RL_CACHE", str(tmp_path / "env"))
    assert world_dir(MICRO).parent == tmp_path / "env" / "worlds"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"vocab_size": 100}, "WorldRecipe.vocab_size=100: must be >= 259"),
        ({"domains": ("code", "poetry")}, "WorldRecipe.domains: unknown ['poetry']"),
        ({"training": LMTraining(steps=400, batch_size=8, seq_len=1024, lr=3e-3)},
         "WorldRecipe.max_positions=512 < training.seq_len=1024"),
        ({"name": "my world"}, "WorldRecipe.name='my world'"),
    ],
)
def test_recipe_validation_names_the_field(change, message):
    with pytest.raises(ValueError) as error:
        dataclasses.replace(RECIPES["tiny"], **change)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"steps": 0}, "LMTraining.steps=0: must be a positive int."),
        ({"seq_len": 2.5}, "LMTraining.seq_len=2.5: must be a positive int."),
        ({"lr": 0.0}, "LMTraining.lr=0.0: must be > 0."),
        ({"warmup": 11}, "LMTraining.warmup=11: must be in [0, steps=10]."),
    ],
)
def test_lm_training_checks_its_ranges_once_for_every_recipe(fields, message):
    good = {"steps": 10, "batch_size": 2, "seq_len": 8, "lr": 1e-3}
    with pytest.raises(ValueError) as error:
        LMTraining(**{**good, **fields})
    assert str(error.value) == message
    # A shorter run keeps its warm-up inside it.
    assert LMTraining(**good, warmup=5).with_steps(3) == LMTraining(steps=3, batch_size=2, seq_len=8, lr=1e-3, warmup=3)


def test_model_shape_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="hidden=100 is not divisible by heads=3"):
        ModelShape(layers=1, hidden=100, heads=3, intermediate=64)


def test_get_world_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown world 'huge': choose one of \['default', 'smollm2', 'tiny'\]"):
        get_world("huge")
    assert isinstance(RECIPES["default"], WorldRecipe)


def test_train_causal_lm_learns_and_is_deterministic(tiny):
    tokenizer = tiny.tokenizer()
    texts = list(tiny.dataset("heldout")["reference"])
    config = MICRO.target.llama_config(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_positions=128,
    )  # fmt: skip

    def run(seed):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        training = LMTraining(steps=60, batch_size=8, seq_len=64, lr=1e-2, warmup=5)
        metrics = train_causal_lm(model, tokenizer, texts, training, seed=seed, progress=False)
        return model, metrics

    (first, metrics), (second, _), (third, _) = run(seed=0), run(seed=0), run(seed=1)
    assert metrics["loss_last"] < metrics["loss_first"] - 1.0
    assert not first.training
    weights = [model.model.embed_tokens.weight for model in (first, second, third)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    with pytest.raises(ValueError, match="fewer than seq_len \\+ 1 = 4097"):
        train_causal_lm(first, tokenizer, texts[:1], LMTraining(steps=1, batch_size=1, seq_len=4096, lr=1e-3), seed=0,
                        progress=False)  # fmt: skip


def test_cli_info_smoke(tiny):
    result = subprocess.run(
        [sys.executable, "-m", "aurora_rl.world", "info", "--world", "tiny"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(tiny.path) in result.stdout and "heldout ppl" in result.stdout
    for domain in tiny.domains:
        assert f"{domain} " in result.stdout
