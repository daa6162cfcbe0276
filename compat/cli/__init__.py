"""Command line: ``python -m compat <command>``.

Each command lives in its own module under :mod:`compat.cli`, listed in ``_COMMANDS``,
and provides ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``.
Command modules must not import torch at module level: ``doctor`` has to set up the
environment before torch is imported, and ``--help`` must stay fast.

Exit codes everywhere: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from compat._version import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# command name -> module (order = order in --help)
_COMMANDS: dict[str, str] = {
    "demo": "compat.cli.demo",
    "doctor": "compat.cli.doctor",
    "merge": "compat.cli.merge",
    "scan": "compat.cli.scan",
    "upgrade": "compat.cli.upgrade",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(_COMMANDS[name])


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``python -m compat`` parser and each command's own parser."""
    parser = argparse.ArgumentParser(
        prog="python -m compat",
        description="linear-quant-compat: run, check and migrate code and checkpoints that use "
        "torch_npu's deprecated LinearA8W8Quant.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for name in _COMMANDS:
        module = _load(name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(cmd)
        cmd.set_defaults(_run=module.run)
        commands[name] = cmd
    return parser, commands


def _parse(
    parser: argparse.ArgumentParser,
    commands: dict[str, argparse.ArgumentParser],
    argv: Sequence[str] | None,
) -> argparse.Namespace:
    """Options may come between a command's positionals (``upgrade SRC --to torch DST``):
    what the first pass leaves over is parsed again by the command's parser, intermixed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in commands:
        command = commands[args.command]
        rest = argv[argv.index(args.command) + 1 :]
        try:
            again = command.parse_intermixed_args(rest)
        except TypeError:  # a parser intermixed parsing does not support
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        again.command = args.command
        return again
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    try:
        args = _parse(parser, commands, argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    result: int = args._run(args)
    return result
