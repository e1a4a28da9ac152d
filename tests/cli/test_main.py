"""The ``pyro-vi`` dispatcher: ``--version``, and help text of every sub-command in plain text
(no reStructuredText markup) with the defaults shown."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import version

import pytest

from pyro_vi.cli.main import COMMANDS, main, plain

RST = re.compile(r"``|:(func|class|mod|math|meth|attr|data):`")


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pyro-vi {version('pyro-vi')}"


def test_top_level_help_is_plain(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--version" in out
    assert not RST.search(out)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_is_plain_and_shows_defaults(command, capsys):
    try:
        code = main([command, "--help"])
    except SystemExit as exc:  # argparse's --help
        code = exc.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert not RST.search(out), RST.search(out)
    if command == "bench":  # options are the scripts' own; its help lists the scripts
        assert "stopping" in out
        return
    parser = next((v for k, v in vars(importlib.import_module(COMMANDS[command][0])).items()
                   if k in ("_parser", "build_parser")), None)
    # every option with a non-trivial default shows it in the help
    text = " ".join(out.split())
    if parser is not None:
        for action in parser()._actions:
            if action.option_strings and action.nargs != 0 and action.default not in (None, [],
                                                                                       "==SUPPRESS=="):
                assert f"default: {action.default}" in text or "(default" in (action.help or ""), \
                    action.option_strings
    else:
        assert "default: 0" in text  # demo's --seed


def test_plain_strips_roles_and_backticks():
    assert plain("``a`` :func:`b.c` :class:`~d.e.F` :math:`\\hat k`") == "a b.c F \\hat k"
