"""The ``pyro-vi`` command line: one sub-command per job, each a module with ``main(argv)``.

Sub-commands are imported lazily so that ``pyro-vi --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "HelpFormatter", "count", "main", "plain", "version"]

#: sub-command -> (module with ``main(argv)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pyro_vi.cli.demo", "CAVI vs SVI on the bundled Old Faithful data (the main job)"),
    "vae": ("pyro_vi.cli.vae", "train and evaluate a VAE (digits or MNIST)"),
    "diagnose": ("pyro_vi.cli.diagnose", "fit a model and print a plain-text trust report"),
    "fit": ("pyro_vi.cli.fit", "the bundled GMM fitted by distributed CAVI on --nproc processes"),
    "bench": ("pyro_vi.cli.bench",
              "run a benchmark: gmm|scaling|vae|svi-overhead|stochastic|time-to-optimum|stopping|"
              "distributed"),
}

_ROLE = re.compile(r":[a-z]+:`(~?)([^`]*)`")


def plain(text: str) -> str:
    """``text`` without reStructuredText markup, for ``--help``.

    A role keeps its target (only the last dotted part after ``~``); double backticks go.

    Examples
    --------
    >>> plain("``pyro-vi diagnose``: :func:`~pyro_vi.diagnose`, :math:`k` and :mod:`pyro_vi.svi`")
    'pyro-vi diagnose: diagnose, k and pyro_vi.svi'
    """
    return _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2),
                     text).replace("``", "")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults-showing formatter, also for options without help; flags show none."""

    def _format_action(self, action: argparse.Action) -> str:
        if (not action.help and action.option_strings and action.default is not None
                and action.default is not argparse.SUPPRESS and action.nargs != 0):
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if "(default" in help_text or help_text.startswith("default:") or action.nargs == 0:
            return help_text  # the help states its default already, or it is a flag
        return super()._get_help_string(action)


def count(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum`` (a bad value exits with status 2).

    Examples
    --------
    >>> count(1)("3")
    3
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def version() -> str:
    """The installed distribution's version (read from its metadata, without importing torch)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("pyro-vi")
    except PackageNotFoundError:  # a source tree that was never installed
        from pyro_vi import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``pyro-vi <command> [args...]`` to the command's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pyro-vi", description=plain(__doc__.splitlines()[0]),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"pyro-vi {version()}")
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="; ".join(f"{k}: {v[1]}" for k, v in sorted(COMMANDS.items())))
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"pyro-vi {version()}")
        return 0
    ns = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[ns.command][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except (ValueError, TypeError, OSError) as err:
        # the library names the bad value; a CLI user gets that message, not a traceback
        print(f"pyro-vi {ns.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
