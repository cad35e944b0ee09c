"""The ``broker`` command: an agent credential broker's sidecar, runbooks and tools.

Each command group lives in its own ``cli_*`` module and adds itself through
``register(commands, bench)``; this module only assembles and dispatches. Exit codes come
from one table (``broker.cli.exit``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from broker.cli.exit import EXIT_CLOSED_PIPE, EXIT_INTERRUPTED, epilog, exit_code
from broker.core.errors import BrokerError

# Modules that contribute commands; each defines register(commands, bench).
COMMAND_MODULES = (
    "broker.cli.stack",
    "broker.cli.node",
    "broker.cli.scopes",
    "broker.cli.audit",
    "broker.cli.control",
    "broker.cli.report",
    "broker.cli.approvals",
    "broker.cli.issuer",
    "broker.cli.mcp",
    "broker.dev.fleetbench",
    "broker.dev.dpopbench",
    "broker.cli.completion",
)


def package_version() -> str:
    try:
        return version("agent-credential-broker")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker",
        description=__doc__.splitlines()[0],
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"broker {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="measure decisions and mints")
    bench = bench_parser.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands, bench)
    return parser


def probe_parser() -> argparse.ArgumentParser:
    """``broker probe`` alone: a container health check every few seconds need not import
    hvac, aiohttp and pydantic (over a second of CPU) for one GET."""
    from broker.sidecar.probe import add_probe

    parser = argparse.ArgumentParser(prog="broker")
    add_probe(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        return _closed_pipe()


def _run(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    fast = argv[:1] == ["probe"] and not {"-h", "--help"} & set(argv)
    args = (probe_parser() if fast else build_parser()).parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokerError as exc:
        print(f"broker: error: {exc.code}: {exc.detail}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    sys.stdout.flush()  # a closed pipe surfaces here, inside the handler, not at exit
    return code


def _closed_pipe() -> int:
    """The reader went away (``broker ... | head -1``): stop quietly. Python would otherwise
    print a traceback when it flushes stdout at exit, so stdout is pointed at /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


if __name__ == "__main__":
    sys.exit(main())
