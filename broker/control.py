"""Runbook commands for security: revoke, kill, revive, rotate, status.

Every command acts with the operator's own Vault token, so Vault's policies decide who may
run it (``broker-security-operator`` may; ``broker-platform-editor`` may not), and every
command is recorded, with the operator's identity from Vault, in the operator audit trail
and in the control documents it writes. Commands change shared state in Vault; sidecars
see it on their next poll (a quarter of a second by default)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hvac

from broker.controlstate import GLOBAL_PATH, REVOKED_PATH, agent_path
from broker.errors import BrokerError, ConfigError
from broker.vault._errors import translate_errors
from broker.vault.kv import kv_list, kv_read, kv_write
from broker.vault.tokens import revoke_accessor

REVOKED_JTI_KEEP = 3600  # a revoked id is kept for the longest credential TTL, then dropped


@dataclass(frozen=True)
class Operator:
    identity: str
    policies: tuple[str, ...]


def whoami(client: hvac.Client, addr: str = "") -> Operator:
    """Who the operator token belongs to: its ``operator`` metadata, else its display name."""
    with translate_errors("token lookup", addr):
        data = client.auth.token.lookup_self()["data"]
    meta = data.get("meta") or {}
    identity = meta.get("operator") or data.get("display_name") or data.get("accessor", "unknown")
    return Operator(identity=str(identity), policies=tuple(data.get("policies") or ()))


@dataclass
class ActionReport:
    """What a command did, for the terminal and the operator audit trail."""

    command: str
    operator: str
    started: float
    lines: list[str] = field(default_factory=list)
    revoked: int = 0
    failures: list[str] = field(default_factory=list)
    took: float = 0.0
    confirmed: bool | None = None

    def say(self, line: str) -> None:
        self.lines.append(line)

    def to_audit(self) -> dict[str, Any]:
        return {
            "type": "control",
            "event": self.command.split()[0],
            "command": self.command,
            "operator": self.operator,
            "at": round(self.started, 6),
            "revoked": self.revoked,
            "failures": self.failures,
            "took_seconds": round(self.took, 3),
            "confirmed": self.confirmed,
        }


class Control:
    def __init__(
        self, client: hvac.Client, addr: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.addr = addr
        self.clock = clock
        self.operator = whoami(client, addr)

    # -- reading -----------------------------------------------------------------------------

    def agents(self) -> list[str]:
        names = set(kv_list(self.client, "heartbeat/", self.addr))
        names |= {
            k for k in kv_list(self.client, "control/agents/", self.addr) if not k.endswith("/")
        }
        return sorted(names)

    def heartbeat(self, agent: str) -> dict[str, Any]:
        beat = kv_read(self.client, f"heartbeat/{agent}", self.addr) or {}
        listed = beat.get("vault_credentials")
        if isinstance(listed, str):  # lists travel as one JSON string (see broker.runtime)
            try:
                beat["vault_credentials"] = json.loads(listed)
            except ValueError:
                beat["vault_credentials"] = []
        return beat

    def outstanding(self, agent: str) -> list[dict[str, Any]]:
        now = self.clock()
        creds = self.heartbeat(agent).get("vault_credentials") or []
        return [c for c in creds if float(c.get("expires_at", 0)) > now]

    # -- writing -----------------------------------------------------------------------------

    def _patch(self, path: str, changes: dict[str, Any]) -> None:
        doc = kv_read(self.client, path, self.addr) or {}
        doc.update(changes)
        kv_write(self.client, path, doc, self.addr)

    def _revoke_vault(self, cred: dict[str, Any], report: ActionReport) -> None:
        kind, vault_id = cred.get("kind"), str(cred.get("vault_id", ""))
        try:
            if kind == "vault_token":
                revoke_accessor(self.client, vault_id, self.addr)
            else:
                with translate_errors("lease revocation", self.addr):
                    self.client.sys.revoke_lease(vault_id)
            report.revoked += 1
        except BrokerError as exc:
            # An already expired or revoked credential is not a failure of the runbook.
            if "invalid accessor" not in exc.detail and "not found" not in exc.detail.lower():
                report.failures.append(f"{kind} {vault_id}: {exc.detail}")

    def _revoke_sidecar_token(self, agent: str, report: ActionReport) -> None:
        """Revoking the sidecar's own token revokes, in Vault, every child token and lease it made."""
        accessor = self.heartbeat(agent).get("accessor")
        if not accessor:
            report.say(f"{agent}: no sidecar heartbeat; no sidecar token to revoke")
            return
        try:
            revoke_accessor(self.client, str(accessor), self.addr)
            report.say(
                f"{agent}: sidecar token revoked in Vault (with every child token and lease)"
            )
        except BrokerError as exc:
            report.failures.append(f"{agent} sidecar token: {exc.detail}")

    def _report(self, command: str) -> ActionReport:
        return ActionReport(command=command, operator=self.operator.identity, started=self.clock())

    # -- commands ----------------------------------------------------------------------------

    def revoke_id(self, credential_id: str, reason: str) -> ActionReport:
        """One credential: a JWT id, a Vault token accessor, or a lease id."""
        report = self._report(f"revoke --jti {credential_id}")
        doc = kv_read(self.client, REVOKED_PATH, self.addr) or {}
        now = self.clock()
        jtis = {k: v for k, v in (doc.get("jtis") or {}).items() if float(v) > now}
        jtis[credential_id] = now + REVOKED_JTI_KEEP
        kv_write(self.client, REVOKED_PATH, {"jtis": jtis}, self.addr)
        report.say(f"{credential_id}: refused from now on by every sidecar and verifier")
        for agent in self.agents():
            for cred in self.outstanding(agent):
                if credential_id in (cred.get("credential_id"), cred.get("vault_id")):
                    self._revoke_vault(cred, report)
                    report.say(f"{credential_id}: {cred['kind']} revoked in Vault ({agent})")
        report.took = self.clock() - report.started
        return report

    def revoke_agent(self, agent: str, action: str | None, reason: str) -> ActionReport:
        scope = f" --action {action}" if action else ""
        report = self._report(f"revoke --agent {agent}{scope}")
        now = self.clock()
        if action:
            doc = kv_read(self.client, agent_path(agent), self.addr) or {}
            per_action = dict(doc.get("revoked_before_action") or {})
            per_action[action] = now
            self._patch(agent_path(agent), {"revoked_before_action": per_action})
        else:
            self._patch(agent_path(agent), {"revoked_before": now, "revoke_reason": reason})
        for cred in self.outstanding(agent):
            if action is None or cred.get("action") == action:
                self._revoke_vault(cred, report)
        report.say(
            f"{agent}{scope}: tokens issued before now refused; {report.revoked} Vault credentials revoked"
        )
        report.took = self.clock() - report.started
        return report

    def revoke_all(self, reason: str) -> ActionReport:
        report = self._report("revoke --all")
        self._patch(GLOBAL_PATH, {"revoked_before": self.clock(), "revoke_reason": reason})
        for agent in self.agents():
            for cred in self.outstanding(agent):
                self._revoke_vault(cred, report)
        report.say(
            f"every agent: tokens issued before now refused; {report.revoked} Vault credentials revoked"
        )
        report.took = self.clock() - report.started
        return report

    def kill(
        self,
        agent: str | None,
        reason: str,
        wait: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> ActionReport:
        """The kill switch: refuse everything, revoke everything held, confirm the sidecar saw it."""
        report = self._report(f"kill --agent {agent}" if agent else "kill --all")
        now = self.clock()
        flag = {
            "killed": True,
            "reason": reason,
            "by": self.operator.identity,
            "at": now,
            "revoked_before": now,
        }
        if agent:
            self._patch(agent_path(agent), flag)
            targets = [agent]
        else:
            self._patch(
                GLOBAL_PATH,
                {
                    "killed_all": True,
                    "reason": reason,
                    "by": self.operator.identity,
                    "at": now,
                    "revoked_before": now,
                },
            )
            targets = self.agents()
        for name in targets:
            outstanding = self.outstanding(name)
            self._revoke_sidecar_token(name, report)
            for cred in outstanding:
                self._revoke_vault(cred, report)
        report.confirmed = self._await_sidecars(targets, now, wait, sleep, report)
        report.took = self.clock() - report.started
        return report

    def _await_sidecars(
        self,
        agents: list[str],
        since: float,
        wait: float,
        sleep: Callable[[float], None],
        report: ActionReport,
    ) -> bool | None:
        live = [a for a in agents if self.heartbeat(a)]
        if not live:
            return None
        deadline = self.clock() + wait
        pending = set(live)
        while pending and self.clock() < deadline:
            for name in list(pending):
                seen = self.heartbeat(name).get("killed_seen_at")
                if seen is not None and float(seen) >= since - 1:
                    pending.discard(name)
                    report.say(
                        f"{name}: sidecar refusing everything (confirmed after {self.clock() - since:.2f}s)"
                    )
            if pending:
                sleep(0.05)
        for name in sorted(pending):
            report.failures.append(f"{name}: sidecar did not confirm within {wait:.0f}s")
        return not pending

    def revive(self, agent: str, reason: str) -> ActionReport:
        if not reason.strip():
            raise ConfigError("revive needs --reason: say why the agent may act again")
        report = self._report(f"revive --agent {agent}")
        self._patch(
            agent_path(agent),
            {"killed": False, "reason": reason, "by": self.operator.identity, "at": self.clock()},
        )
        report.say(f"{agent}: enabled again ({reason})")
        return report

    def rotate_signing_key(self, revoke_old: bool) -> ActionReport:
        report = self._report("rotate signing-key" + (" --revoke-old" if revoke_old else ""))
        doc = kv_read(self.client, GLOBAL_PATH, self.addr) or {}
        generation = int(doc.get("signing_generation", 1)) + 1
        changes: dict[str, Any] = {"signing_generation": generation}
        if revoke_old:
            changes["min_generation"] = generation
        self._patch(GLOBAL_PATH, changes)
        old = "refused from now on" if revoke_old else "still valid until they expire"
        report.say(
            f"signing key generation {generation}: sidecars re-key on their next poll; older tokens {old}"
        )
        return report

    def rotate_agent_secret(self, agent: str) -> tuple[ActionReport, str]:
        from broker.vault.layout import APPROLE_MOUNT, approle_role

        report = self._report(f"rotate agent-secret --agent {agent}")
        role = approle_role(agent)
        with translate_errors("AppRole secret rotation", self.addr):
            old = self.client.list(f"auth/{APPROLE_MOUNT}/role/{role}/secret-id") or {}
            new = self.client.auth.approle.generate_secret_id(
                role_name=role, mount_point=APPROLE_MOUNT
            )["data"]
            for accessor in (old.get("data") or {}).get("keys", []):
                self.client.auth.approle.destroy_secret_id_accessor(
                    role_name=role, secret_id_accessor=accessor, mount_point=APPROLE_MOUNT
                )
                report.revoked += 1
        report.say(
            f"{agent}: new AppRole secret id issued; {report.revoked} old secret ids destroyed"
        )
        return report, str(new["secret_id"])

    def role_id(self, agent: str) -> str:
        from broker.vault.layout import APPROLE_MOUNT, approle_role

        with translate_errors("AppRole role id read", self.addr):
            data = self.client.auth.approle.read_role_id(
                role_name=approle_role(agent), mount_point=APPROLE_MOUNT
            )
        return str(data["data"]["role_id"])

    def rotate_backend_root(self, mount: str, connection: str) -> ActionReport:
        from broker.vault.database import rotate_root

        report = self._report(f"rotate backend-root --mount {mount} --connection {connection}")
        rotate_root(self.client, mount=mount, connection_name=connection)
        report.say(
            f"{mount}/{connection}: Vault rotated the root credential; only Vault knows it now"
        )
        return report

    def status(self) -> Iterator[dict[str, Any]]:
        now = self.clock()
        global_doc = kv_read(self.client, GLOBAL_PATH, self.addr) or {}
        for agent in self.agents():
            beat = self.heartbeat(agent)
            doc = kv_read(self.client, agent_path(agent), self.addr) or {}
            yield {
                "agent": agent,
                "killed": bool(doc.get("killed") or global_doc.get("killed_all")),
                "kill_reason": doc.get("reason", ""),
                "heartbeat_age": round(now - float(beat["at"]), 1) if beat.get("at") else None,
                "in_flight": beat.get("in_flight"),
                "vault_credentials": len(
                    [
                        c
                        for c in beat.get("vault_credentials") or []
                        if float(c.get("expires_at", 0)) > now
                    ]
                ),
                "signing_generation": beat.get("generation"),
            }
