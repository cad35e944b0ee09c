"""Find and revoke in Vault what an agent holds, and prove it gone.

Three sources, from the widest to the narrowest:

- the login registry (``broker.vault.registry``): every token any sidecar of the agent ever
  logged in with. Revoking one revokes, inside Vault, every child token and database lease
  created with it, whether or not its sidecar still runs, so a kill needs nothing else;
- the sidecar's heartbeat: the Vault credentials a *running* sidecar holds, with their
  action, for revocations narrower than "everything" (one action, one credential id);
- an acknowledgement: a running sidecar writes a heartbeat as soon as it has read a new
  version of a control document, so a command that waits for it knows the list it then reads
  includes every credential issued before its write.

Every revocation is followed by a lookup; only a refused lookup counts as revoked."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from broker.core.errors import BrokerError
from broker.vault.kv import kv_read
from broker.vault.layout import approle_role
from broker.vault.registry import SidecarLogin, forget, logins
from broker.vault.revoke import lease_info, revoke_lease, revoke_token, still_alive, token_info
from broker.vault.session import VaultClient

_BY_KIND: dict[str, tuple[Callable[..., Any], Callable[..., None]]] = {
    "vault_token": (token_info, revoke_token),
    "dynamic": (lease_info, revoke_lease),
}
LIVE_WINDOW = 5.0  # a heartbeat younger than this (2.5 heartbeats) belongs to a running sidecar


@dataclass
class Tally:
    """What was proven gone, and what could not be."""

    lines: list[str] = field(default_factory=list)
    revoked: int = 0
    failures: list[str] = field(default_factory=list)


class Sweeper:
    def __init__(
        self,
        client: VaultClient,
        addr: str,
        tally: Tally,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float = 10.0,
    ) -> None:
        self.client, self.addr, self.tally = client, addr, tally
        self.clock, self.sleep, self.deadline = clock, sleep, deadline

    # -- reading -----------------------------------------------------------------------------

    def heartbeat(self, agent: str) -> dict[str, Any]:
        beat = kv_read(self.client, f"heartbeat/{agent}", self.addr) or {}
        for key in ("vault_credentials", "actions", "control_seen"):
            if isinstance(beat.get(key), str):  # lists travel as one JSON string
                try:
                    beat[key] = json.loads(beat[key])
                except ValueError:
                    beat[key] = None
        return beat

    def live(self, beat: dict[str, Any]) -> bool:
        at = beat.get("at")
        return isinstance(at, int | float) and self.clock() - float(at) < LIVE_WINDOW

    def await_ack(self, agent: str, document: str, version: int, wait: float) -> dict[str, Any]:
        """The first heartbeat of ``agent`` written after it read ``version`` of ``document``
        (``global``, ``agent`` or ``revoked``); {} when none came within ``wait`` seconds."""
        return self.await_acks([agent], document, version, wait).get(agent, {})

    def await_acks(
        self, agents: Iterable[str], document: str, version: int, wait: float
    ) -> dict[str, dict[str, Any]]:
        """``await_ack`` for several sidecars at once; those that did not answer are absent."""
        end = self.clock() + wait
        pending, acked = set(agents), {}
        while pending:
            for agent in sorted(pending):
                beat = self.heartbeat(agent)
                seen = beat.get("control_seen") or {}
                if isinstance(seen, dict) and int(seen.get(document) or 0) >= version:
                    acked[agent] = beat
                    pending.discard(agent)
            if not pending or self.clock() >= end:
                break
            self.sleep(0.05)
        return acked

    # -- revoking ----------------------------------------------------------------------------

    def _until_gone(self, lookup: Callable[[], Any]) -> bool:
        end = self.clock() + self.deadline
        while lookup() is not None:
            if self.clock() >= end:
                return False
            self.sleep(0.05)
        return True

    def login(self, entry: SidecarLogin, why: str) -> None:
        """Revoke one recorded sidecar token (and with it all it minted); prove it gone."""
        acc = entry.accessor
        try:
            info = token_info(self.client, acc, self.addr)
            if info is None:
                forget(self.client, entry, self.addr)  # expired or revoked earlier: prune
                return
            role = (info.get("meta") or {}).get("role_name")
            if role != approle_role(entry.agent):
                self.tally.failures.append(
                    f"{entry.path} names a token that is not a login of {entry.agent} "
                    f"(role {role!r}): not revoked; check who wrote it"
                )
                return
            revoke_token(self.client, acc, self.addr)
            if not self._until_gone(lambda: token_info(self.client, acc, self.addr)):
                self.tally.failures.append(f"sidecar token {acc}: still valid after revocation")
                return
            forget(self.client, entry, self.addr)
        except BrokerError as exc:
            self.tally.failures.append(f"sidecar token {acc}: {exc.detail}")
            return
        self.tally.revoked += 1
        self.tally.lines.append(
            f"{entry.agent}: sidecar token {acc} ({why}) revoked, with every child token and "
            "lease it created; lookup refused (verified)"
        )

    def logins(self, agent: str, keep: Callable[[SidecarLogin], bool], why: str) -> int:
        """Revoke every recorded login of ``agent`` except those ``keep`` spares."""
        chosen = [e for e in logins(self.client, agent, self.addr) if not keep(e)]
        for entry in chosen:
            self.login(entry, why)
        return len(chosen)

    def credentials(self, agent: str, creds: Iterable[dict[str, Any]]) -> None:
        """Revoke listed child tokens and leases; prove each gone. All are looked up at once
        first (after a kill, Vault has already revoked them with their sidecar's token);
        those still alive are revoked eight at a time and looked up again."""
        listed = [(str(c.get("kind")), str(c.get("vault_id", "")), c) for c in creds]
        if not listed:
            return
        first = still_alive(self.addr, str(self.client.token), [(k, v) for k, v, _ in listed])
        jobs, gone = [], []
        for (kind, vault_id, cred), alive in zip(listed, first, strict=True):
            label = f"{kind} {cred.get('credential_id', '')} ({vault_id})"
            if alive is False:
                gone.append(f"{agent}: {label} gone from Vault (verified)")
                continue
            lookup, revoke = _BY_KIND.get(kind, (lease_info, revoke_lease))
            jobs.append(
                (
                    label,
                    partial(lookup, self.client, vault_id, self.addr),
                    partial(revoke, self.client, vault_id, self.addr),
                )
            )
        if len(gone) > 10:  # one line per credential is for a handful, not a thousand
            gone = [f"{agent}: {len(gone)} listed credentials gone from Vault (each verified)"]
        self.tally.lines.extend(gone)
        if not jobs:
            return
        with ThreadPoolExecutor(min(8, len(jobs))) as pool:
            outcomes = list(pool.map(lambda job: self._one(*job), jobs))
        for line, failure, revoked in outcomes:
            if failure:
                self.tally.failures.append(f"{agent}: {failure}")
            else:
                self.tally.lines.append(f"{agent}: {line}")
                self.tally.revoked += int(revoked)

    def _one(
        self, label: str, lookup: Callable[[], Any], revoke: Callable[[], None]
    ) -> tuple[str, str, bool]:
        """(line, "", revoked now) when proven gone, ("", failure, False) otherwise; runs in
        a worker thread."""
        try:
            if lookup() is None:
                return f"{label} already gone from Vault (verified)", "", False
            revoke()
            if not self._until_gone(lookup):
                return "", f"{label} still valid after revocation", False
        except BrokerError as exc:
            return "", f"{label}: {exc.detail}", False
        return f"{label} revoked; lookup refused (verified)", "", True
