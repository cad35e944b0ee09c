"""The sidecar login registry: every Vault token a sidecar ever logged in with, kept in Vault.

A sidecar creates ``broker-kv/sidecars/<agent>/<id prefix>-<token accessor>`` when it logs
in, before the new token mints anything. Its policy grants ``create`` and nothing else on
that path, and the write is a check-and-set against "absent": an entry can be added but never
rewritten or deleted by a sidecar, nor by whoever stole the agent's AppRole login.

Every child token and database lease a sidecar mints is created with its login token, and
Vault revokes them with it. So revoking every token in this registry reaches everything the
agent ever minted that is still valid, whether the sidecar that minted it is running,
restarted or gone. The id prefix ties a credential id (``broker.core.credids``) to its sidecar:
``id-prefixes/<prefix>/<agent>`` (create-only as well, and only under the sidecar's own agent
name) finds it without reading every agent's entries."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.core.credids import PREFIX_LENGTH
from broker.core.errors import ConfigError
from broker.vault import calls
from broker.vault.calls import Steps, drive
from broker.vault.kv import kv_delete, kv_list

if TYPE_CHECKING:
    import hvac

# What ``VaultSession.on_login`` runs with a new login's ``auth`` (its token in it).
LoginRecorder = Callable[[dict[str, Any]], Steps[None]]

REGISTRY = "sidecars"
PREFIXES = "id-prefixes"  # id-prefixes/<prefix>/<agent>: which agents a process served
_INDEXED: set[tuple[str, str, str]] = set()  # (Vault address, prefix, agent) written already


@dataclass(frozen=True)
class SidecarLogin:
    agent: str
    id_prefix: str
    accessor: str

    @property
    def path(self) -> str:
        return f"{REGISTRY}/{self.agent}/{self.id_prefix}-{self.accessor}"


def record_login(
    client: hvac.Client, login: SidecarLogin, doc: dict[str, Any], addr: str = ""
) -> None:
    """Create the entry with ``client`` (logged in as the new token). Raises when it cannot."""
    drive(client, _create(login, doc, None))


def _create(login: SidecarLogin, doc: dict[str, Any], token: str | None) -> Steps[None]:
    if (yield from calls.kv_write_cas(login.path, doc, 0, token)) is None:
        raise ConfigError(f"{login.path} is already recorded: token accessors are unique")


def login_recorder(
    agent: str, id_prefix: str, addr: str, clock: Callable[[], float]
) -> LoginRecorder:
    """For ``VaultSession.on_login``: record each new login of ``agent``'s sidecar, as
    that login (its token, before the session uses it)."""

    def record(auth: dict[str, Any]) -> Steps[None]:
        now, ttl = clock(), int(auth.get("lease_duration") or 0)
        token = str(auth["client_token"])
        doc = {"at": now, "expires_at": now + ttl, "pid": os.getpid()}
        if (addr, id_prefix, agent) not in _INDEXED:  # create-only: once per process and Vault
            yield from calls.kv_write_cas(f"{PREFIXES}/{id_prefix}/{agent}", {"at": now}, 0, token)
            _INDEXED.add((addr, id_prefix, agent))
        yield from _create(SidecarLogin(agent, id_prefix, str(auth["accessor"])), doc, token)

    return record


def logins(client: hvac.Client, agent: str, addr: str = "") -> list[SidecarLogin]:
    found = []
    for key in kv_list(client, f"{REGISTRY}/{agent}/", addr):
        prefix, dash, accessor = (
            key[:PREFIX_LENGTH],
            key[PREFIX_LENGTH : PREFIX_LENGTH + 1],
            key[PREFIX_LENGTH + 1 :],
        )
        if dash == "-" and accessor:
            found.append(SidecarLogin(agent, prefix, accessor))
    return found


def agents_of_prefix(client: hvac.Client, id_prefix: str, addr: str = "") -> list[str]:
    """The agents whose sidecars ran in the process that issued ids starting ``id_prefix``."""
    return [k for k in kv_list(client, f"{PREFIXES}/{id_prefix}/", addr) if not k.endswith("/")]


def registered_agents(client: hvac.Client, addr: str = "") -> list[str]:
    return [k.rstrip("/") for k in kv_list(client, f"{REGISTRY}/", addr) if k.endswith("/")]


def forget(client: hvac.Client, login: SidecarLogin, addr: str = "") -> None:
    """Drop the entry of a token that Vault confirmed is gone (operators only)."""
    kv_delete(client, login.path, addr)
