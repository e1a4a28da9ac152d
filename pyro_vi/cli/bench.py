"""``pyro-vi bench NAME [options]``: run one of the repository's benchmark scripts.

The scripts live in ``benchmarks/`` of the source checkout and are not installed with the
package. They are found, in this order, through ``--benchmarks-dir DIR``, the environment
variable ``PYRO_VI_BENCHMARKS``, the ``benchmarks/`` folder next to the installed (editable)
package, and ``./benchmarks``. Every option after ``NAME`` other than ``--benchmarks-dir`` goes to
the script's ``main(argv)`` unchanged (``--quick``, ``--out DIR``, ``--threads N``, ...).

Examples
--------
>>> sorted(SCRIPTS)
['gmm', 'scaling', 'stochastic', 'svi-overhead', 'time-to-optimum', 'vae']
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["ENV_VAR", "SCRIPTS", "find_benchmarks_dir", "load_script", "main"]

#: benchmark name -> script file in ``benchmarks/``
SCRIPTS: dict[str, str] = {
    "gmm": "cavi_vs_svi.py",
    "scaling": "scaling.py",
    "vae": "vae_throughput.py",
    "svi-overhead": "svi_overhead.py",
    "stochastic": "stochastic_vs_batch.py",
    "time-to-optimum": "time_to_optimum.py",
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


def load_script(path: str | os.PathLike[str]) -> ModuleType:
    """Import a benchmark script as a module named after its file (its folder goes on ``sys.path``)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"benchmark script {str(path)!r} does not exist")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # scripts import _common.py and each other
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise AttributeError(f"benchmark script {path} defines no main(argv)")
    return module


def _usage() -> str:
    names = "\n".join(f"  {k:<13} benchmarks/{v}" for k, v in SCRIPTS.items())
    return (f"usage: pyro-vi bench NAME [--benchmarks-dir DIR] [--quick] [--out DIR] [script options]\n\n"
            f"benchmarks:\n{names}\n\n{__doc__.split(chr(10) + chr(10))[1]}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``benchmarks/<script>.py``'s ``main`` with the remaining arguments; return its exit code."""
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
    except (FileNotFoundError, AttributeError) as err:
        print(f"pyro-vi bench: {err}", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)
