"""The target model: any HF causal LM, scored with a KV cache that can be rolled back.

A :class:`Target` is stateless apart from its weights; the per-sequence KV cache lives in
a :class:`RollbackCache` owned by the decode state, so one target can serve many
concurrent sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from aurora_rl.core.gqa_attention import use_gqa_attention
from aurora_rl.world.gguf import dequantized_dir, gguf_file


def plain_kv_layer(layer) -> bool:
    """A full-attention cache layer: one K/V entry per position, nothing else (no sliding
    window, no recurrent state), so it can be cut anywhere and stacked with others."""
    return type(layer).__name__ == "DynamicLayer"


class RollbackCache:
    """A KV cache that knows its length and can be cut back to any shorter length.

    Speculative decoding writes K/V for every proposal it verifies; after the verdict,
    the entries of rejected proposals must go. ``rollback(n)`` keeps the first ``n``.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.kv = DynamicCache(config=model.config)
        # Sliding-window layers otherwise drop what falls out of the window at every update,
        # and then cannot roll back past it; recording keeps it until the next rollback.
        self.kv.activate_past_recording()

    def __len__(self) -> int:
        return self.kv.get_seq_length()

    def rollback(self, length: int) -> None:
        current = len(self)
        if not 0 <= length <= current:
            raise ValueError(f"cannot roll a cache of length {current} back to {length}")
        # A negative argument removes that many entries (transformers 5.x refuses positive
        # ones). Even crop(0) matters: it trims recording sliding-window layers back to
        # their window; full-attention layers ignore it.
        self.kv.crop(length - current)

    def cut_every_layer(self, length: int) -> None:
        """Cut each full-attention layer to at most ``length`` entries, whatever the others hold.

        ``rollback`` trusts the layers to agree on the length; after a failure part-way
        through appending a step (some layers extended, some not) only this restores them.
        """
        for layer in self.kv.layers:
            if plain_kv_layer(layer) and layer.is_initialized and layer.keys.shape[-2] > length:
                layer.crop(length - layer.keys.shape[-2])
        self.rollback(min(len(self), length))


@dataclass
class ModelOutput:
    """Scores of ``n`` new tokens appended to a cached sequence.

    Attributes:
        logits: ``(n, V)`` next-token logits after each new token (float32).
        hidden: ``(n, D)`` concatenated hidden states of the requested layers, or None.
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None


def model_location(name_or_path: str | Path) -> str:
    """Where ``from_pretrained`` finds a model: a hub id or directory as given, or for a
    ``*.gguf`` file (or a directory holding one) its dequantized copy in the cache."""
    found = gguf_file(name_or_path)
    return str(name_or_path) if found is None else str(dequantized_dir(found))


def load_causal_lm(
    name_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> PreTrainedModel:
    """Load a causal LM by hub id, local directory or GGUF file, in eval mode."""
    model = AutoModelForCausalLM.from_pretrained(model_location(name_or_path), dtype=dtype)
    return model.to(device).eval()


def load_model_and_tokenizer(name_or_path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """:func:`load_causal_lm` and the tokenizer stored with it, checked to belong together."""
    location = model_location(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = load_causal_lm(location)
    check_tokenizer_fits(tokenizer, model, str(name_or_path))
    return model, tokenizer


def run_cached(
    model: PreTrainedModel,
    cache: RollbackCache,
    token_ids: Sequence[int] | torch.Tensor,
    hidden_layers: Sequence[int] = (),
) -> ModelOutput:
    """Append ``token_ids`` to the cached sequence in one forward pass and score them.

    ``hidden_layers`` index HF's ``hidden_states`` tuple: 0 is the embedding output and
    -1 the final (normalised) hidden state that the LM head reads.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=model.device).reshape(1, -1)
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            past_key_values=cache.kv,
            use_cache=True,
            output_hidden_states=bool(hidden_layers),
        )
    hidden = None
    if hidden_layers:
        hidden = torch.cat([out.hidden_states[i][0] for i in hidden_layers], dim=-1)
    return ModelOutput(logits=out.logits[0].float(), hidden=hidden)


class Target:
    """Wraps a HF causal LM as the verifier of speculative decoding.

    Args:
        model: any ``AutoModelForCausalLM``-compatible model (put in eval mode here; a
            grouped-query ``sdpa`` model is switched to :mod:`~aurora_rl.core.gqa_attention`).
        hidden_layers: which hidden states to return with every forward pass (needed by
            drafters that read the target's features, e.g. the EAGLE-style head).
    """

    def __init__(self, model: PreTrainedModel, hidden_layers: Sequence[int] = ()) -> None:
        self.model = model.eval()
        use_gqa_attention(model)  # verify passes read grouped K/V heads in place (same numbers)
        num_states = model.config.num_hidden_layers + 1
        for layer in hidden_layers:
            if not -num_states <= layer < num_states:
                raise ValueError(
                    f"hidden layer {layer} does not exist: the target has {num_states} "
                    f"hidden states (embeddings + {num_states - 1} layers); use an index "
                    f"in [{-num_states}, {num_states - 1}]"
                )
        self.hidden_layers = tuple(hidden_layers)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        hidden_layers: Sequence[int] = (),
    ) -> "Target":
        return cls(load_causal_lm(name_or_path, dtype, device), hidden_layers)

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head: the size of every distribution the target emits."""
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def max_positions(self) -> int:
        return getattr(self.model.config, "max_position_embeddings", 1 << 30)

    def normalized_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        """``layers`` as non-negative indices (so ``-1`` equals the last layer's index)."""
        num_states = self.model.config.num_hidden_layers + 1
        return tuple(layer % num_states for layer in layers)

    @property
    def feature_size(self) -> int:
        return self.model.config.hidden_size * len(self.hidden_layers)

    def new_cache(self) -> RollbackCache:
        return RollbackCache(self.model)

    def forward(self, cache: RollbackCache, token_ids: Sequence[int] | torch.Tensor) -> ModelOutput:
        """Append ``token_ids`` to ``cache`` and return their logits (and hidden states)."""
        return run_cached(self.model, cache, token_ids, self.hidden_layers)


def eos_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS as the list decoding stops on (empty when it has none)."""
    return [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, where: str) -> None:
    """A tokenizer whose ids run past the model's output vocabulary belongs to another model."""
    vocab = model.get_output_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ValueError(
            f"the tokenizer at {where} has {len(tokenizer)} tokens but the model's vocabulary has "
            f"{vocab}: they do not belong together; load both from the same model directory"
        )
