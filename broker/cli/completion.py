"""``broker completion SHELL``: a tab-completion script generated from the parser itself.

shtab writes it from the argparse tree, so completion can never drift from the commands and
costs nothing at run time (argcomplete would instead re-run ``broker`` on every Tab press)."""

from __future__ import annotations

import argparse
from typing import Any

SHELLS = ("bash", "zsh", "tcsh")


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    del bench
    p = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description='eval "$(broker completion bash)", or save it where your shell '
        "loads completions (zsh: a file named _broker on $fpath)",
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from broker.cli import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0
