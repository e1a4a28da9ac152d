"""Run every docstring example of every module of the package, and check each ``__all__``.

Modules are found with ``pkgutil.walk_packages`` over ``pyro_vi.__path__`` and over
``pyro_vi.models.__path__`` (``models/`` is installed as ``pyro_vi.models`` through a
package-dir mapping, so it is not below ``pyro_vi.__path__``); a test checks that the walk
finds every ``.py`` file of pyro_vi/ and models/, the ``pyro_vi.cli`` and ``pyro_vi.models``
subpackages included. pyro-vi has no optional dependency, so a module that fails to import
fails its test; none is skipped. The public API's own checks are in ``test_public_api.py``.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import pyro_vi
import pyro_vi.models

OPTIONFLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
ROOT = Path(__file__).resolve().parents[1]


def _module_names() -> list[str]:
    names = {"pyro_vi", "pyro_vi.models"}
    for package in (pyro_vi, pyro_vi.models):
        # walk_packages yields a package before importing it to look inside, so a package that
        # fails to import is still listed, and then fails its own test below.
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".",
                                          onerror=lambda name: None):
            names.add(info.name)
    return sorted(names)


MODULES = _module_names()


def _names_from_files() -> set[str]:
    """The dotted name of every module file in the source tree."""
    out = set()
    for folder, package in ((ROOT / "pyro_vi", "pyro_vi"), (ROOT / "models", "pyro_vi.models")):
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            out.add(".".join([package, *parts]))
    return out


def test_the_walk_finds_every_module_file():
    assert _names_from_files() - set(MODULES) == set()
    assert {"pyro_vi.cli.main", "pyro_vi.cli.bench", "pyro_vi.models.gmm.model",
            "pyro_vi.models.vae.train"} <= set(MODULES)


def test_walk_finds_the_package():
    # Guards against a runner that passes because it found nothing.
    core = {"pyro_vi.errors", "pyro_vi.linalg", "pyro_vi.factors", "pyro_vi.factors.base",
            "pyro_vi.factors.dirichlet", "pyro_vi.factors.gamma", "pyro_vi.factors.wishart"}
    assert core <= set(MODULES)
    wishart = importlib.import_module("pyro_vi.factors.wishart")
    assert doctest.testmod(wishart, optionflags=OPTIONFLAGS, report=False).attempted > 0


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=OPTIONFLAGS, report=False)
    # testmod prints each failing example; pytest shows that output with the failure.
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


@pytest.mark.parametrize("name", MODULES)
def test_module_all_resolves(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", [])
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    assert [n for n in exported if not hasattr(module, n)] == []
