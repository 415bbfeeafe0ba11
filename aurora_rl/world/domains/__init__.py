"""Text domains of the miniature world, each a generator of (prompt, reference) samples.

Every generator has the signature `generate(count, rng, budget) -> list[Sample]`: the
generated domains (math, sql, chat) return exactly `count` samples with distinct prompts
drawn with `rng`; the stdlib domains (code, prose) return every window of their fixed text.
"""

from . import arithmetic, chat, code, prose, sql
from .sample import LengthBudget, Sample

GENERATORS = {
    "code": code.generate,
    "prose": prose.generate,
    "math": arithmetic.generate,
    "sql": sql.generate,
    "chat": chat.generate,
}

__all__ = ["GENERATORS", "LengthBudget", "Sample"]
