"""``pyro-vi bench NAME [options]``: run one of the repository's benchmark scripts.

The scripts are the package ``benchmarks`` of the source checkout (``python -m
benchmarks.cavi_vs_svi`` from its root), not installed with pyro-vi. The folder is found, in
this order, through ``--benchmarks-dir DIR``, the environment variable ``PYRO_VI_BENCHMARKS``,
the ``benchmarks/`` folder next to the installed (editable) package, and ``./benchmarks``. Every
option after ``NAME`` other than ``--benchmarks-dir`` goes to the script's ``main(argv)``
unchanged (``--quick``, ``--out DIR``, ``--threads N``, ...).

Examples
--------
>>> sorted(SCRIPTS)[:5]
['auto-cavi', 'distributed', 'gmm', 'gmm-starts', 'scaling']
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from pyro_vi.cli.main import plain

__all__ = ["ENV_VAR", "SCRIPTS", "find_benchmarks_dir", "load_script", "main"]

#: benchmark name -> script file in ``benchmarks/``
SCRIPTS: dict[str, str] = {
    "auto-cavi": "auto_cavi.py",
    "gmm": "cavi_vs_svi.py",
    "scaling": "scaling.py",
    "vae": "vae_throughput.py",
    "svi-overhead": "svi_overhead.py",
    "stochastic": "stochastic_vs_batch.py",
    "time-to-optimum": "time_to_optimum.py",
    "stopping": "stopping_rule.py",
    "gmm-starts": "gmm_starts.py",
    "distributed": "distributed.py",
}

#: environment variable naming the benchmarks folder
ENV_VAR = "PYRO_VI_BENCHMARKS"


def _candidates(explicit: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    out = []
    if explicit is not None:
        out.append(("--benchmarks-dir", Path(explicit)))
    if os.environ.get(ENV_VAR):
        out.append((ENV_VAR, Path(os.environ[ENV_VAR])))
    out.append(("source checkout", Path(__file__).resolve().parents[2] / "benchmarks"))
    out.append(("current directory", Path.cwd() / "benchmarks"))
    return out


def find_benchmarks_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The benchmarks folder: ``explicit``, else ``$PYRO_VI_BENCHMARKS``, else the checkout's, else ``./benchmarks``.

    An explicit folder (argument or environment variable) that does not exist is an error rather
    than a reason to look elsewhere.

    Raises
    ------
    FileNotFoundError
        Naming every place that was tried.
    """
    tried = []
    for how, path in _candidates(explicit):
        if path.is_dir():
            return path
        if how in ("--benchmarks-dir", ENV_VAR):
            raise FileNotFoundError(f"benchmarks folder {str(path)!r} (from {how}) does not exist")
        tried.append(f"{path} ({how})")
    raise FileNotFoundError(
        "cannot find the benchmarks/ folder; the scripts ship with the source checkout, not with "
        f"the installed package. Tried: {'; '.join(tried)}. Pass --benchmarks-dir DIR or set {ENV_VAR}.")


#: set on a benchmarks package that :func:`load_script` imported from an explicit folder
_LOADED_BY_BENCH = "__pyro_vi_bench_folder__"


def _import_folder(folder: Path) -> ModuleType:
    """Import ``folder`` as the package named after it, from that folder (not from ``sys.path``).

    A package of that name already imported from the same folder (``python -m benchmarks.x``, or
    a test run from the checkout root) is reused. One that this function loaded from another
    folder is dropped with its submodules; any other module of that name is an ImportError.
    """
    name = folder.name
    if not name.isidentifier():
        raise ImportError(f"benchmarks folder {str(folder)!r}: {name!r} is not a Python package name")
    current = sys.modules.get(name)
    if current is not None:
        if any(Path(p).resolve() == folder for p in getattr(current, "__path__", ())):
            return current
        if not hasattr(current, _LOADED_BY_BENCH):
            raise ImportError(f"cannot load benchmarks from {str(folder)!r}: a module named {name!r} is "
                              f"already imported from elsewhere ({current!r})")
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
    init = folder / "__init__.py"
    spec = (importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
            if init.is_file() else importlib.machinery.ModuleSpec(name, None, is_package=True))
    if spec is None:  # pragma: no cover - a .py file always has a spec
        raise ImportError(f"cannot load {init}")
    if spec.loader is None:  # a folder without __init__.py: a namespace-style package
        spec.submodule_search_locations = [str(folder)]
    package = importlib.util.module_from_spec(spec)
    setattr(package, _LOADED_BY_BENCH, str(folder))
    sys.modules[name] = package
    if spec.loader is not None:
        spec.loader.exec_module(package)
    return package


def load_script(path: str | os.PathLike[str]) -> ModuleType:
    """Import a benchmark script as ``<folder>.<script>``, a module of the package its folder is.

    ``load_script("benchmarks/scaling.py")`` is ``import benchmarks.scaling`` with the package
    taken from that folder, so the scripts' relative imports (``from ._common import ...``) work
    wherever the checkout is, without touching ``sys.path``.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a file.
    ImportError
        Its folder cannot be imported under its own name.
    AttributeError
        The script defines no ``main(argv)``.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"benchmark script {str(path)!r} does not exist")
    package = _import_folder(path.parent)
    module = importlib.import_module(f"{package.__name__}.{path.stem}")
    if not callable(getattr(module, "main", None)):
        raise AttributeError(f"benchmark script {path} defines no main(argv)")
    return module


def _usage() -> str:
    names = "\n".join(f"  {k:<16} benchmarks/{v:<24} python -m benchmarks.{Path(v).stem}"
                      for k, v in SCRIPTS.items())
    return (f"usage: pyro-vi bench NAME [--benchmarks-dir DIR] [--quick] [--out DIR] [script options]\n\n"
            f"benchmarks:\n{names}\n\n{plain(__doc__.split(chr(10) + chr(10))[1])}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``benchmarks.<script>.main`` with the remaining arguments; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SCRIPTS:
        print(f"pyro-vi bench: unknown benchmark {name!r}; choose from {', '.join(SCRIPTS)}", file=sys.stderr)
        return 2
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--benchmarks-dir", default=None)
    ns, rest = pre.parse_known_args(rest)
    try:
        script = find_benchmarks_dir(ns.benchmarks_dir) / SCRIPTS[name]
        module = load_script(script)
    except (FileNotFoundError, ImportError, AttributeError) as err:
        print(f"pyro-vi bench: {err}", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)
