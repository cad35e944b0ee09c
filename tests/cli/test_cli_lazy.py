"""The command line imports what the command needs: ``broker --help`` and ``broker probe``
nothing heavy, ``broker sidecar`` no report, MCP or bench module, and the tables that let it
choose say exactly what the modules register."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from typing import Any

import pytest

from broker.cli import BENCHES, COMMAND_MODULES, COMMANDS, modules_for

HEAVY = (
    "aiohttp",
    "hvac",
    "requests",
    "cryptography",
    "pydantic",
    "yaml",
    "jwt",
    "prometheus_client",
)
# Modules an idle sidecar has no use for: reports, the MCP gateway, benches, the issuer.
NOT_IN_A_SIDECAR = ("broker.audit.report", "broker.mcpgw", "broker.dev", "broker.issuer", "jwt")

CHECK = """
import sys
from broker.cli import main
try:
    code = main({argv!r})
except SystemExit as stop:
    code = stop.code
print(code)
print(" ".join(sorted(sys.modules)))
"""


def imported_by(argv: list[str]) -> tuple[str, set[str]]:
    """Run ``broker ARGV`` in a fresh interpreter: its exit code and every module it imported."""
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, check=True
    )
    code, modules = out.stdout.strip().splitlines()[-2:]
    return code, set(modules.split())


def _registered(module: str) -> tuple[dict[str, str | None], dict[str, str | None]]:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    bench = commands.add_parser("bench").add_subparsers()
    importlib.import_module(module).register(commands, bench)

    def helps(group: argparse._SubParsersAction[Any]) -> dict[str, str | None]:
        return {a.dest: a.help for a in group._choices_actions if a.dest != "bench"}

    return helps(commands), helps(bench)


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_the_tables_name_each_module_for_what_it_registers(module: str) -> None:
    """Every command and bench a module registers is in the table, under that module, with its help."""
    commands, benches = _registered(module)
    assert commands == {c: h for c, (m, h) in COMMANDS.items() if m == module}
    assert benches == {b: h for b, (m, h) in BENCHES.items() if m == module}


def test_every_module_in_the_tables_contributes_commands() -> None:
    """The tables name exactly the modules the full command line loads."""
    assert {m for m, _ in (*COMMANDS.values(), *BENCHES.values())} == set(COMMAND_MODULES)


@pytest.mark.parametrize(
    ("argv", "modules"),
    [
        (["--help"], ()),
        (["--version"], ()),
        ([], ()),
        (["no-such-command"], ()),
        (["bench"], ()),
        (["bench", "--help"], ()),
        (["bench", "no-such-bench"], ()),
        (["sidecar", "--manifest", "m.yaml"], ("broker.cli.stack",)),
        (["bench", "fleet", "--sidecars", "3"], ("broker.dev.fleetbench",)),
        (["bench", "startup"], ("broker.dev.bench",)),
        (["report", "--help"], ("broker.cli.report",)),
    ],
)
def test_a_command_line_names_only_its_own_module(argv: list[str], modules: tuple[str]) -> None:
    """The module to import comes from the command word; help pages and typos need none."""
    assert modules_for(argv) == modules


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], "0"),
        (["--version"], "0"),
        (["bench", "--help"], "0"),
        (["no-such-command"], "2"),
        (["probe", "--listen", "127.0.0.1:9"], "1"),
        (["probe", "--help"], "0"),
    ],
)
def test_help_version_and_probe_import_nothing_heavy(argv: list[str], code: str) -> None:
    """The health check every 10 s and the help page load neither aiohttp, hvac, requests,
    cryptography, pydantic, yaml, pyjwt nor prometheus_client."""
    got, modules = imported_by(argv)
    assert got == code
    assert sorted(m for m in HEAVY if m in modules) == []


def test_the_sidecar_command_does_not_load_the_other_commands() -> None:
    """``broker sidecar`` (parsing its arguments) loads neither reports, MCP, benches nor pyjwt."""
    _, modules = imported_by(["sidecar", "--help"])
    assert "broker.cli.stack" in modules
    assert [m for m in modules if m.startswith(NOT_IN_A_SIDECAR)] == []
    assert not {"broker.cli.report", "broker.cli.mcp", "broker.cli.audit"} & modules


def test_help_lists_every_command_without_loading_it(capsys: pytest.CaptureFixture[str]) -> None:
    """``broker --help`` still names every command and ``broker bench --help`` every bench."""
    from broker.cli import main

    for argv, table in ((["--help"], COMMANDS), (["bench", "--help"], BENCHES)):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert all(f"    {name}" in text for name in table)
