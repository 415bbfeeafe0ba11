"""Offline pretraining of an EAGLE-3-style head from the target's own features, cached on disk.

On a CPU a prefill is far cheaper per token than generation, so the head is not trained
from decoding traces but from the target's features over text it would write itself:

1. the target answers ``num_prompts`` training prompts greedily (batched HF ``generate``,
   the target's own output: what a drafter must predict at serving time);
2. one prefill per ``prompt + answer`` gives the features of the head's layers (low, mid
   and high, fused by the head's ``proj``) and the target's distribution at every position;
3. the reduced draft vocabulary is the ``draft_vocab_size`` most frequent tokens of those
   prompts and answers (plus EOS);
4. every answer position becomes a :class:`~aurora_rl.core.trace.Trace` as if the target had
   verified ``k`` proposals equal to its own next tokens, and the head is trained on them
   with the same algorithm the online learner runs: true features over the context, then
   ``k - 1`` steps fed with its own outputs ("training-time test", as at decode time).

So pretraining (offline, here) and learning (online, from serving traces) share one loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from aurora_rl.algos.config import AlgoConfig
from aurora_rl.algos.zoo import make_algorithm
from aurora_rl.core.target import Target
from aurora_rl.core.trace import Trace, TopKProbs
from aurora_rl.policies.draft_vocab import choose_draft_vocab, coverage
from aurora_rl.policies.eagle import EagleDrafter
from aurora_rl.policies.factory import DrafterSection
from aurora_rl.settings import documented
from aurora_rl.world import World
from aurora_rl.world.cache import InvalidWorld, cache_root, exclusive_lock, read_manifest, staging_directory, write_manifest

logger = logging.getLogger(__name__)

EAGLE_PRETRAIN_VERSION = 1
REQUIRED_FILES = ("policy.json", "config.json", "model.safetensors", "report.json")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class EaglePretrainRecipe:
    """How an EAGLE-3-style head is pretrained offline on a world's training prompts.

    The defaults are sized for 2 CPU cores (a few minutes on a quiet machine); a GPU affords
    far more prompts and steps.
    """

    hidden_layers: tuple[int, ...] = documented("target hidden states fused by the head (low, mid, high)", (2, 15, 28))
    draft_vocab_size: int = documented("reduced draft vocabulary (0 = full)", 8192)
    domains: tuple[str, ...] | None = documented("world domains (None = all)", None)
    num_prompts: int = documented("training prompts the target answers", 40)
    max_new_tokens: int = documented("tokens of each target answer", 48)
    generate_batch: int = documented("prompts per batched generate call", 16)
    k: int = documented("unrolled proposal positions per training trace", 4)
    steps: int = documented("optimizer steps", 150)
    batch_size: int = documented("traces per step", 16)
    max_context: int = documented("context tokens of true features per trace", 32)
    lr: float = documented("AdamW learning rate (the peak, with a schedule)", 1e-3)
    lr_schedule: str = documented("'constant', or 'cosine': decays lr to 0 over the steps", "constant")
    seed: int = documented("seeds prompt choice, init and batch order", 0)
    topk: int = documented("target probabilities kept per position", 32)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_layers", tuple(int(layer) for layer in self.hidden_layers))
        for name in ("num_prompts", "max_new_tokens", "generate_batch", "k", "steps", "batch_size", "max_context", "topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"EaglePretrainRecipe.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"EaglePretrainRecipe.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")


def learning_rate(recipe: EaglePretrainRecipe, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``recipe.steps``. A cosine
    decay lets the last steps settle into a minimum that a constant rate keeps jumping over."""
    if recipe.lr_schedule == "constant":
        return recipe.lr
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * step / recipe.steps))


def target_answers(target: Target, prompts: list[list[int]], recipe: EaglePretrainRecipe, eos: int, pad: int) -> list[list[int]]:
    """The target's greedy answer to each prompt (cut after EOS), in batched ``generate`` calls."""
    model, answers = target.model, []
    for start in tqdm(range(0, len(prompts), recipe.generate_batch), desc="target answers", leave=False):
        chunk = prompts[start : start + recipe.generate_batch]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(chunk):  # left padding: every answer starts at column `width`
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=recipe.max_new_tokens,
                eos_token_id=eos, pad_token_id=pad,
            )
        for row in out[:, width:].tolist():
            answers.append(row[: row.index(eos) + 1] if eos in row else row)
    return answers


def teacher_traces(
    target: Target, prompt: list[int], answer: list[int], k: int, topk: int, domain: str, request_id: str
) -> list[Trace]:
    """Traces of every answer position from one prefill of ``prompt + answer``: the proposals
    are the target's own next tokens, so each trace is what a perfect draft would have produced."""
    sequence = torch.tensor(prompt + answer)
    with torch.inference_mode():
        out = target.forward(target.new_cache(), sequence)
    probs = out.logits.softmax(-1)  # row j: the target's distribution of token j + 1
    features = out.hidden.float()
    traces = []
    for cut in range(len(prompt), len(sequence) - 1):
        m = min(k, len(sequence) - cut)
        proposed = sequence[cut : cut + m]
        judged = probs[cut - 1 : cut + m]
        traces.append(Trace(
            request_id=request_id, domain=domain, step=cut - len(prompt), draft_version=0,
            context_ids=sequence[:cut], proposed=proposed, draft_logprobs=torch.zeros(m),
            target_probs=TopKProbs.from_dense(judged, topk), accept_mask=judged[:m].argmax(-1) == proposed,
            emitted=proposed, context_features=features[:cut],
        ))  # fmt: skip
    return traces


def pretrain_eagle(
    world: World,
    target: Target,
    tokenizer,
    recipe: EaglePretrainRecipe = EaglePretrainRecipe(),
    progress: bool = True,
) -> tuple[EagleDrafter, dict]:
    """A head pretrained as the module docstring says, and a report (coverage, losses).

    ``target`` must record the recipe's ``hidden_layers``.
    """
    if target.normalized_layers(recipe.hidden_layers) != target.normalized_layers(target.hidden_layers):
        raise ValueError(
            f"the recipe fuses target hidden_layers {recipe.hidden_layers} but the Target records "
            f"{target.hidden_layers}; build it with Target(model, hidden_layers={recipe.hidden_layers})"
        )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data = world.dataset("train", recipe.domains)
    rng = random.Random(recipe.seed)
    rows = rng.sample(range(len(data)), min(recipe.num_prompts, len(data)))
    prompts = [tokenizer(data[i]["prompt"])["input_ids"] for i in rows]
    seconds, mark = {}, time.perf_counter()
    answers = target_answers(target, prompts, recipe, eos, pad)
    seconds["answers"], mark = time.perf_counter() - mark, time.perf_counter()
    vocab = target.vocab_size
    d2t = None
    if recipe.draft_vocab_size:
        d2t = choose_draft_vocab(prompts + answers, recipe.draft_vocab_size, vocab, always=[eos])
    traces = []
    for index, (i, prompt, answer) in enumerate(zip(rows, prompts, answers)):
        traces += teacher_traces(target, prompt, answer, recipe.k, recipe.topk, data[i]["domain"], f"pretrain-{index}")
    seconds["prefill"], mark = time.perf_counter() - mark, time.perf_counter()
    drafter = EagleDrafter.from_target(target, seed=recipe.seed, draft_vocab=d2t)
    # Every answer position is proposal 0 of its own trace, so the context-window loss would
    # only repeat that signal, at the price of (B, W, V) logits.
    config = AlgoConfig(lr=recipe.lr, batch_size=recipe.batch_size, max_context=recipe.max_context, context_lm_coef=0.0)
    algorithm = make_algorithm(drafter, config)
    generator = random.Random(recipe.seed + 1)
    losses = []
    for step in tqdm(range(recipe.steps), desc="pretrain eagle head", disable=not progress):
        for group in algorithm.optimizer.param_groups:
            group["lr"] = learning_rate(recipe, step)
        batch = algorithm.batch(generator.sample(traces, min(recipe.batch_size, len(traces))), pad_id=pad)
        losses.append(algorithm.update(batch).get("losses/loss", float("nan")))
    seconds["train"] = time.perf_counter() - mark
    report = {
        "seconds": seconds,
        "traces": len(traces),
        "answer_tokens": sum(len(a) for a in answers),
        "draft_vocab_coverage_of_answers": 1.0 if d2t is None else coverage(d2t, answers, vocab),
        "loss_first_10": sum(losses[:10]) / max(len(losses[:10]), 1),
        "loss_last_10": sum(losses[-10:]) / max(len(losses[-10:]), 1),
    }
    return drafter, report


def _fingerprint(world: World, recipe: EaglePretrainRecipe) -> str:
    fields = asdict(recipe)
    if fields["lr_schedule"] == "constant":  # every head cached before the field had one: keep their keys
        del fields["lr_schedule"]
    payload = {"version": EAGLE_PRETRAIN_VERSION, "world": world.recipe.fingerprint(), "recipe": fields}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def pretrained_eagle(
    world: World, target: Target, tokenizer, recipe: EaglePretrainRecipe = EaglePretrainRecipe(),
    cache_dir: str | Path | None = None, progress: bool = True,
) -> EagleDrafter:
    """:func:`pretrain_eagle`'s head, built once per (world, recipe) under ``drafters/`` and
    loaded (verified by its manifest) afterwards."""
    key = _fingerprint(world, recipe)
    directory = cache_root(cache_dir) / "drafters" / f"{world.name}-eagle3-{key[:12]}"
    with exclusive_lock(directory.parent / f"{directory.name}.lock"):
        try:
            read_manifest(directory, key, REQUIRED_FILES)
        except InvalidWorld as problem:
            logger.info("pretraining an EAGLE-3-style head into %s (%s)", directory, problem)
            with staging_directory(directory) as staging:
                drafter, report = pretrain_eagle(world, target, tokenizer, recipe, progress)
                drafter.save_pretrained(staging)
                (staging / "report.json").write_text(json.dumps(report, indent=2))
                write_manifest(staging, {"recipe_fingerprint": key, "recipe": asdict(recipe)})
            read_manifest(directory, key, REQUIRED_FILES)
    return EagleDrafter.from_pretrained(directory, target)


def eagle_pretrainer(spec: DrafterSection, world: World, target: Target, tokenizer, seed: int,
                     cache_dir: str | Path | None = None, progress: bool = True):  # fmt: skip
    """``policies.factory.pretrained``'s ``pretrain_eagle`` for a drafter section: the
    recipe's defaults with the section's layers, draft vocabulary and steps, on the given
    domains (cached by :func:`pretrained_eagle`)."""

    def pretrain(domains: tuple[str, ...] | None) -> EagleDrafter:
        recipe = EaglePretrainRecipe(hidden_layers=tuple(spec.eagle_layers), draft_vocab_size=spec.draft_vocab_size,
                                     domains=domains, steps=spec.pretrain_steps, seed=seed)  # fmt: skip
        return pretrained_eagle(world, target, tokenizer, recipe, cache_dir, progress)

    return pretrain
