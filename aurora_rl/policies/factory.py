"""Drafters by kind, in one place: the train arms and the server build every draft here.

One plain ``if/elif`` on ``drafter.kind``; to add a kind, add it to the tuples below and to
:func:`scratch_drafter` / :func:`load_drafter` (learned kinds) or :func:`model_free_drafter`
(training-free kinds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers import AutoModelForCausalLM

from aurora_rl.core.draft import DraftPolicy
from aurora_rl.core.target import Target, eos_token_ids
from aurora_rl.policies.checkpoint import POLICY_FILE, read_manifest
from aurora_rl.policies.draft_vocab import choose_draft_vocab
from aurora_rl.policies.eagle import EagleDrafter
from aurora_rl.policies.hybrid import HybridDrafter
from aurora_rl.policies.pretrained import DRAFTER_TRAINING, DrafterRecipe, pretrained_drafter
from aurora_rl.policies.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.policies.suffix import SuffixConfig, SuffixDrafter
from aurora_rl.settings import check_counts, documented
from aurora_rl.world import World

LEARNED_KINDS = ("small_lm", "eagle")
MODEL_FREE_KINDS = ("suffix", "prompt_lookup")
DRAFTER_KINDS = LEARNED_KINDS + MODEL_FREE_KINDS

# pretrain_eagle(domains) -> an EAGLE head pretrained offline on those domains' prompts
# (algos/eagle_pretrain.py: a layer above this one, so the caller passes it).
PretrainEagle = Callable[["tuple[str, ...] | None"], DraftPolicy]


@dataclass
class DrafterSection:
    kind: str = documented("small_lm (independent small causal LM) or eagle (head on the target's hidden states)", "small_lm")
    path: str | None = documented("start every 'pretrained' arm from this saved drafter directory (or, for small_lm, any HF causal LM dir) instead of pretraining one", None)
    pretrain_domains: list[str] | None = documented(
        "domains the static draft is pretrained on (null = all): what was at hand offline; "
        "traffic from the other domains is a shift it never saw", factory=lambda: ["code", "prose"])
    pretrain_steps: int = documented("optimizer steps of offline pretraining", 300)
    eagle_layers: list[int] = documented("eagle: target hidden states it reads (HF hidden_states indices; -1 = last)", factory=lambda: [-1])
    draft_vocab_size: int = documented(
        "eagle: EAGLE-3's reduced draft vocabulary, the n most frequent target tokens (scratch: of the world's "
        "training prompts; pretrained: of those prompts and the target's answers), EOS always in; tokens outside "
        "are never proposed (still lossless). 0 = the target's full vocabulary", 0)
    suffix: SuffixConfig = documented("the suffix drafter (arms suffix and *+suffix; serve drafter.kind=suffix or drafter.with_suffix)", factory=SuffixConfig)
    prompt_lookup: PromptLookupConfig = documented("the prompt lookup drafter (arm prompt_lookup; serve drafter.kind=prompt_lookup)", factory=PromptLookupConfig)
    hybrid_min_suffix_score: float = documented(
        "hybrids (*+suffix): use the suffix proposal when its expected accepted tokens (empirical frequencies) "
        "reach this, else the learned draft's", 1.0)

    def __post_init__(self) -> None:
        check_counts("drafter", self, ("pretrain_steps",))
        if self.draft_vocab_size < 0:
            raise ValueError(f"drafter.draft_vocab_size={self.draft_vocab_size} must be >= 0 (0 = the full vocabulary)")
        if not self.hybrid_min_suffix_score > 0:
            raise ValueError(f"drafter.hybrid_min_suffix_score={self.hybrid_min_suffix_score} must be > 0")

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """The target hidden states a drafter of this kind reads (the ``Target`` must expose them)."""
        return tuple(self.eagle_layers) if self.kind == "eagle" else ()

    def pretraining_problem(self, external_target: bool) -> str | None:
        """Why this drafter cannot be pretrained for the target, or None: a small LM is
        pretrained on the world's text in the world's tokenizer, which an external target
        does not share (an EAGLE head learns from the target itself)."""
        if external_target and self.kind == "small_lm" and not self.path:
            return ("world.target is an external model, so the world's drafter pretraining does not fit its "
                    "vocabulary: set drafter.path to a small causal LM sharing its tokenizer")  # fmt: skip
        return None


def scratch_drafter(spec: DrafterSection, target: Target, world: World, seed: int, tokenizer=None) -> DraftPolicy:
    """A freshly initialised drafter of the learned kind ``spec.kind`` (``tokenizer``: the
    target's, for an EAGLE head's reduced vocabulary; default the world's)."""
    if spec.kind == "eagle":
        return EagleDrafter.from_target(target, seed=seed, draft_vocab=scratch_draft_vocab(spec, target, world, tokenizer))
    if spec.path:  # an external target: the given drafter's shape, re-initialised
        template = load_drafter(spec.path, target)
        return SmallLMDrafter.from_config(template.model.config, seed=seed)
    return SmallLMDrafter.from_config(world.drafter_config(), seed=seed)


def scratch_draft_vocab(spec: DrafterSection, target: Target, world: World, tokenizer=None):
    """``d2t`` of a fresh EAGLE head: the ``spec.draft_vocab_size`` most frequent tokens of the
    world's training prompts (a head from scratch has seen no answers), or None (full vocabulary)."""
    if not spec.draft_vocab_size:
        return None
    tokenizer = tokenizer if tokenizer is not None else world.tokenizer()
    prompts = [tokenizer(row["prompt"])["input_ids"] for row in world.dataset("train")]
    eos = eos_token_ids(tokenizer)
    return choose_draft_vocab(prompts, min(spec.draft_vocab_size, target.vocab_size), target.vocab_size, always=eos)


def load_drafter(path: str | Path, target: Target) -> DraftPolicy:
    """A saved aurora_rl drafter, or (small_lm) any HF causal LM directory."""
    path = Path(path)
    if not (path / POLICY_FILE).is_file():
        return SmallLMDrafter(AutoModelForCausalLM.from_pretrained(str(path)))
    if read_manifest(path)["kind"] == "eagle":
        return EagleDrafter.from_pretrained(path, target)
    return SmallLMDrafter.from_pretrained(path)


def pretrained(spec: DrafterSection, target: Target, world: World, *, seed: int, pretrain_eagle: PretrainEagle,
               cache_dir: str | None = None, precision: str | None = None, progress: bool = True) -> DraftPolicy:  # fmt: skip
    """The static draft: ``spec.path`` if given, else trained offline on ``spec.pretrain_domains``.

    small_lm: language-modelled on the world's text (cached on disk). eagle: a head has no
    text-only form, so ``pretrain_eagle`` trains one on the target's features over those
    domains' prompts and its answers (one prefill each; cached; see
    ``algos.eagle_pretrain.eagle_pretrainer``).
    """
    if spec.path:
        return load_drafter(spec.path, target)
    domains = tuple(spec.pretrain_domains) if spec.pretrain_domains else None
    if spec.kind == "small_lm":
        recipe = DrafterRecipe(domains, DRAFTER_TRAINING.with_steps(spec.pretrain_steps), seed)
        return pretrained_drafter(world, recipe, cache_dir, progress=progress, precision=precision)
    return pretrain_eagle(domains)


def model_free_drafter(spec: DrafterSection, kind: str, vocab_size: int) -> DraftPolicy:
    """A training-free drafter with an empty memory: ``suffix`` or ``prompt_lookup``."""
    if kind == "suffix":
        return SuffixDrafter(vocab_size, spec.suffix)
    if kind == "prompt_lookup":
        return PromptLookupDrafter(vocab_size, spec.prompt_lookup)
    raise ValueError(f"drafter kind {kind!r} is not one of {', '.join(MODEL_FREE_KINDS)}")


def with_suffix(spec: DrafterSection, learned: DraftPolicy, vocab_size: int) -> HybridDrafter:
    """``learned`` combined per step with a fresh suffix drafter."""
    return HybridDrafter(learned, model_free_drafter(spec, "suffix", vocab_size), spec.hybrid_min_suffix_score)


def build_drafter(spec: DrafterSection, target: Target, world: World, *, start: str, hybrid: bool, seed: int,
                  pretrained: Callable[[], DraftPolicy], tokenizer=None) -> DraftPolicy:  # fmt: skip
    """The server's draft: ``spec.kind`` (training-free), or a learned draft that starts
    ``pretrained`` (``pretrained()``) or ``scratch``, combined with the suffix drafter if ``hybrid``."""
    if spec.kind in MODEL_FREE_KINDS:
        return model_free_drafter(spec, spec.kind, target.vocab_size)
    drafter = pretrained() if start == "pretrained" else scratch_drafter(spec, target, world, seed, tokenizer)
    return with_suffix(spec, drafter, target.vocab_size) if hybrid else drafter
