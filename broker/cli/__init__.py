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
from typing import Any

from broker.cli.exit import EXIT_CLOSED_PIPE, EXIT_INTERRUPTED, epilog, exit_code
from broker.core.errors import BrokerError

# Modules that contribute commands; each defines register(commands, bench).
COMMAND_MODULES = (
    "broker.cli.stack",
    "broker.cli.node",
    "broker.dev.bench",
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

# Which module registers each command and bench, with its one-line help: ``broker X`` imports
# X's module only and ``broker --help`` none of them (the full set pulls in aiohttp, hvac,
# pydantic and cryptography: half a second and 70 MB, for a sidecar as for a help page).
# tests/cli/test_cli_lazy.py checks both tables against what the modules register.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "broker.cli.stack",
        "start OpenBao (or use one), bootstrap it, run a sidecar per manifest",
    ),
    "bootstrap": ("broker.cli.stack", "create the mounts, policies and roles in an existing Vault"),
    "sidecar": ("broker.cli.stack", "serve one agent's credential requests"),
    "node-agent": (
        "broker.cli.node",
        "poll Vault's control version once for every sidecar on this node",
    ),
    "verify": ("broker.cli.stack", "verify an action token as a tool or gateway would"),
    "probe": ("broker.cli.stack", "exit 0 if a sidecar answers 200 (container health checks)"),
    "scopes": ("broker.cli.scopes", "validate, test and explain scope manifests"),
    "audit": ("broker.cli.audit", "verify and search the audit trail"),
    "revoke": ("broker.cli.control", "revoke one credential, an agent's, or everything"),
    "kill": (
        "broker.cli.control",
        "the kill switch: refuse everything, stop logins, revoke everything held",
    ),
    "revive": (
        "broker.cli.control",
        "undo the kill switch, with a fresh AppRole secret id for the sidecar",
    ),
    "rotate": (
        "broker.cli.control",
        "rotate the signing key, an agent's secret, or a backend root",
    ),
    "status": (
        "broker.cli.control",
        "agents, sidecar heartbeats, kill flags, outstanding credentials",
    ),
    "report": (
        "broker.cli.report",
        "throughput, integrity and trust per agent and action, from audit trails",
    ),
    "approvals": ("broker.cli.approvals", "list, show, approve or deny approvals"),
    "issuer": (
        "broker.cli.issuer",
        "serve OpenID/OAuth metadata, the JWKS and token status lists",
    ),
    "mcp": ("broker.cli.mcp", "MCP gateway: tools behind the sidecar's decisions and credentials"),
    "completion": ("broker.cli.completion", "print a shell completion script"),
}
BENCHES: dict[str, tuple[str, str]] = {
    "mint": ("broker.dev.bench", "mints per second and latency through a sidecar socket"),
    "restart": ("broker.dev.bench", "sidecar start-up time with a long audit history"),
    "control": (
        "broker.dev.bench",
        "kill-switch time-to-effect and revocation propagation, measured live",
    ),
    "startup": (
        "broker.dev.bench",
        "sidecar process start to ready, its imports, idle RSS, PSS and CPU",
    ),
    "decide": ("broker.cli.scopes", "decisions per second on one core"),
    "audit": ("broker.cli.audit", "durable appends per second, latency, fsyncs"),
    "mcp": ("broker.cli.mcp", "the gateway's added latency per tool call"),
    "fleet": (
        "broker.dev.fleetbench",
        "--replicas N: N replicas sharing one budget through the fleet ledger; --sidecars N: "
        "N idle sidecar processes on one OpenBao (its CPU per sidecar, RSS, time-to-effect)",
    ),
    "dpop": ("broker.dev.dpopbench", "the cost of DPoP per mint and per verify, with a baseline"),
}


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agent-credential-broker")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _Version(argparse.Action):
    """``--version``, with the package metadata read only when asked (20 ms otherwise)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"broker {package_version()}")
        parser.exit()


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The whole command line; with ``modules``, only theirs in full and the other commands
    named (with their help) but not imported."""
    parser = argparse.ArgumentParser(
        prog="broker",
        description=__doc__.splitlines()[0],
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="measure decisions and mints")
    bench = bench_parser.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    for name in modules:
        importlib.import_module(name).register(commands, bench)
    for group, table in ((commands, COMMANDS), (bench, BENCHES)):
        for command, (_, text) in table.items():
            if command not in group.choices:
                group.add_parser(command, help=text)
    return parser


def modules_for(argv: Sequence[str]) -> tuple[str, ...]:
    """The modules ``argv`` needs: its command's (or bench's), none for a help page or an
    unknown command (argparse then lists them all)."""
    words = [word for word in argv if not word.startswith("-")]
    if not words:
        return ()
    if words[0] == "bench":
        found = BENCHES.get(words[1]) if len(words) > 1 else None
    else:
        found = COMMANDS.get(words[0])
    return () if found is None else (found[0],)


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
    fast = argv[:1] == ["probe"]
    args = (probe_parser() if fast else build_parser(modules_for(argv))).parse_args(argv)
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
