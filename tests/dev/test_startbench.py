"""``broker bench startup``: registered with its options, its medians, its CPU reading, and one
real round against OpenBao (a sidecar process from spawn to ready, with its memory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.cli import build_parser
from broker.dev.devstack import DevServer
from broker.dev.restartbench import BENCH_MANIFEST
from broker.dev.stack import approle_files, grant_for
from broker.dev.startbench import Round, cmd_bench_startup, cpu_seconds, one_round, report
from broker.scopes.loader import load_manifest
from broker.vault.bootstrap import bootstrap
from tests.harness import root_client


def test_bench_startup_is_registered_with_its_options() -> None:
    """`broker bench startup` parses its options and runs this bench."""
    args = build_parser().parse_args(
        ["bench", "startup", "--rounds", "2", "--idle", "5", "--baseline", "/tmp/x"]
    )
    assert (args.rounds, args.idle, args.baseline, args.file_manifest) == (
        2,
        5.0,
        Path("/tmp/x"),
        False,
    )
    assert args.func is cmd_bench_startup


def test_report_gives_medians_and_cpu_only_when_measured() -> None:
    """Medians of the rounds (not means: one slow round does not move them)."""
    rounds = [Round(0.5, 0.4, 70.0, 45.0, None), Round(9.0, 0.6, 72.0, 47.0, None)]
    rounds.append(Round(0.7, 0.5, 71.0, 46.0, None))
    lines = report(rounds)
    assert "median 0.700 s (min 0.500, max 9.000)" in lines[0]
    assert "median 0.500 s" in lines[1]
    assert "RSS median 71.0 MB, PSS median 46.0 MB" in lines[2]
    assert len(lines) == 3
    assert "median 0.250 %" in report([Round(1, 1, 1, 1, 0.25)])[3]


def test_cpu_seconds_counts_every_thread_of_a_process() -> None:
    """This process's CPU time grows with work done, at a finer grain than 10 ms ticks."""
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    after = cpu_seconds(os.getpid())
    assert after > before
    assert (after * 1e9) % 1e7 != 0  # not a whole number of ticks


@pytest.mark.integration
def test_one_round_times_a_real_sidecar_to_ready(openbao: DevServer, tmp_path: Path) -> None:
    """A real ``broker sidecar`` process gets ready and is measured, then stopped."""
    client = root_client(openbao)
    bootstrap(client, [grant_for(load_manifest(BENCH_MANIFEST))], addr=openbao.addr, demo=True)
    role, secret = approle_files(client, "bench-agent", tmp_path / "secrets")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(
        VAULT_ADDR=openbao.addr, BROKER_ROLE_ID_FILE=str(role), BROKER_SECRET_ID_FILE=str(secret)
    )
    found = one_round(tmp_path, 0, env, 0.5, str(BENCH_MANIFEST))
    assert found.ready > 0
    assert found.imports > 0
    assert found.rss > found.pss > 0
    assert found.cpu is not None
    assert found.cpu >= 0
