"""Shared fixtures. The live stack is real: an OpenBao dev server per test session and a
throwaway PostgreSQL 15 cluster, both on ephemeral loopback ports, both stopped at the end."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.core import plan
from broker.dev.devstack import DevServer, start_dev_server
from broker.dev.raft import RaftCluster, start_raft_cluster
from tests.pgcluster import postgres  # noqa: F401 - re-exported fixture


@pytest.fixture(scope="session")
def openbao() -> Iterator[DevServer]:
    """A real OpenBao dev server for the whole test session."""
    server = start_dev_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (pytest's tmp_path can pass the 108-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="na-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_decision_plans() -> None:
    """Every test compiles the plans it decides with. The compiled-plan cache would otherwise
    carry plans over from earlier tests, so a later test would not run the compiler at all:
    mutation testing (``make mutate``) picks the tests to run against a mutant by the code
    each test ran, and would skip those tests for a mutant of the compiler."""
    plan._PLANS.clear()
    plan._LAST_PLAN[0] = None


@pytest.fixture(scope="session")
def raft_cluster() -> Iterator[RaftCluster]:
    """A real three-node OpenBao Raft cluster (not dev mode), started on first use."""
    cluster = start_raft_cluster(3)
    try:
        yield cluster
    finally:
        cluster.stop()
