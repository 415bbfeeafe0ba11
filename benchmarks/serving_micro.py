"""Two measurements behind the server's design (docs/serving.md, "What the numbers say"):

1. What a learner costs decoding: ms per verify step of one request decoded alone, beside a
   learner *thread*, and beside a learner *process* running the same updates. Equal slowdowns
   mean the cost is CPU, not the GIL (a process would not help).
2. What tensor batching could save: B separate target/draft forwards vs one batched forward of
   B equal-length sequences (the ideal case; real speculative steps are ragged).

    python benchmarks/serving_micro.py            # tiny world, pretrained tiny drafter, 1 thread
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import torch
from transformers import DynamicCache

from aurora_rl.algos import AlgoConfig, make_algorithm
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.pretrained import DrafterRecipe, pretrained_drafter
from aurora_rl.world import get_world
from aurora_rl.world.traffic import make_traffic


def setup():
    torch.set_num_threads(1)
    world = get_world("tiny", progress=False)
    tokenizer, drafter = world.tokenizer(), pretrained_drafter(world, DrafterRecipe(), progress=False)
    decoder = SpeculativeDecoder(Target(world.target()), drafter, DecodeConfig(k=4), [tokenizer.eos_token_id])
    prompts = [tokenizer(r.prompt)["input_ids"] for r in make_traffic(world.dataset("heldout"), "mixed", 12, seed=0)]
    return decoder, drafter, prompts


def ms_per_step(decoder, prompts) -> float:
    began, steps = time.perf_counter(), 0
    for ids in prompts:
        steps += decoder.generate(ids, 64).num_steps
    return (time.perf_counter() - began) / steps * 1000


def learn_until(stop, max_context: int = 256) -> None:
    """A learner's work: forward-KL updates on traces of a few requests, until ``stop``."""
    decoder, drafter, prompts = setup()
    traces = [t for ids in prompts[:4] for t in decoder.generate(ids, 64).traces if t.num_proposed]
    algorithm = make_algorithm(drafter.clone(), AlgoConfig(max_context=max_context))
    while not stop.is_set():
        algorithm.update(algorithm.batch(traces[:32]))


def learner_interference() -> None:
    decoder, _, prompts = setup()
    print(f"verify step, alone:                   {ms_per_step(decoder, prompts):5.2f} ms")
    stop = threading.Event()
    thread = threading.Thread(target=learn_until, args=(stop,))
    thread.start()
    time.sleep(8)  # let it build its traces and reach steady state
    print(f"verify step, beside a learner thread:  {ms_per_step(decoder, prompts):5.2f} ms")
    stop.set()
    thread.join()
    spawn = mp.get_context("spawn")
    stop = spawn.Event()
    process = spawn.Process(target=learn_until, args=(stop,))
    process.start()
    time.sleep(12)  # spawn + imports + steady state
    print(f"verify step, beside a learner process: {ms_per_step(decoder, prompts):5.2f} ms")
    stop.set()
    process.join()


@torch.inference_mode()
def separate_vs_batched(model, batch: int, context: int, new: int, reps: int = 30) -> tuple[float, float]:
    ids, step = torch.randint(3, 700, (batch, context)), torch.randint(3, 700, (batch, new))
    caches = [DynamicCache(config=model.config) for _ in range(batch)]
    for b, cache in enumerate(caches):
        model(input_ids=ids[b : b + 1], past_key_values=cache, use_cache=True)
    began = time.perf_counter()
    for _ in range(reps):
        for b, cache in enumerate(caches):
            model(input_ids=step[b : b + 1], past_key_values=cache, use_cache=True)
            cache.crop(-new)
    separate = (time.perf_counter() - began) / reps * 1000
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    began = time.perf_counter()
    for _ in range(reps):
        model(input_ids=step, past_key_values=cache, use_cache=True)
        cache.crop(-new)
    return separate, (time.perf_counter() - began) / reps * 1000


def batching_ceiling() -> None:
    decoder, drafter, _ = setup()
    for name, model, new in (("target, 5 tokens", decoder.target.model, 5), ("draft, 1 token", drafter.model, 1)):
        for batch in (1, 4, 8):
            separate, batched = separate_vs_batched(model, batch, 150, new)
            print(f"{name:16s} B={batch}: {batch} separate forwards {separate:5.2f} ms, one batched {batched:5.2f} ms "
                  f"({separate / batched:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    learner_interference()
    batching_ceiling()
