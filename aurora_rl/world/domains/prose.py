"""Prose: technical documentation text shipped with Python.

Two sources: the language reference topics behind `help()` (`pydoc_data.topics`) and the
docstrings of the stdlib modules the code domain reads. Only running-text paragraphs are
kept (no code examples, headings or underlines); their hard line wraps are undone, and
they are cut into windows of whole sentences, so the domain reads as prose, not as layout.
That leaves about a third as much text as the code domain, so prose windows overlap.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Iterator

from pydoc_data.topics import topics

from .sample import LengthBudget, Sample
from .stdlib import parsed_modules

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
_MIN_PARAGRAPH_CHARS = 40


def _documents() -> Iterator[tuple[str, str]]:
    """(source, text) for every doc topic, then every module, class and function docstring."""
    for name in sorted(topics):
        yield f"topic:{name}", topics[name]
    for module in parsed_modules():
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node, clean=True)
                if docstring:
                    # Same source name as the code domain: a module is held out for both.
                    yield f"stdlib:{module.name}", docstring


def _paragraphs(text: str) -> Iterator[str]:
    """Running-text paragraphs of a document, each reflowed onto one line."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not lines[0] or lines[0][0].isspace() or lines[0].startswith(("..", ">>>")):
            continue  # indented code or quotes, reST directives, doctests
        paragraph = " ".join(" ".join(lines).split())
        if len(paragraph) >= _MIN_PARAGRAPH_CHARS and paragraph[-1] in ".:?!" and any(c.islower() for c in paragraph):
            yield paragraph


def _sentences(text: str) -> list[tuple[str, str]]:
    """(separator, sentence) units: "\\n" opens a paragraph, " " joins sentences within one."""
    return [
        (" " if index else "\n", sentence)
        for paragraph in _paragraphs(text)
        for index, sentence in enumerate(_SENTENCE_END.split(paragraph))
    ]


def generate(count: int, rng: random.Random, budget: LengthBudget) -> list[Sample]:
    """Every window of every document (`count` and `rng` are unused: the text is fixed)."""
    del count, rng
    return [
        Sample(prompt, reference, source)
        for source, text in _documents()
        for prompt, reference in budget.windows(_sentences(text), overlap=True)
    ]
