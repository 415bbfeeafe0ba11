"""Chat messages -> prompt token ids.

A tokenizer with a chat template formats the conversation itself. Without one (the
miniature world's tokenizer has none) a plain transcript is used, the format the world's
``chat`` domain was trained on::

    System: You are a helpful assistant.
    User: How many metres are in 3 kilometres?
    Assistant:

with each earlier assistant turn as ``Assistant: <content>``. The model continues after
``Assistant:``; a plain-template completion stops where the model starts the next user
turn (``\\nUser:``), since nothing else would end the assistant's turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

PLAIN_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
PLAIN_STOP = ("\nUser:",)


@dataclass(frozen=True)
class ChatPrompt:
    """A formatted conversation: the prompt's token ids and the stop strings it implies."""

    token_ids: list[int]
    stop: tuple[str, ...]


def plain_transcript(messages: list[tuple[str, str]]) -> str:
    """``[(role, content), ...]`` -> the plain transcript ending in ``Assistant:``."""
    lines = [f"{PLAIN_ROLES[role]}: {content}" for role, content in messages]
    return "\n".join(lines + ["Assistant:"])


def format_chat(tokenizer: PreTrainedTokenizerBase, messages: list[tuple[str, str]]) -> ChatPrompt:
    """Format ``[(role, content), ...]`` for generation with ``tokenizer``."""
    if tokenizer.chat_template:
        conversation = [{"role": role, "content": content} for role, content in messages]
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=False)
        return ChatPrompt(list(ids), ())
    return ChatPrompt(tokenizer(plain_transcript(messages))["input_ids"], PLAIN_STOP)
