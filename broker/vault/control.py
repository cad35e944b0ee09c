"""Read the shared control state from Vault, for verifiers (cached briefly)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.core.claims import ActionClaims
from broker.core.controlstate import (
    GLOBAL_PATH,
    REVOKED_PATH,
    VERSION_PATH,
    ControlState,
    agent_path,
    delegations_path,
)
from broker.settings import VaultSettings
from broker.vault.kv import kv_read, kv_write
from broker.vault.session import make_client

if TYPE_CHECKING:
    import hvac

CACHE_SECONDS = 0.5  # revocation reaches a gateway within a second, reads included


def control_written(
    client: hvac.Client, addr: str = "", clock: Callable[[], float] = time.time
) -> None:
    """After a control document was written: bump ``control/version``. Sidecars read only
    that small document on most polls and read the rest when its KV version moves. Every
    KV v2 write makes a new version atomically, so no check-and-set is needed: two writers
    bumping at once make two versions, and each sidecar sees at least the later one."""
    kv_write(client, VERSION_PATH, {"at": clock()}, addr)


class VaultRevocations:
    """A ``RevocationView`` for ``broker.verify``: control state at most a second old."""

    def __init__(self, vault: VaultSettings, clock: Callable[[], float] = time.monotonic) -> None:
        token = vault.token.get_secret_value() if vault.token else None
        self._client = make_client(vault.addr, token, timeout=2.0, tls=vault.tls)
        self._addr = vault.addr
        self._clock = clock
        self._cache: dict[str, tuple[float, ControlState]] = {}

    def state(self, agent: str) -> ControlState:
        agent = agent.lower()  # one control document per agent, whatever the spelling
        hit = self._cache.get(agent)
        now = self._clock()
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        state = ControlState.from_docs(
            agent,
            kv_read(self._client, GLOBAL_PATH, self._addr),
            kv_read(self._client, agent_path(agent), self._addr),
            kv_read(self._client, REVOKED_PATH, self._addr),
            kv_read(self._client, delegations_path(agent), self._addr),
        )
        self._cache[agent] = (now, state)
        return state

    def token_revoked(self, claims: ActionClaims) -> str | None:
        return self.state(claims.agent).token_revoked(claims)
