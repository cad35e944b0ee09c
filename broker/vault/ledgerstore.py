"""The fleet ledger's authority: one KV v2 document per agent, changed only by check-and-set.

Every replica of an agent reads the document, applies a pure change (``broker.sidecar.fleetledger``)
and writes it back naming the version it read; a replica that lost the race reads again.
Raft storage makes the accepted write durable on a quorum before it is acknowledged."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.core.errors import BackendUnavailable
from broker.vault.kv import kv_read_versioned, kv_write_cas

if TYPE_CHECKING:
    import hvac

CAS_ATTEMPTS = 50


def ledger_path(agent: str) -> str:
    return f"ledger/{agent}"


class VaultLedgerStore:
    """Read-modify-CAS-write of ``ledger/<agent>``; counts the writes it made (for the bench)."""

    def __init__(self, client: Callable[[], hvac.Client], agent: str, addr: str = "") -> None:
        self._client = client
        self.path = ledger_path(agent)
        self._addr = addr
        self.writes = 0
        self.conflicts = 0

    def read(self) -> dict[str, Any] | None:
        return kv_read_versioned(self._client(), self.path, self._addr)[0]

    def update(self, change: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Apply ``change`` to the current document atomically; its result is what was written."""
        client = self._client()
        for _ in range(CAS_ATTEMPTS):
            doc, version = kv_read_versioned(client, self.path, self._addr)
            new = change(doc)
            if kv_write_cas(client, self.path, new, version, self._addr) is not None:
                self.writes += 1
                return new
            self.conflicts += 1
        raise BackendUnavailable(
            f"the usage ledger {self.path} kept changing under {CAS_ATTEMPTS} attempts",
            code="ledger_unavailable",
        )
