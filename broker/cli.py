"""The ``broker`` command: an agent credential broker's sidecar, runbooks and tools.

Each command group lives in its own ``cli_*`` module and adds itself through
``register(commands, bench)``; this module only assembles and dispatches."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from broker.errors import BrokerError

# Modules that contribute commands; each defines register(commands, bench).
COMMAND_MODULES = (
    "broker.cli_stack",
    "broker.cli_scopes",
    "broker.cli_audit",
    "broker.cli_control",
    "broker.cli_report",
    "broker.cli_approvals",
    "broker.cli_issuer",
    "broker.cli_mcp",
    "broker.fleetbench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="measure decisions and mints")
    bench = bench_parser.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands, bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokerError as exc:
        print(f"broker: error: {exc.code}: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
