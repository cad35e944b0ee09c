"""The session's throwaway PostgreSQL 15 cluster (see ``broker.dev.pgdev`` for how it runs).

The fixture's superuser password is the cluster's own; tests that rotate a root credential
through Vault must rotate a role they created, or every later test loses its superuser.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.dev.pgdev import PgCluster, start_cluster, stop_cluster

__all__ = ["PgCluster", "postgres"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgCluster]:
    """A running PostgreSQL 15 cluster on 127.0.0.1 for the whole test session."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
