"""`get_world`: the one entry point to a built world, building or rebuilding it when needed."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .build import DATA_DIR, DRAFTER_DIR, build_world
from .chat_world import build_chat_world
from .cache import InvalidWorld, cache_root, exclusive_lock, read_manifest, staging_directory, write_manifest
from .corpus import SPLITS
from .precision import resolve_precision
from .recipe import ChatWorldRecipe, WorldRecipe, resolve_recipe

logger = logging.getLogger(__name__)

# What makes a directory a usable world; a manifest that does not list them all is invalid.
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    f"{DRAFTER_DIR}/config.json",
    *(f"{DATA_DIR}/{split}.parquet" for split in SPLITS),
)


@dataclass(frozen=True)
class World:
    """A built, verified world on disk.

    `path` is laid out like a Hugging Face model repository, so
    `AutoTokenizer.from_pretrained(world.path)` and `AutoModelForCausalLM.from_pretrained(world.path)`
    work as for any hub model. Every loader below reads from disk afresh.
    """

    path: Path
    recipe: WorldRecipe | ChatWorldRecipe
    info: dict  # the manifest's build report: recipe, build_seconds, *_params, heldout_perplexity, vocab_size, ...

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def precision(self) -> str:
        """"fp32" or "bf16": what the target was trained in (part of every cache key built on it)."""
        return self.info["training"]["precision"]

    @property
    def domains(self) -> list[str]:
        return list(self.recipe.domains)

    def dataset(self, split: str, domains: Sequence[str] | None = None) -> datasets.Dataset:
        """The "train" or "heldout" split: columns domain, prompt, reference (str), grouped by
        domain; only the rows of ``domains`` when given (None = every domain)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose one of {list(SPLITS)}.")
        data = datasets.Dataset(pq.read_table(self.path / DATA_DIR / f"{split}.parquet"))
        if domains is not None:
            wanted = set(domains)
            data = data.filter(lambda row: row["domain"] in wanted)
        return data

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The byte-level BPE tokenizer; calling it prepends <bos>; pad, bos and eos are distinct."""
        return AutoTokenizer.from_pretrained(self.path)

    def target(self, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
        """The trained target model, in eval mode."""
        return AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).eval()

    def drafter_config(self) -> LlamaConfig:
        """Config of this world's default small-LM drafter: same vocabulary and special ids as the target."""
        return LlamaConfig.from_pretrained(self.path / DRAFTER_DIR)


def world_dir(
    recipe: WorldRecipe, cache_dir: str | os.PathLike | None = None, precision: str | None = None
) -> Path:
    """Where the world of this recipe lives: <cache root>/worlds/<name>-<precision>-<fingerprint[:12]>.

    The training precision (resolved as in `resolve_precision`) is part of the name: bf16 and
    fp32 builds of one recipe have different weights, and each machine loads the one it builds.
    A chat world trains nothing: its weights are the dequantized float32 ones everywhere.
    """
    resolved = "fp32" if isinstance(recipe, ChatWorldRecipe) else resolve_precision(precision)
    return cache_root(cache_dir) / "worlds" / f"{recipe.name}-{resolved}-{recipe.fingerprint()[:12]}"


def get_world(
    world: str | WorldRecipe | ChatWorldRecipe = "default",
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    precision: str | None = None,
) -> World:
    """The world of a registered name ("tiny", "default", "smollm2") or recipe, built first if needed.

    A cached world is loaded only after its manifest and every file's sha256 check out;
    a missing, half-written or corrupted one is (re)built, with a warning saying why.
    Concurrent callers of the same world wait for one build (an fcntl file lock).
    `precision` ("auto", "fp32", "bf16"; None = $AURORA_RL_PRECISION or "auto") is the
    target's training precision; see `aurora_rl.world.precision`.
    """
    recipe = resolve_recipe(world)
    precision = resolve_precision(precision)
    directory = world_dir(recipe, cache_dir, precision)
    fingerprint = recipe.fingerprint()
    with exclusive_lock(directory.parent / f"{directory.name}.lock"):
        try:
            manifest = read_manifest(directory, fingerprint, REQUIRED_FILES)
        except InvalidWorld as problem:
            if directory.exists():
                logger.warning("world cache %s is invalid (%s); rebuilding it", directory, problem)
            else:
                logger.info("world %r is not built yet; building it in %s", recipe.name, directory)
            with staging_directory(directory) as staging:
                if isinstance(recipe, ChatWorldRecipe):
                    info = build_chat_world(recipe, staging, data_dir=DATA_DIR, drafter_dir=DRAFTER_DIR)
                else:
                    info = build_world(recipe, staging, progress=progress, precision=precision)
                write_manifest(staging, {"recipe_fingerprint": fingerprint, "info": info})
            # Verify what was published, as any loader would, before handing it out.
            manifest = read_manifest(directory, fingerprint, REQUIRED_FILES)
    return World(path=directory, recipe=recipe, info=manifest["info"])
