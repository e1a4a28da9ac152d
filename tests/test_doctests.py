"""Run every docstring example of the installed package, and check the public API's names and docs.

Modules are found with ``pkgutil.walk_packages`` over ``pyro_vi.__path__`` and over
``pyro_vi.models.__path__`` (``models/`` is installed as ``pyro_vi.models`` through a
package-dir mapping, so it is not below ``pyro_vi.__path__``). pyro-vi has no optional
dependency, so a module that fails to import fails its test; none is skipped.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import pkgutil

import pytest

import pyro_vi
import pyro_vi.models

OPTIONFLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


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


def _has_own_docstring(obj: object) -> bool:
    doc = obj.__doc__  # not inspect.getdoc, which would inherit a parent's docstring
    if not doc or not doc.strip():
        return False
    # A dataclass without a docstring gets an automatic "Name(field: type, ...)" one.
    return not (dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("))


def test_public_api_resolves_is_sorted_and_documented():
    names = pyro_vi.__all__
    assert names == sorted(names), "pyro_vi.__all__ must be kept sorted"
    assert len(set(names)) == len(names)
    assert [n for n in names if not hasattr(pyro_vi, n)] == []
    public = {n: getattr(pyro_vi, n) for n in names}
    documented = {n for n, obj in public.items() if callable(obj) and _has_own_docstring(obj)}
    undocumented = sorted(n for n, obj in public.items()
                          if (inspect.isclass(obj) or callable(obj)) and n not in documented)
    assert undocumented == []
