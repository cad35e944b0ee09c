"""The revoked delegated grants of one agent: ``delegations/<agent>``, changed by check-and-set.

Written by the agent's own sidecar when a grant (and so every grant below it) is revoked;
read by verifiers through ``broker.vault.control`` so that tokens minted from a revoked grant
are refused everywhere. Entries are kept until the grant would have expired anyway."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import hvac

from broker.core.controlstate import delegations_path, times
from broker.core.errors import BackendUnavailable
from broker.vault.kv import kv_read_versioned, kv_write_cas

CAS_ATTEMPTS = 20


class DelegationStore:
    def __init__(self, client: Callable[[], hvac.Client], agent: str, addr: str = "") -> None:
        self._client = client
        self.path = delegations_path(agent)
        self._addr = addr

    def revoke(self, grants: Mapping[str, float], now: float) -> int:
        """Add ``grants`` (id to expiry) to the revoked list, dropping expired entries;
        returns the document's new version."""
        client = self._client()
        for _ in range(CAS_ATTEMPTS):
            doc, version = kv_read_versioned(client, self.path, self._addr)
            kept = {k: v for k, v in times(doc or {}, self.path, "revoked").items() if v > now}
            new = {"revoked": {**kept, **grants}}
            written = kv_write_cas(client, self.path, new, version, self._addr)
            if written is not None:
                return written
        raise BackendUnavailable(f"{self.path} kept changing under {CAS_ATTEMPTS} attempts")
