"""Shared fixtures. The live stack is real: an OpenBao dev server per test session and a
throwaway PostgreSQL 15 cluster, both on ephemeral loopback ports, both stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.devstack import DevServer, start_dev_server
from tests.pgcluster import postgres  # noqa: F401 - re-exported fixture


@pytest.fixture(scope="session")
def openbao() -> Iterator[DevServer]:
    """A real OpenBao dev server for the whole test session."""
    server = start_dev_server()
    try:
        yield server
    finally:
        server.stop()
