"""The world's corpus: every domain's samples, split into train and held-out `datasets.Dataset`s.

The split is by *source*, not by sample: a source (a stdlib module, a doc topic, or for
generated domains the prompt itself) is held out when its hash falls in the lowest
`HELDOUT_FRACTION`. The code and prose domains name a module the same way, so a module
held out for code is held out for its docstrings too, and held-out prompts never appear
in training. The split depends only on the text, not on the seed.
"""

from __future__ import annotations

import hashlib
import math
import random

import datasets

from .domains import GENERATORS, LengthBudget, Sample
from .recipe import WorldRecipe

SPLITS = ("train", "heldout")
COLUMNS = ("domain", "prompt", "reference")
HELDOUT_FRACTION = 0.2


def is_heldout(source: str) -> bool:
    """Whether a source belongs to the held-out split (a stable hash, same on every machine)."""
    return int(hashlib.sha256(source.encode()).hexdigest()[:8], 16) < HELDOUT_FRACTION * 2**32


def _split_domain(domain: str, samples: list[Sample], recipe: WorldRecipe, rng: random.Random) -> dict[str, list[Sample]]:
    """Split one domain's samples by source, drop duplicate prompts, draw the recipe's counts."""
    by_split: dict[str, dict[str, Sample]] = {"train": {}, "heldout": {}}
    for sample in samples:
        by_split["heldout" if is_heldout(sample.source) else "train"].setdefault(sample.prompt, sample)
    for prompt in set(by_split["train"]) & set(by_split["heldout"]):
        del by_split["heldout"][prompt]  # the same prompt in two stdlib modules: keep it out of held-out
    wanted = {"train": recipe.train_samples_per_domain, "heldout": recipe.heldout_samples_per_domain}
    chosen = {}
    for split in SPLITS:
        pool = list(by_split[split].values())
        if len(pool) < wanted[split]:
            raise ValueError(
                f"domain {domain!r} has only {len(pool)} {split} samples within prompt_chars={recipe.prompt_chars}, "
                f"reference_chars={recipe.reference_chars}, but the recipe asks for {wanted[split]}: lower "
                f"{split}_samples_per_domain or widen the length budget."
            )
        rng.shuffle(pool)
        chosen[split] = pool[: wanted[split]]
    return chosen


def build_corpus(recipe: WorldRecipe) -> dict[str, datasets.Dataset]:
    """{"train": Dataset, "heldout": Dataset}, columns `COLUMNS`, rows grouped by domain in recipe order."""
    budget = LengthBudget(recipe.prompt_chars, recipe.reference_chars)
    # Generated domains draw enough samples that both splits can be filled after hashing.
    pool_size = math.ceil(
        1.2 * max(recipe.train_samples_per_domain / (1 - HELDOUT_FRACTION), recipe.heldout_samples_per_domain / HELDOUT_FRACTION)
    )
    rows: dict[str, dict[str, list[str]]] = {split: {column: [] for column in COLUMNS} for split in SPLITS}
    for domain in recipe.domains:
        # A string seed is hashed with sha512 by `random`: stable across runs and processes.
        rng = random.Random(f"{recipe.seed}:{domain}")
        chosen = _split_domain(domain, GENERATORS[domain](pool_size, rng, budget), recipe, rng)
        for split in SPLITS:
            for sample in chosen[split]:
                rows[split]["domain"].append(domain)
                rows[split]["prompt"].append(sample.prompt)
                rows[split]["reference"].append(sample.reference)
    return {split: datasets.Dataset.from_dict(rows[split]) for split in SPLITS}
