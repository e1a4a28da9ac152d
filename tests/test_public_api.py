"""The flat public API: ``pyro_vi.__all__`` is what the package exports, and every name is documented.

"Documented" means the name appears in README.md or in a docstring example (a ``>>>`` line) of
some module of the package, so a reader meets each public name at least once in runnable form
or in the README's reference.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import re
import types
from pathlib import Path

from test_doctests import MODULES

import pyro_vi

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> str:
    """The source of every docstring example in every module, joined."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    out = []
    for name in MODULES:
        for test in finder.find(importlib.import_module(name)):
            out.extend(example.source for example in test.examples)
    return "\n".join(out)


def test_all_is_sorted_unique_and_resolves():
    names = pyro_vi.__all__
    assert names == sorted(names), "pyro_vi.__all__ must be kept sorted"
    assert len(set(names)) == len(names)
    assert [n for n in names if not hasattr(pyro_vi, n)] == []


def test_all_matches_what_the_package_exports():
    # every public, non-module name bound in pyro_vi is listed, and nothing else
    exported = {n for n, v in vars(pyro_vi).items()
                if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert exported == set(pyro_vi.__all__) - {"__version__"}


def test_every_public_name_is_in_the_readme_or_an_example():
    readme, examples = README.read_text(), _examples()
    missing = [n for n in pyro_vi.__all__
               if not re.search(rf"\b{re.escape(n)}\b", readme) and not re.search(rf"\b{re.escape(n)}\b", examples)]
    assert missing == [], "document these in README.md or in a docstring example"


def _has_own_docstring(obj: object) -> bool:
    doc = obj.__doc__  # not inspect.getdoc, which would inherit a parent's docstring
    if not doc or not doc.strip():
        return False
    # A dataclass without a docstring gets an automatic "Name(field: type, ...)" one.
    return not (dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("))


def test_every_public_callable_has_its_own_docstring():
    public = {n: getattr(pyro_vi, n) for n in pyro_vi.__all__}
    undocumented = sorted(n for n, obj in public.items()
                          if (inspect.isclass(obj) or callable(obj)) and not _has_own_docstring(obj))
    assert undocumented == []
