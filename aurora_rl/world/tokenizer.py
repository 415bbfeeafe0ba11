"""The world's byte-level BPE tokenizer and the one way samples become token ids.

Prompt and reference are encoded *separately* and concatenated. That is exactly what a
decoder sees at inference (the prompt is tokenized alone, the model continues it), so the
target never trains on a merge across the prompt / reference boundary that inference would
not produce (e.g. "\\n" + "    return" merging into one whitespace token).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_positions: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with <pad>=0, <bos>=1, <eos>=2.

    Byte-level means every string round-trips (no unknown token). Calling the tokenizer
    prepends <bos>, as Llama tokenizers do; pass `add_special_tokens=False` to get bare ids.
    The vocabulary can come out smaller than `vocab_size` when the text has fewer merges.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, backend.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=max_positions
    )


def encoded_examples(
    tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], references: Sequence[str]
) -> list[tuple[list[int], int]]:
    """(ids, prompt_length) per pair: ids = <bos> + prompt + reference + <eos>, ids[:prompt_length] = <bos> + prompt."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    reference_ids = tokenizer(list(references), add_special_tokens=False)["input_ids"]
    return [
        ([tokenizer.bos_token_id, *prompt, *reference, tokenizer.eos_token_id], 1 + len(prompt))
        for prompt, reference in zip(prompt_ids, reference_ids)
    ]
