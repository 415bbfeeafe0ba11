"""Where an env gets its target, tokenizer and prompts: the world, or any model/prompt set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aurora_rl.core.target import load_model_and_tokenizer
from aurora_rl.world import get_world
from aurora_rl.world.traffic import load_prompts


@dataclass
class EnvSources:
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    prompts: datasets.Dataset  # column "prompt" (and "domain" when known)


def load_env_sources(
    world: str, model: str | Path | None, prompts: str | Path | None, cache_dir: str | Path | None
) -> EnvSources:
    """The world's target/tokenizer/held-out prompts, or a given model dir/hub id and prompts."""
    if model is None:
        built = get_world(world, cache_dir=cache_dir)
        tokenizer, causal_lm = built.tokenizer(), built.target()
        default_prompts = built
    else:
        causal_lm, tokenizer = load_model_and_tokenizer(model)
        default_prompts = world
    dataset = load_prompts(prompts if prompts is not None else default_prompts, split="heldout")
    if len(dataset) == 0:
        raise ValueError(f"the prompt set {prompts or world!r} is empty")
    return EnvSources(tokenizer, causal_lm, dataset)


def episode_prompt(options: dict, tokenizer, prompt_ids: list[list[int]], domain_of, np_random) -> tuple[list[int], str]:
    """An episode's prompt ids and domain tag: ``options["prompt_ids"]`` or
    ``options["prompt"]`` (text) if given, else one of ``prompt_ids`` drawn with the env's
    ``np_random`` (``domain_of(index)`` tags it)."""
    if "prompt_ids" in options:
        return list(options["prompt_ids"]), ""
    if "prompt" in options:
        return tokenizer(options["prompt"])["input_ids"], ""
    index = int(np_random.integers(len(prompt_ids)))
    return prompt_ids[index], domain_of(index)
