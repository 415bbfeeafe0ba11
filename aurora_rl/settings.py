"""The one machinery behind every configuration dataclass (train, serve, replay, sections).

A field is declared with :func:`documented` (its help text travels in the field's metadata),
``--help`` lists every key with :func:`describe`, and values that name files go through
:func:`looks_like_path` before the filesystem is asked. Range checks live in each dataclass's
``__post_init__``, once, so every CLI that embeds the section reports them in the same words.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import field


def documented(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    """A dataclass field with a default (or a default factory) and its one-line help."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def describe(instance, prefix: str = "") -> list[str]:
    """``key (default): help`` for every field of ``instance``, nested sections dotted; it walks
    the instance, so a section default set by a factory shows as such."""
    lines = []
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{f.name}: {f.metadata.get('help', '')}")
            lines += describe(value, prefix + f.name + ".")
        else:
            lines.append(f"  {prefix}{f.name} ({value!r}): {f.metadata.get('help', '')}")
    return lines


def looks_like_path(value: str) -> bool:
    """A local path (``./x``, ``/x``, ``~/x``, ``a/b/c``) rather than a hub id (``org/name``)."""
    return value.startswith((".", "/", "~")) or os.sep in value and value.count("/") != 1
