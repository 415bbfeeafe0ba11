"""Code: functions and methods of the interpreter's own standard library.

Each top-level function and each method, decorators included, is cut into windows of whole
lines: the prompt is the first lines, the reference the lines that follow (starting with
the newline that ends the prompt's last line). Trailing whitespace is dropped.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Iterator

from .sample import LengthBudget, Sample
from .stdlib import ParsedModule, parsed_modules


def _definitions(module: ParsedModule) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Module-level functions and methods of module-level classes, in source order."""
    for node in module.tree.body:
        children = node.body if isinstance(node, ast.ClassDef) else [node]
        for child in children:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield child


def generate(count: int, rng: random.Random, budget: LengthBudget) -> list[Sample]:
    """Every window of every definition (`count` and `rng` are unused: the text is fixed)."""
    del count, rng
    samples = []
    for module in parsed_modules():
        for node in _definitions(module):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = [("\n", line.rstrip()) for line in module.lines[first - 1 : node.end_lineno]]
            for prompt, reference in budget.windows(lines):
                samples.append(Sample(prompt, reference, source=f"stdlib:{module.name}"))
    return samples
