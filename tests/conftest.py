"""Shared fixtures. Hub access is disabled so nothing can silently download."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs in two pytest-xdist workers on two cores: every process it starts (CLI smoke
# runs, servers) uses one torch thread too, so they do not fight the other worker for a core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from processes import processes  # noqa: F401  (the fixture: processes a test starts end with it)

# Tests run on 2 cores next to other work; one intra-op thread avoids contention and
# makes timings of the suite predictable.
torch.set_num_threads(1)


def make_llama(
    vocab: int, hidden: int, layers: int, seed: int, heads: int = 2, kv_heads: int | None = None
) -> LlamaForCausalLM:
    """A small random-weight Llama with BOS=0, EOS=1, PAD=2 (deterministic under seed);
    ``kv_heads < heads`` gives it grouped-query attention."""
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads if kv_heads is None else kv_heads,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


def perturbed_copy(model: LlamaForCausalLM, scale: float, seed: int) -> LlamaForCausalLM:
    """The same model with Gaussian noise on every weight: a draft that agrees often."""
    config = model.config
    copy = make_llama(config.vocab_size, config.hidden_size, config.num_hidden_layers, seed,
                      config.num_attention_heads, config.num_key_value_heads)  # fmt: skip
    copy.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in copy.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale * param.std().clamp_min(1e-3))
    return copy


@pytest.fixture(scope="session")
def random_target_model() -> LlamaForCausalLM:
    return make_llama(vocab=97, hidden=64, layers=2, seed=0)
