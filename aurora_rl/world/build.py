"""Build a world into a directory: corpus -> tokenizer -> target -> held-out evaluation.

The directory ends up laid out like a Hugging Face model repository (config.json,
model.safetensors, tokenizer files), plus the corpus under `data/` and the drafter's
config under `drafter/`. The caller (`world.get_world`) writes the manifest and publishes.
"""

from __future__ import annotations

import logging
import platform
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import tokenizers
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .corpus import SPLITS, build_corpus
from .evaluation import heldout_perplexity
from .lm_training import pack_examples, train_causal_lm
from .precision import native_bf16
from .recipe import BUILD_VERSION, ModelShape, WorldRecipe
from .tokenizer import encoded_examples, train_tokenizer

logger = logging.getLogger(__name__)

DATA_DIR = "data"
DRAFTER_DIR = "drafter"


def model_config(shape: ModelShape, tokenizer: PreTrainedTokenizerFast, max_positions: int) -> LlamaConfig:
    """A LlamaConfig of `shape` sharing the tokenizer's vocabulary and special ids."""
    return shape.llama_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_positions=max_positions,
    )


def parameter_count(config: LlamaConfig) -> int:
    """Parameters of a LlamaForCausalLM with this config (tied weights counted once), without allocating it."""
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


def build_world(recipe: WorldRecipe, directory: Path, *, progress: bool = True, precision: str | None = None) -> dict:
    """Build every file of the world into `directory` (which exists and is empty); return its info dict.

    `precision` is the target's training precision (see `aurora_rl.world.precision`).
    """
    began = time.perf_counter()
    stage_seconds: dict[str, float] = {}

    logger.info("world %r: generating corpora for %s", recipe.name, ", ".join(recipe.domains))
    corpus = build_corpus(recipe)
    (directory / DATA_DIR).mkdir()
    for split in SPLITS:
        pq.write_table(corpus[split].data.table, directory / DATA_DIR / f"{split}.parquet")
    stage_seconds["corpus"] = time.perf_counter() - began

    logger.info("world %r: training a %d-token byte-level BPE tokenizer", recipe.name, recipe.vocab_size)
    mark = time.perf_counter()
    train = corpus["train"]
    prompts, references = list(train["prompt"]), list(train["reference"])
    tokenizer = train_tokenizer(prompts + references, recipe.vocab_size, recipe.max_positions)
    tokenizer.save_pretrained(directory)
    examples = encoded_examples(tokenizer, prompts, references)
    stream = pack_examples(examples)
    stage_seconds["tokenizer"] = time.perf_counter() - mark

    mark = time.perf_counter()
    config = model_config(recipe.target, tokenizer, recipe.max_positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        target = LlamaForCausalLM(config)
    logger.info(
        "world %r: training the target (%.1fM parameters) on %d tokens for %d steps",
        recipe.name, target.num_parameters() / 1e6, stream.numel(), recipe.training.steps,
    )  # fmt: skip
    training = train_causal_lm(
        target, tokenizer, stream, recipe.training, seed=recipe.seed, progress=progress,
        desc=f"target ({recipe.name})", precision=precision,
    )  # fmt: skip
    target.save_pretrained(directory)
    drafter_config = model_config(recipe.drafter, tokenizer, recipe.max_positions)
    drafter_config.save_pretrained(directory / DRAFTER_DIR)
    stage_seconds["target"] = time.perf_counter() - mark

    logger.info("world %r: measuring held-out perplexity", recipe.name)
    mark = time.perf_counter()
    perplexity = heldout_perplexity(target, tokenizer, corpus["heldout"], progress=progress)
    stage_seconds["evaluation"] = time.perf_counter() - mark

    return {
        "name": recipe.name,
        "build_version": BUILD_VERSION,
        "recipe": recipe.to_dict(),
        "build_seconds": time.perf_counter() - began,
        "stage_seconds": stage_seconds,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "cpu": {"capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16("cpu")},
        "vocab_size": len(tokenizer),
        "target_params": target.num_parameters(),
        "drafter_params": parameter_count(drafter_config),
        "samples": {split: dict(Counter(corpus[split]["domain"])) for split in SPLITS},
        "mean_tokens": _mean_tokens(train["domain"], examples),
        "train_tokens": stream.numel(),
        "training": training,
        "heldout_perplexity": perplexity,
    }


def _mean_tokens(domains: list[str], examples: list[tuple[list[int], int]]) -> dict[str, dict[str, float]]:
    """Mean prompt and reference lengths in tokens per domain (prompt without <bos>, reference with <eos>)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for domain, (ids, prompt_length) in zip(domains, examples):
        sums[domain][0] += prompt_length - 1
        sums[domain][1] += len(ids) - prompt_length
        sums[domain][2] += 1
    return {domain: {"prompt": p / n, "reference": r / n} for domain, (p, r, n) in sums.items()}
