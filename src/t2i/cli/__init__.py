"""The `t2i` command line: `t2i data|train|generate|eval ...`.

Each command group lives in its own module with an `add_parser(subparsers)` function that registers
its sub-commands and sets `func` on the parsed namespace. Heavy imports (torch, models) happen inside
the command functions so `t2i --help` and `t2i generate` start fast.
"""

from __future__ import annotations

import argparse
import sys

from t2i.errors import T2IError

GROUPS = ("data", "train", "invert", "generate", "eval", "convert", "serve")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, unless there is none to show (None) or the help
    already says what it is ("(default: the model's)"), which would otherwise read twice."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; `only` registers just that group (faster start for one command)."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="t2i",
        description="Prepare data for, train, evaluate and sample text-to-image models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in GROUPS if only is None else (only,):
        try:
            module = importlib.import_module(f"t2i.cli.{name}")
        except ModuleNotFoundError as e:  # a group still being written
            if e.name != f"t2i.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `t2i` console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in GROUPS else None)
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except T2IError as e:
        print(f"t2i: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path no command checked up front (an output inside a file, a full disk, ...)
        from t2i.io import os_error_message

        print(f"t2i: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("t2i: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
