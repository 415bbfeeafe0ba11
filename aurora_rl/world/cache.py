"""The on-disk cache of built worlds: where it lives, how a build is published, how it is checked.

A world directory is complete exactly when its manifest (`world.json`) exists and every file
it lists has the recorded size and sha256. Builds happen in a temporary sibling directory
whose manifest is written last, then the directory is moved into place with one
`os.replace`, so a crash leaves either the old state or the new one, never a torn world.
A per-world `fcntl` lock serialises processes that check or build the same world.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

MANIFEST = "world.json"
ENV_CACHE = "AURORA_RL_CACHE"


class InvalidWorld(Exception):
    """A world directory that must not be loaded; the message says why."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else $AURORA_RL_CACHE, else ~/.cache/aurora_rl."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "aurora_rl")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict) -> None:
    """Record every file under `directory` (size and sha256) in `manifest["files"]`, then write it last."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    partial = directory / f"{MANIFEST}.partial"
    partial.write_text(json.dumps({**manifest, "files": files}, indent=2))
    os.replace(partial, directory / MANIFEST)


def read_manifest(directory: Path, fingerprint: str, required: Iterable[str]) -> dict:
    """The manifest of a complete world built from the recipe with this fingerprint.

    Raises InvalidWorld naming the first problem: no directory, no or unreadable manifest,
    another recipe, a `required` file not listed, or a listed file missing, of the wrong
    size, or with the wrong hash.
    """
    if not directory.is_dir():
        raise InvalidWorld(f"{directory} does not exist")
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise InvalidWorld(f"manifest {MANIFEST} is missing or unreadable ({error})") from None
    if manifest.get("recipe_fingerprint") != fingerprint:
        raise InvalidWorld(f"manifest was written for recipe {manifest.get('recipe_fingerprint')!r}, not {fingerprint!r}")
    unlisted = sorted(set(required) - set(manifest.get("files", {})))
    if unlisted:
        raise InvalidWorld(f"manifest does not list {unlisted}")
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise InvalidWorld(f"{name} is missing")
        if path.stat().st_size != expected["bytes"]:
            raise InvalidWorld(f"{name} has {path.stat().st_size} bytes, the manifest says {expected['bytes']}")
        if sha256_file(path) != expected["sha256"]:
            raise InvalidWorld(f"{name} does not match its sha256 in the manifest")
    return manifest


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _process_alive(pid: int) -> bool:
    """Whether `pid` is another live process (our own pid means a leftover of an earlier failed build)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return pid != os.getpid()


@contextlib.contextmanager
def staging_directory(final: Path) -> Iterator[Path]:
    """An empty sibling of `final` to build into; on success it replaces `final` atomically.

    Call under `exclusive_lock`: staging directories of crashed builds of the same world
    are removed first (never one whose process is alive: with the lock file deleted under
    it, another builder may still be at work), and an invalid `final` is moved aside and deleted.
    """
    for stale in final.parent.glob(f".{final.name}.*"):
        if not _process_alive(int(stale.name.rsplit("-", 1)[1])):
            shutil.rmtree(stale, ignore_errors=True)
    staging = final.parent / f".{final.name}.building-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        # os.replace cannot overwrite a non-empty directory: move the old one out first.
        trash = final.parent / f".{final.name}.discarded-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash)
    os.replace(staging, final)
