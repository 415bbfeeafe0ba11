"""EAGLE heads as the CLIs build them: a reduced draft vocabulary from scratch, and the
prefill-based offline pretraining (cached), both lossless."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from aurora_rl.algos.eagle_pretrain import (
    EAGLE_PRETRAIN_VERSION, EaglePretrainRecipe, _fingerprint, eagle_pretrainer, learning_rate, pretrain_eagle,
)
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies import factory
from aurora_rl.policies.factory import DrafterSection
from aurora_rl.world import get_world

VOCAB = 40  # far below the tiny world's vocabulary: plenty of tokens the head can never propose


@pytest.fixture(scope="module")
def tiny():
    world = get_world("tiny")
    tokenizer = world.tokenizer()
    target = Target(world.target(), hidden_layers=(-1,))
    prompts = [tokenizer(row["prompt"])["input_ids"] for row in world.dataset("heldout").select(range(3))]
    return world, tokenizer, target, prompts


def check_lossless_inside_vocab(target, tokenizer, drafter, prompts) -> None:
    eos = tokenizer.eos_token_id
    inside = set(drafter.head.d2t.tolist())
    decoder = SpeculativeDecoder(target, drafter, DecodeConfig(k=3), [eos])
    for ids in prompts:
        out = decoder.generate(torch.tensor(ids), max_new_tokens=24)
        reference = target.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=eos,
                                          pad_token_id=tokenizer.pad_token_id)[0, len(ids):]  # fmt: skip
        assert out.tokens.tolist() == reference.tolist()
        assert all(set(trace.proposed.tolist()) <= inside for trace in out.traces)


def test_a_scratch_head_drafts_over_the_training_prompts_most_frequent_tokens(tiny):
    world, tokenizer, target, prompts = tiny
    spec = DrafterSection(kind="eagle", eagle_layers=[-1], draft_vocab_size=VOCAB)
    drafter = factory.scratch_drafter(spec, target, world, seed=0, tokenizer=tokenizer)
    d2t = drafter.head.d2t.tolist()
    assert len(d2t) == VOCAB and d2t == sorted(d2t) and tokenizer.eos_token_id in d2t
    counts = torch.zeros(target.vocab_size)
    for row in world.dataset("train"):
        counts += torch.bincount(torch.tensor(tokenizer(row["prompt"])["input_ids"]), minlength=target.vocab_size)
    most_frequent = set(torch.argsort(-counts, stable=True)[: VOCAB - 1].tolist())
    assert most_frequent <= set(d2t)
    check_lossless_inside_vocab(target, tokenizer, drafter, prompts)


def test_full_vocabulary_by_default(tiny):
    world, tokenizer, target, _ = tiny
    drafter = factory.scratch_drafter(DrafterSection(kind="eagle", eagle_layers=[-1]), target, world, 0, tokenizer)
    assert drafter.head.config.draft_vocab_size == 0


def test_the_pretrained_head_is_cached_and_lossless(tiny, tmp_path):
    world, tokenizer, target, prompts = tiny
    spec = DrafterSection(kind="eagle", eagle_layers=[-1], draft_vocab_size=VOCAB, pretrain_steps=3)
    pretrain = eagle_pretrainer(spec, world, target, tokenizer, seed=0, cache_dir=tmp_path, progress=False)
    first = factory.pretrained(spec, target, world, seed=0, pretrain_eagle=pretrain)
    again = pretrain(("code", "prose"))  # the section's default pretraining domains: the same cache entry
    assert torch.equal(first.head.d2t, again.head.d2t)
    assert all(torch.equal(a, b) for a, b in zip(first.head.state_dict().values(), again.head.state_dict().values()))
    heads = [path.name for path in (tmp_path / "drafters").iterdir() if path.is_dir()]
    assert len(heads) == 1 and heads[0].startswith("tiny-eagle3-")  # built once, loaded the second time
    check_lossless_inside_vocab(target, tokenizer, first, prompts)


def test_the_cosine_schedule_decays_from_the_peak_to_zero_and_constant_stays():
    cosine = EaglePretrainRecipe(lr=1e-3, steps=100, lr_schedule="cosine")
    assert learning_rate(cosine, 0) == 1e-3
    assert math.isclose(learning_rate(cosine, 50), 0.5e-3)
    assert 0 < learning_rate(cosine, 99) < 1e-6
    rates = [learning_rate(cosine, step) for step in range(100)]
    assert rates == sorted(rates, reverse=True)
    assert {learning_rate(EaglePretrainRecipe(lr=1e-3, steps=100), step) for step in range(100)} == {1e-3}


def test_an_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \('constant', 'cosine'\), got 'linear'"):
        EaglePretrainRecipe(lr_schedule="linear")


def test_a_constant_rate_keeps_the_cache_key_heads_had_before_the_schedule_existed(tiny):
    world = tiny[0]
    recipe = EaglePretrainRecipe()
    assert _fingerprint(world, recipe) != _fingerprint(world, EaglePretrainRecipe(lr_schedule="cosine"))
    # The key as the code before the lr_schedule field computed it (checked equal to 8b896bc's).
    fields = {k: v for k, v in asdict(recipe).items() if k != "lr_schedule"}
    payload = {"version": EAGLE_PRETRAIN_VERSION, "world": world.recipe.fingerprint(), "recipe": fields}
    assert _fingerprint(world, recipe) == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def test_the_schedule_reaches_the_optimizer_that_steps(tiny, monkeypatch):
    world, tokenizer, target, _ = tiny
    recipe = EaglePretrainRecipe(hidden_layers=(-1,), draft_vocab_size=VOCAB, num_prompts=2, max_new_tokens=4,
                                 steps=4, batch_size=2, lr_schedule="cosine")  # fmt: skip
    used, step = [], torch.optim.AdamW.step

    def recording_step(optimizer, *args, **kwargs):
        used.append(optimizer.param_groups[0]["lr"])
        return step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    pretrain_eagle(world, target, tokenizer, recipe, progress=False)
    assert used == [learning_rate(recipe, s) for s in range(recipe.steps)]


def test_head_tau_bench_scores_every_head_at_every_k(tmp_path):
    recipe = "hidden_layers=[-1] draft_vocab_size=40 num_prompts=4 max_new_tokens=8 steps=30 batch_size=4"
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "head_tau.py"), "--world", "tiny", "--recipe", recipe, "--recipe", f"{recipe} lr_schedule=cosine",
         "--k", "2", "3", "--num-prompts", "2", "--max-new-tokens", "8", "--target-weights", "fp32", "--json", str(tmp_path / "tau.json")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "tau.json").read_text())["results"]
    assert [(row["recipe"].endswith("cosine"), row["k"]) for row in rows] == [(False, 2), (False, 3), (True, 2), (True, 3)]
    for row in rows:
        assert row["tau"] == row["tokens"] / row["steps"] >= 1.0
        assert len(row["kept_by_position"]) == row["k"] and all(0.0 <= rate <= 1.0 for rate in row["kept_by_position"])
    assert result.stdout.count("| tau ") == 4
