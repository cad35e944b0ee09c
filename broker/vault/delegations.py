"""One agent's delegated grants: ``delegations/<agent>``, changed by check-and-set.

``grants`` (grant id to its description: sub-agent, chain, actions, carves, expiry), written
by the agent's own sidecar before a grant is handed out, is what ``broker status`` shows;
``revoked`` (grant id to expiry), written when a grant (and so every grant below it) is
revoked, is read by verifiers through ``broker.vault.control`` so that tokens minted from a
revoked grant are refused everywhere. Entries are kept until the grant expires."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from broker.core.controlstate import delegations_path, times
from broker.core.errors import BackendUnavailable
from broker.vault.kv import kv_read_versioned, kv_write_cas

if TYPE_CHECKING:
    import hvac

CAS_ATTEMPTS = 20
_Change = Callable[[dict[str, Any], dict[str, float]], tuple[dict[str, Any], dict[str, float]]]


class DelegationStore:
    def __init__(self, client: Callable[[], hvac.Client], agent: str, addr: str = "") -> None:
        self._client = client
        self.path = delegations_path(agent)
        self._addr = addr

    def record(self, grant_id: str, entry: Mapping[str, Any], now: float) -> int:
        """Add a grant's description; returns the document's new version."""
        return self._update(
            lambda grants, revoked: ({**grants, grant_id: dict(entry)}, revoked), now
        )

    def revoke(self, grants: Mapping[str, float], now: float) -> int:
        """Add ``grants`` (id to expiry) to the revoked list; returns the new version."""
        return self._update(lambda live, revoked: (live, {**revoked, **grants}), now)

    def read(self) -> dict[str, Any]:
        return kv_read_versioned(self._client(), self.path, self._addr)[0] or {}

    def _update(self, change: _Change, now: float) -> int:
        """Apply ``change`` to the live grants and the revoked list, expired entries dropped."""
        client = self._client()
        for _ in range(CAS_ATTEMPTS):
            doc, version = kv_read_versioned(client, self.path, self._addr)
            revoked = {k: v for k, v in times(doc or {}, self.path, "revoked").items() if v > now}
            grants = {k: v for k, v in live_grants(doc, now).items() if isinstance(v, dict)}
            grants, revoked = change(grants, revoked)
            new = {"grants": grants, "revoked": revoked}
            written = kv_write_cas(client, self.path, new, version, self._addr)
            if written is not None:
                return written
        raise BackendUnavailable(f"{self.path} kept changing under {CAS_ATTEMPTS} attempts")


def live_grants(doc: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The document's grants that have not expired (malformed entries are dropped)."""
    grants = (doc or {}).get("grants")
    if not isinstance(grants, dict):
        return {}
    return {
        k: v
        for k, v in grants.items()
        if isinstance(v, dict)
        and isinstance(v.get("expires_at"), int | float)
        and v["expires_at"] > now
    }


def grants_of(client: hvac.Client, agent: str, now: float, addr: str = "") -> list[dict[str, Any]]:
    """For ``broker status``: the agent's live grants, parents before children, each marked
    revoked or not."""
    path = delegations_path(agent)
    doc = kv_read_versioned(client, path, addr)[0]
    revoked = times(doc or {}, path, "revoked")
    grants = live_grants(doc, now).values()
    return [
        {**g, "revoked": g.get("grant_id") in revoked}
        for g in sorted(grants, key=lambda g: (int(g.get("depth") or 0), g["expires_at"]))
    ]
