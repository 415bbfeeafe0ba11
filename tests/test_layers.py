"""Imports point downward only (DEVELOPERS.md, "Layers"): checked by scanning every module's
imports, relative ones resolved to the package they name."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aurora_rl"

# Lower numbers are lower layers; a module may import its own layer or lower ones.
LAYER = {
    "world": 0,
    "plots": 0,
    "settings": 0,
    "core": 1,
    "policies": 2,
    "algos": 3,
    "envs": 4,
    "online": 4,
    "runtime": 5,
    "serving": 5,  # deprecated alias of runtime/ and online/ (aurora_rl/serving/__init__.py)
    "train": 6,
    "serve": 7,
}
# Extra rules beyond the ordering.
FORBIDDEN = {
    "policies": {"gymnasium"},
    "algos": {"gymnasium", "aurora_rl.envs", "aurora_rl.online", "aurora_rl.runtime", "torch.utils.tensorboard"},
    "online": {"gymnasium", "aurora_rl.envs", "fastapi", "torch.utils.tensorboard"},
    "envs": {"aurora_rl.online", "aurora_rl.runtime"},
    "runtime": {"gymnasium", "aurora_rl.envs"},
    "core": {"gymnasium"},
    # The serve CLI shares the train CLI's sections and controllers through runtime/, policies/, envs/.
    "serve": {"aurora_rl.train"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    # "from .x import y" in aurora_rl/world/build.py is aurora_rl.world.x
    package = ["aurora_rl", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)]
            names.add(".".join(base + ([node.module] if node.module else [])))
    return names


def test_relative_imports_resolve_to_the_package_they_name():
    assert "aurora_rl.world.lm_training" in imported_modules(PACKAGE / "world" / "recipe.py")


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "aurora_rl" and len(parts) > 1 else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downward(path):
    relative = path.relative_to(PACKAGE)
    own = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or relative.name != "__init__.py" else None
    if own is None:  # aurora_rl/__init__.py only registers the env by string
        return
    assert own in LAYER, f"{relative}: add its package to LAYER in this test"
    for module in imported_modules(path):
        assert not module.startswith(("experiments", "benchmarks")), f"{relative} imports {module}"
        for banned in FORBIDDEN.get(own, ()):
            assert not (module == banned or module.startswith(banned + ".")), f"{relative} must not import {module}"
        other = layer_of(module)
        if other is not None and other in LAYER:
            assert LAYER[other] <= LAYER[own], f"{relative} ({own}) imports {module} ({other}), a higher layer"


def test_every_package_is_classified():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYER), f"unclassified: {packages - set(LAYER)}"


def test_the_old_serving_names_still_import_with_a_deprecation_warning():
    import importlib
    import sys

    for name in [m for m in sys.modules if m == "aurora_rl.serving" or m.startswith("aurora_rl.serving.")]:
        del sys.modules[name]
    with pytest.warns(DeprecationWarning, match="aurora_rl.serving is deprecated"):
        old = importlib.import_module("aurora_rl.serving.engine")
    from aurora_rl.online.publish import LivePolicy
    from aurora_rl.runtime.engine import Engine

    assert old.Engine is Engine
    assert importlib.import_module("aurora_rl.serving.publish").LivePolicy is LivePolicy


@pytest.mark.parametrize(
    "old, new, name",
    [("aurora_rl.train.rounds", "aurora_rl.online.rounds", "train_rounds"),
     ("aurora_rl.train.controllers", "aurora_rl.policies.controller_factory", "build_controller")],
)  # fmt: skip
def test_moved_train_modules_still_import_with_a_deprecation_warning(old, new, name):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: import {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
