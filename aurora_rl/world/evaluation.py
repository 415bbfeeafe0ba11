"""What a world reports about its models: held-out perplexity, greedy samples, per-token cost."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence

import datasets
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .tokenizer import encoded_examples


@torch.inference_mode()
def heldout_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, float]:
    """Per-domain perplexity of the reference continuation given its prompt.

    exp(mean negative log-likelihood) over the reference tokens and the closing <eos> of
    every row of that domain, conditioned on <bos> + prompt, in fp32: how well the model
    predicts exactly the tokens a drafter will be asked to propose.
    """
    examples = encoded_examples(tokenizer, dataset["prompt"], dataset["reference"])
    by_domain: dict[str, list[tuple[list[int], int]]] = defaultdict(list)
    for domain, example in zip(dataset["domain"], examples):
        by_domain[domain].append(example)
    perplexities = {}
    for domain, rows in tqdm(by_domain.items(), desc="perplexity", disable=not progress):
        rows = sorted(rows, key=lambda row: len(row[0]))  # similar lengths per batch: little padding
        total_nll, total_tokens = 0.0, 0
        for first in range(0, len(rows), batch_size):
            batch = rows[first : first + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, prompt_length) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
                labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            # position t predicts token t + 1
            nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
            total_nll += nll.item()
            total_tokens += int((labels[:, 1:] != -100).sum())
        perplexities[domain] = math.exp(total_nll / total_tokens)
    return perplexities


@torch.inference_mode()
def greedy_continuations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, max_new_tokens: int = 96
) -> list[str]:
    """The model's greedy continuation of each prompt (decoded, special tokens dropped), one prompt at a time."""
    continuations = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
        )
        continuations.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return continuations


@torch.inference_mode()
def per_token_latency_ms(model: PreTrainedModel, *, context: int = 32, tokens: int = 64, repeats: int = 3) -> float:
    """Milliseconds per one-token forward at batch 1 with a KV cache after `context` tokens.

    The minimum over `repeats` runs of the mean step time: the least noisy estimate on a
    shared machine. This is the cost a drafter must undercut for speculation to pay off.
    """
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, model.config.vocab_size, (1, context), generator=generator)
    best = math.inf
    for _ in range(repeats):
        out = model(input_ids=prefix, use_cache=True)
        next_token = prefix[:, -1:]
        began = time.perf_counter()
        for _ in range(tokens):
            out = model(input_ids=next_token, past_key_values=out.past_key_values, use_cache=True)
        best = min(best, (time.perf_counter() - began) / tokens * 1000)
    return best
