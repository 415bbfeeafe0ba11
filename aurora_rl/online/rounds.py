"""On-policy rounds: decode prompts with the current draft, then update it on those traces.

The offline arm, the algorithm-comparison experiment and the tests all train this way;
accepted length is always measured by really decoding, never through a proxy.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from tqdm import tqdm

from aurora_rl.algos import AlgoConfig, Algorithm, make_algorithm
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.target import Target, eos_token_ids
from aurora_rl.world.traffic import Request

Prompt = Sequence[int]
DECODE_ROWS = 16  # requests decoded together in one batched step


def accepted_length(target: Target, drafter, prompts: Sequence[Prompt], config: DecodeConfig,
                    max_new_tokens: int, eos: Sequence[int]) -> float:
    """Tokens emitted per verify step over ``prompts`` (aggregated, not averaged per prompt)."""
    decoder = SpeculativeDecoder(target, drafter, config, eos)
    generations = [gen for chunk in _in_chunks(prompts) for gen in decoder.generate_batch(chunk, max_new_tokens, keep_traces=False)]
    return sum(len(g.tokens) for g in generations) / max(sum(g.num_steps for g in generations), 1)


def _in_chunks(prompts: Sequence[Prompt]) -> list[Sequence[Prompt]]:
    """``prompts`` DECODE_ROWS at a time: batched steps with bounded memory."""
    return [prompts[first : first + DECODE_ROWS] for first in range(0, len(prompts), DECODE_ROWS)]


def train_rounds(
    target: Target,
    drafter,
    algo: AlgoConfig,
    prompt_rounds: Sequence[Sequence[Prompt]],
    decode: DecodeConfig,
    max_new_tokens: int,
    eos: Sequence[int],
    pad_id: int,
    updates_per_round: int,
    seed: int = 0,
    progress: bool = False,
    desc: str = "train",
) -> Algorithm:
    """For each round: decode its prompts with the (current) draft, all together, then
    ``updates_per_round`` updates on batches drawn from that round's traces.

    Policy gradient gets sampled proposals (``algo.explore_temperature``). Returns the
    algorithm, whose ``policy`` is the trained ``drafter`` (trained in place).
    """
    algorithm = make_algorithm(drafter, algo)
    decode = dataclasses.replace(decode, record_target_probs=True)  # the losses read the target's distributions
    if algorithm.needs_exploration:
        decode = dataclasses.replace(decode, explore_temperature=algo.explore_temperature)
    collector = SpeculativeDecoder(target, drafter, decode, eos)
    generator = torch.Generator().manual_seed(seed)
    total = sum(len(r) for r in prompt_rounds) + updates_per_round * len(prompt_rounds)
    with tqdm(total=total, desc=desc, disable=not progress) as bar:
        for round_index, prompts in enumerate(prompt_rounds):
            # The round's prompts decode together, DECODE_ROWS at a time (batched steps, bounded
            # memory, visible progress); prompt i of round r draws from seed + 1000 (r + 1) + i.
            traces = []
            for chunk_index, chunk in enumerate(_in_chunks(prompts)):
                row_seed = seed + 1000 * (round_index + 1) + chunk_index * DECODE_ROWS
                generations = collector.generate_batch(chunk, max_new_tokens, seed=row_seed)
                traces += [t for gen in generations for t in gen.traces if t.num_proposed]
                bar.update(len(chunk))
            if not traces:
                continue
            for _ in range(updates_per_round):
                chosen = torch.randperm(len(traces), generator=generator)[: algo.batch_size].tolist()
                algorithm.update(algorithm.batch([traces[i] for i in chosen], pad_id=pad_id))
                bar.update()
    return algorithm


def finetune_offline(target: Target, tokenizer, drafter, algo: AlgoConfig, requests: Sequence[Request], decode: DecodeConfig,
                     max_new_tokens: int, updates: int, seed: int = 0, progress: bool = False, desc: str = "offline") -> DraftPolicy:  # fmt: skip
    """Collect traces on ``requests`` with ``drafter`` fixed, then train it ``updates`` steps."""
    prompts = [tokenizer(r.prompt)["input_ids"] for r in requests]
    eos = eos_token_ids(tokenizer)
    algorithm = train_rounds(target, drafter, algo, [prompts], decode, max_new_tokens, eos, tokenizer.pad_token_id or 0,
                             updates, seed=seed, progress=progress, desc=desc)  # fmt: skip
    return algorithm.policy
