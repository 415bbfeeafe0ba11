"""Offline-pretrained small-LM drafters: language-modelled on a world's text, cached on disk.

This is how a "static" draft is made before any serving: trained once, offline, on the
domains someone had at hand. Built once per (world, recipe), verified like a world.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.settings import documented
from aurora_rl.world import World, resolve_precision, train_causal_lm
from aurora_rl.world.lm_training import LMTraining, pack_examples
from aurora_rl.world.tokenizer import encoded_examples
from aurora_rl.world.cache import InvalidWorld, cache_root, exclusive_lock, read_manifest, staging_directory, write_manifest

logger = logging.getLogger(__name__)

DRAFTER_BUILD_VERSION = 2
REQUIRED_FILES = ("policy.json", "config.json", "model.safetensors")
DRAFTER_TRAINING = LMTraining(steps=300, batch_size=16, seq_len=128, lr=3e-3, warmup=20)


@dataclass(frozen=True)
class DrafterRecipe:
    domains: tuple[str, ...] | None = documented("world domains to pretrain on (None = all of them)", None)
    training: LMTraining = documented("how the drafter is language-modelled", DRAFTER_TRAINING)
    seed: int = documented("seeds init and batch order", 0)

    def __post_init__(self) -> None:
        if self.domains is not None and not self.domains:
            raise ValueError("DrafterRecipe.domains must be None (all) or a non-empty tuple")


def fingerprint(world: World, recipe: DrafterRecipe, precision: str | None = None) -> str:
    """The cache key: build version, the world (recipe and the precision its target was trained
    in), this recipe, and the drafter's own resolved training precision."""
    payload = {
        "build_version": DRAFTER_BUILD_VERSION,
        "world": world.recipe.fingerprint(),
        "world_precision": world.precision,
        "recipe": asdict(recipe),
        "precision": resolve_precision(precision),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def pretrained_drafter(
    world: World,
    recipe: DrafterRecipe = DrafterRecipe(),
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    precision: str | None = None,
) -> SmallLMDrafter:
    """A small-LM drafter (the world's drafter shape) pretrained on the world's training
    text of ``recipe.domains``; built on first use, then loaded from the cache. `precision`
    as in `aurora_rl.world.resolve_precision` (None = $AURORA_RL_PRECISION or auto)."""
    unknown = set(recipe.domains or ()) - set(world.domains)
    if unknown:
        raise ValueError(f"domains {sorted(unknown)} are not in world {world.name!r} (it has {world.domains})")
    precision = resolve_precision(precision)
    key = fingerprint(world, recipe, precision)
    directory = drafter_directory(world, recipe, cache_dir, precision)
    with exclusive_lock(directory.parent / f"{directory.name}.lock"):
        try:
            read_manifest(directory, key, REQUIRED_FILES)
            return SmallLMDrafter.from_pretrained(directory)
        except InvalidWorld as why:
            if directory.exists():
                logger.warning("rebuilding pretrained drafter at %s: %s", directory, why)
        with staging_directory(directory) as staging:
            drafter = _train(world, recipe, progress, precision)
            drafter.save_pretrained(staging)
            write_manifest(staging, {"recipe_fingerprint": key, "recipe": asdict(recipe), "world": world.name})
    return SmallLMDrafter.from_pretrained(directory)


def _train(world: World, recipe: DrafterRecipe, progress: bool, precision: str) -> SmallLMDrafter:
    data = world.dataset("train", recipe.domains)
    tokenizer = world.tokenizer()
    # Tokenised exactly as the target was trained (prompt and reference separately), so the
    # drafter never learns a token the target cannot emit at the prompt boundary.
    examples = encoded_examples(tokenizer, data["prompt"], data["reference"])
    stream = pack_examples(examples)
    drafter = SmallLMDrafter.from_config(world.drafter_config(), seed=recipe.seed)
    domains = "all domains" if recipe.domains is None else "+".join(recipe.domains)
    train_causal_lm(drafter.model, tokenizer, stream, recipe.training, seed=recipe.seed, progress=progress,
                    desc=f"pretrain drafter on {domains}", precision=precision)  # fmt: skip
    return drafter


def drafter_directory(
    world: World, recipe: DrafterRecipe, cache_dir: str | os.PathLike | None = None, precision: str | None = None
) -> Path:
    """Where ``pretrained_drafter`` keeps this drafter (for users who want the files)."""
    domains = "all" if recipe.domains is None else "+".join(recipe.domains)
    return cache_root(cache_dir) / "drafters" / f"{world.name}-{domains}-{fingerprint(world, recipe, precision)[:12]}"
