"""A world around a real pretrained chat model: SmolLM2-135M-Instruct from a pip-shipped GGUF.

Nothing is trained. The build dequantizes the GGUF (cached, see ``gguf.py``), puts the
plain model and its tokenizer in the world directory, and renders the miniature world's
domain prompts (the same corpus, split and seeds) as chat requests with the model's own
chat template: the template's own default system turn, a user turn asking to continue the
domain's text, and the assistant header, so the model answers as it would in serving. The
``prompt`` column holds that rendered text (the tokenizer adds no BOS: calling it on the text gives the
exact ids ``apply_chat_template`` would), ``reference`` the corpus continuation.

The directory has the layout of every world (``REQUIRED_FILES`` in ``world.py``), so
``world.target()``, ``world.tokenizer()``, ``world.dataset(split)``, traffic schedules and
``gym.make("aurora_rl/SpecDecode-v0", world="smollm2")`` work unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .corpus import SPLITS, build_corpus
from .gguf import dequantized_dir
from .recipe import CHAT_BUILD_VERSION, ChatWorldRecipe, model_file

# What the user asks for in each domain; the corpus prompt follows as the text to continue.
INSTRUCTIONS = {
    "code": "Continue this Python code. Reply with code only.",
    "prose": "Continue this passage from the Python documentation.",
    "math": "Solve this problem step by step.",
    "sql": "Write the SQL query that answers the question.",
    "chat": "Continue this conversation as the assistant.",
}


def chat_prompt(tokenizer: PreTrainedTokenizerBase, domain: str, prompt: str) -> str:
    """The corpus ``prompt`` of ``domain`` as a rendered chat request, ending at the
    assistant header (the model's reply starts right after it)."""
    # No system turn: the template adds the model's own default one, as a plain client would get.
    messages = [{"role": "user", "content": f"{INSTRUCTIONS[domain]}\n\n{prompt}"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _link_or_copy(source: Path, destination: Path) -> None:
    """A hard link when the cache and the world share a filesystem (no second copy of the weights)."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def build_chat_world(recipe: ChatWorldRecipe, directory: Path, *, data_dir: str, drafter_dir: str) -> dict:
    """Fill ``directory`` (empty) with the model, tokenizer, chat prompts and drafter config."""
    began = time.perf_counter()
    converted = dequantized_dir(model_file(recipe.model))
    for path in converted.iterdir():
        if path.is_file() and path.name != "world.json":
            _link_or_copy(path, directory / path.name)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.chat_template is None:
        raise ValueError(f"{recipe.model} has no chat template; a chat world needs an instruction-tuned model")

    corpus = build_corpus(recipe)
    (directory / data_dir).mkdir()
    for split in SPLITS:
        rendered = [chat_prompt(tokenizer, d, p) for d, p in zip(corpus[split]["domain"], corpus[split]["prompt"])]
        data = corpus[split].remove_columns("prompt").add_column("prompt", rendered)
        pq.write_table(data.select_columns(["domain", "prompt", "reference"]).data.table, directory / data_dir / f"{split}.parquet")

    config = json.loads((directory / "config.json").read_text())
    drafter_config = recipe.drafter.llama_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_positions=config["max_position_embeddings"],
    )
    drafter_config.save_pretrained(directory / drafter_dir)
    return {
        "name": recipe.name,
        "build_version": CHAT_BUILD_VERSION,
        "recipe": recipe.to_dict(),
        "model_file": str(model_file(recipe.model)),
        "build_seconds": time.perf_counter() - began,
        "vocab_size": len(tokenizer),
        "samples": {split: len(corpus[split]) for split in SPLITS},
        # The dequantized weights are float32 whatever this machine runs natively.
        "training": {"precision": "fp32", "trained": False},
    }
