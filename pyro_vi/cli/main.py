"""The ``pyro-vi`` command line: one sub-command per job, each a module with ``main(argv)``.

Sub-commands are imported lazily so that ``pyro-vi --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

#: sub-command -> (module with ``main(argv)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pyro_vi.cli.demo", "CAVI vs SVI on the bundled Old Faithful data (the main job)"),
    "vae": ("pyro_vi.cli.vae", "train and evaluate a VAE (digits or MNIST)"),
    "diagnose": ("pyro_vi.cli.diagnose", "fit a model and print a plain-text trust report"),
    "bench": ("pyro_vi.cli.bench", "run a benchmark: gmm|scaling|vae|svi-overhead|stochastic|time-to-optimum"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``pyro-vi <command> [args...]`` to the command's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pyro-vi", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="; ".join(f"{k}: {v[1]}" for k, v in sorted(COMMANDS.items())))
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        return 0 if argv else 2
    ns = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[ns.command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
