"""Training precision: bf16 autocast only where the hardware runs it natively, forced by config.

These hold on any x86 CPU: the capability check is compared with what the kernel reports in
/proc/cpuinfo, and both precisions are exercised explicitly whatever this CPU supports.
"""

import dataclasses
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from aurora_rl.policies.pretrained import DrafterRecipe, fingerprint
from aurora_rl.train.config import ConfigError, load_config
from aurora_rl.world import LMTraining, ModelShape, RECIPES, World, native_bf16, resolve_precision, train_causal_lm, world_dir
from aurora_rl.world.precision import ENV_PRECISION, autocast

from conftest import make_llama

MICRO = dataclasses.replace(RECIPES["tiny"], name="micro", target=ModelShape(layers=1, hidden=32, heads=2, intermediate=64))


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("no CPU flags in /proc/cpuinfo")


def test_native_bf16_agrees_with_the_cpu_flags_the_kernel_reports():
    assert native_bf16("cpu") == bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def test_auto_follows_the_capability_and_explicit_values_win(monkeypatch):
    monkeypatch.delenv(ENV_PRECISION, raising=False)
    assert resolve_precision() == resolve_precision("auto") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    monkeypatch.setenv(ENV_PRECISION, "bf16")
    assert resolve_precision() == "bf16" and resolve_precision("fp32") == "fp32"


def test_bad_precisions_are_named_with_their_source(monkeypatch):
    with pytest.raises(ValueError, match=r"^precision='fp16': choose one of \['auto', 'fp32', 'bf16'\]"):
        resolve_precision("fp16")
    monkeypatch.setenv(ENV_PRECISION, "half")
    with pytest.raises(ValueError, match=r"^\$AURORA_RL_PRECISION='half': choose one of"):
        resolve_precision()
    with pytest.raises(ValueError, match="autocast needs a resolved precision"):
        with autocast("auto"):
            pass
    with pytest.raises(ConfigError, match=r"world.precision='fp16': choose one of \['auto', 'fp32', 'bf16'\] or null"):
        load_config(["world.precision=fp16"])


def test_autocast_runs_matmuls_in_bf16_only_when_asked():
    a = torch.randn(4, 4)
    with autocast("fp32"):
        assert (a @ a).dtype == torch.float32
    with autocast("bf16"):
        assert (a @ a).dtype == torch.bfloat16


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer with ids 0/1/2 = <bos>/<eos>/<pad>, as `make_llama` expects."""
    words = ["<bos>", "<eos>", "<pad>", "the", "cat", "sat", "on", "mat."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def test_the_trainer_reports_and_uses_the_precision_it_was_given():
    texts, tokenizer = ["the cat sat on the mat. " * 8] * 4, word_tokenizer()

    def run(precision):
        model = make_llama(vocab=300, hidden=32, layers=1, seed=0)
        metrics = train_causal_lm(model, tokenizer, texts, LMTraining(steps=2, batch_size=2, seq_len=8, lr=1e-2), seed=0,
                                  progress=False, precision=precision)  # fmt: skip
        return model, metrics

    (fp32, m32), (bf16, m16) = run("fp32"), run("bf16")
    assert (m32["precision"], m16["precision"]) == ("fp32", "bf16")
    # Same seed, data and steps: only the precision differs, and it shows in the weights.
    assert not torch.equal(fp32.model.embed_tokens.weight, bf16.model.embed_tokens.weight)
    assert run("fp32")[1]["loss_last"] == m32["loss_last"]


def test_precision_is_part_of_every_cache_key(tmp_path):
    fp32, bf16 = world_dir(MICRO, tmp_path, "fp32"), world_dir(MICRO, tmp_path, "bf16")
    assert fp32 != bf16 and fp32.name.startswith("micro-fp32-") and bf16.name.startswith("micro-bf16-")
    assert world_dir(MICRO, tmp_path, "auto") == world_dir(MICRO, tmp_path, resolve_precision("auto"))
    world = lambda precision: World(tmp_path, MICRO, {"training": {"precision": precision}})  # noqa: E731
    recipe = DrafterRecipe()
    keys = {fingerprint(world(w), recipe, d) for w in ("fp32", "bf16") for d in ("fp32", "bf16")}
    assert len(keys) == 4  # the world's precision and the drafter's own both move the drafter cache
