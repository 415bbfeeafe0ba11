"""The one machinery behind every configuration dataclass (train, serve, replay, sections).

A field is declared with :func:`documented` (its help text travels in the field's metadata),
``--help`` lists every key with :func:`describe`, :func:`parse_overrides` is the one loader
(dataclass defaults < ``--config`` YAML files < ``key=value`` overrides), and values that name
files go through :func:`check_paths`. Range checks live in each dataclass's
``__post_init__``, once, so every CLI that embeds the section reports them in the same words.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import field
from pathlib import Path
from typing import Callable, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

Config = TypeVar("Config")


class ConfigError(ValueError):
    """A configuration mistake, said with the key and the fix."""


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


def check_ranges(obj, section: str, rules) -> None:
    """A config dataclass's range checks, as a table: ``rules`` holds ``(field, bad, rule)``
    triples; the first field whose value ``bad(value)`` holds raises
    ``ValueError("<section>.<field> must be <rule>, got <value>")``."""
    for name, bad, rule in rules:
        value = getattr(obj, name)
        if bad(value):
            raise ValueError(f"{section}.{name} must be {rule}, got {value}")


def check_counts(section: str, obj, names) -> None:
    """``<section>.<name>=<value> must be >= 1`` for the first of ``names`` below 1 (None passes)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 1:
            raise ValueError(f"{section}.{name}={value} must be >= 1")


def looks_like_path(value: str) -> bool:
    """A local path (``./x``, ``/x``, ``~/x``, ``a/b/c``) rather than a hub id (``org/name``)."""
    return value.startswith((".", "/", "~")) or os.sep in value and value.count("/") != 1


def check_paths(cfg, keys) -> None:
    """Each ``section.name`` key whose value looks like a local path must exist."""
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and looks_like_path(value) and not Path(value).expanduser().exists():
            raise ConfigError(f"{key}={value!r} does not exist: give an existing local path (or a hub id, online)")


def parse_overrides(cls: type[Config], argv: list[str], command: str,
                    validate: Callable[[Config], None] | None = None) -> Config:  # fmt: skip
    """``[--config FILE.yaml] [key=value ...]`` -> a ``cls`` instance (range-checked by its
    ``__post_init__``s, then by ``validate`` for checks across fields); any problem is a
    :class:`ConfigError` naming the key."""
    cfg = _merge(cls, argv, command)
    if validate is not None:
        validate(cfg)
    return cfg


def to_yaml(cfg) -> str:
    """The resolved config, as written next to every run."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _merge(cls: type[Config], argv: list[str], command: str) -> Config:
    argv = list(argv)
    files = []
    while "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        files.append(argv[at + 1])
        del argv[at : at + 2]
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ConfigError(f"cannot parse {bad}: overrides look like section.key=value; see {command} --help")
    try:
        merged = OmegaConf.structured(cls)
        for path in files:
            if not Path(path).is_file():
                raise ConfigError(f"--config {path!r} does not exist")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(argv))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or ""
        raise ConfigError(f"bad config key {key!r}: {str(error).splitlines()[0]} (see {command} --help)") from None
    except ValueError as error:  # a dataclass __post_init__ range check
        raise ConfigError(str(error)) from None


def config_from_cli(
    argv: list[str], usage: str, keys: Callable[[], list[str]], load: Callable[[list[str]], Config]
) -> Config | int:
    """A CLI's start: ``-h``/``--help`` prints ``usage`` and every key (returns exit status 0);
    a bad configuration prints ``error: ...`` to stderr (returns 2); else the loaded config."""
    if {"-h", "--help"} & set(argv):
        print(usage + "\nConfiguration keys (key (default): help):\n" + "\n".join(keys()))
        return 0
    try:
        return load(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
