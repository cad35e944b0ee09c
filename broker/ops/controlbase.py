"""What every runbook command shares: the operator's identity, the report of what was proven,
target checks made before anything is written, and check-and-set writes.

A target is checked before anything is written: an empty or unknown agent, action or
credential id is a usage error (``ConfigError``, exit 2) and changes nothing. Every
control-state write is a KV v2 check-and-set, retried on conflict (``kv_update``), so
concurrent commands never lose each other's writes."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from broker.core.errors import ConfigError
from broker.ops.sweep import Sweeper, Tally
from broker.vault._errors import translate_errors
from broker.vault.control import control_written
from broker.vault.kv import kv_list, kv_read, kv_update
from broker.vault.manifests import read_manifest
from broker.vault.registry import agents_of_prefix, logins, registered_agents
from broker.vault.revoke import approle_exists
from broker.vault.session import VaultClient

ACK_WAIT = 2.0  # how long a command waits for a running sidecar to acknowledge its write
AGENT_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")  # as in the manifest schema


@dataclass(frozen=True)
class Operator:
    identity: str
    policies: tuple[str, ...]


def whoami(client: VaultClient, addr: str = "") -> Operator:
    """Who the operator token belongs to: its ``operator`` metadata, else its display name."""
    with translate_errors("token lookup", addr):
        data = client.auth.token.lookup_self()["data"]
    meta = data.get("meta") or {}
    identity = meta.get("operator") or data.get("display_name") or data.get("accessor", "unknown")
    return Operator(identity=str(identity), policies=tuple(data.get("policies") or ()))


@dataclass(kw_only=True)
class ActionReport(Tally):
    """What a command did (proven in Vault), for the terminal and the operator audit trail."""

    command: str
    operator: str
    started: float
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


def usage(detail: str, code: str) -> ConfigError:
    return ConfigError(f"{detail}; nothing was changed", code=code)


def given(value: str | None, option: str) -> str:
    if value is None or not value.strip():
        raise usage(
            f"{option} is empty (an unset shell variable?); name the target", "empty_target"
        )
    return value.strip()


class ControlBase:
    def __init__(
        self,
        client: VaultClient,
        addr: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        *,
        deadline: float = 10.0,
        ack_wait: float = ACK_WAIT,
    ) -> None:
        self.client = client
        self.addr = addr
        self.clock = clock
        self.sleep = sleep
        self.deadline = deadline
        self.ack_wait = ack_wait
        self.operator = whoami(client, addr)

    # -- reading -----------------------------------------------------------------------------

    def agents(self) -> list[str]:
        names = set(kv_list(self.client, "heartbeat/", self.addr))
        names |= set(registered_agents(self.client, self.addr))
        names |= {
            k for k in kv_list(self.client, "control/agents/", self.addr) if not k.endswith("/")
        }
        return sorted(n for n in names if not n.endswith("/"))

    def _sweeper(self, report: Tally) -> Sweeper:
        return Sweeper(
            self.client,
            self.addr,
            report,
            clock=self.clock,
            sleep=self.sleep,
            deadline=self.deadline,
        )

    def heartbeat(self, agent: str) -> dict[str, Any]:
        return self._sweeper(Tally()).heartbeat(agent)

    def outstanding(self, agent: str, beat: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        now = self.clock()
        creds = (self.heartbeat(agent) if beat is None else beat).get("vault_credentials") or []
        return [c for c in creds if isinstance(c, dict) and float(c.get("expires_at", 0)) > now]

    # -- checking targets (before anything is written) ---------------------------------------

    def known_agent(self, agent: str) -> str:
        agent = given(agent, "--agent")
        if AGENT_ID.fullmatch(agent) is None:
            raise usage(f"--agent {agent!r} is not an agent id", "unknown_agent")
        if not (
            approle_exists(self.client, agent, self.addr)
            or logins(self.client, agent, self.addr)
            or kv_read(self.client, f"heartbeat/{agent}", self.addr)
        ):
            raise usage(
                f"--agent {agent!r}: no such agent (no AppRole role, sidecar login or heartbeat "
                "in Vault); `broker status` lists the agents",
                "unknown_agent",
            )
        return agent

    def known_action(self, agent: str, action: str) -> str:
        action = given(action, "--action")
        actions = set(self.heartbeat(agent).get("actions") or [])
        published = read_manifest(self.client, agent, addr=self.addr)
        if published is not None:
            doc = yaml.safe_load(published.yaml) or {}
            actions |= set((doc.get("actions") or {}) if isinstance(doc, dict) else {})
        if not actions:
            raise usage(
                f"--action {action!r}: cannot tell which actions {agent} has (no published "
                "manifest, no sidecar heartbeat)",
                "unknown_action",
            )
        if action not in actions:
            known = ", ".join(sorted(actions))
            raise usage(
                f"--action {action!r}: {agent} has no such action ({known})", "unknown_action"
            )
        return action

    def _owners(self, prefix: str) -> list[str]:
        """Agents whose sidecars ran in the process that issued ids starting ``prefix`` (one,
        in production: a sidecar process serves one agent)."""
        return agents_of_prefix(self.client, prefix, self.addr)

    # -- writing -----------------------------------------------------------------------------

    def _update(self, path: str, changes: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        """Check-and-set: ``changes`` gets the current document, returns the fields to set.
        Returns the version written, which sidecars acknowledge in their heartbeats."""
        return self._update_doc(path, changes)[1]

    def _update_doc(
        self, path: str, changes: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> tuple[dict[str, Any], int]:
        written = kv_update(
            self.client, path, lambda doc: {**doc, **changes(doc)}, self.addr, sleep=self.sleep
        )
        # After the document: a sidecar that sees the new version then reads the new document.
        control_written(self.client, self.addr, self.clock)
        return written

    def _report(self, command: str) -> ActionReport:
        return ActionReport(command=command, operator=self.operator.identity, started=self.clock())

    def _done(self, report: ActionReport) -> ActionReport:
        report.took = self.clock() - report.started
        return report

    def _workload_logins(self, report: ActionReport, agent: str, *, stopped: bool) -> None:
        """Stop (kill) or resume (revive) the agent's jwt/service-account logins: a kill that
        only destroyed AppRole secret ids would leave a pod's projected token able to log in."""
        from broker.core.errors import BrokerError
        from broker.vault.workload import agent_jwt_roles, set_jwt_login

        verb = "stopped" if stopped else "allowed again"
        try:
            for path in agent_jwt_roles(self.client, agent, self.addr):
                if set_jwt_login(self.client, path, stopped=stopped, addr=self.addr):
                    report.say(f"{agent}: jwt logins with {path} {verb} (verified)")
                else:
                    report.failures.append(f"{agent}: {path} did not read back {verb}")
        except BrokerError as exc:
            report.failures.append(f"{agent}: jwt logins not {verb}: {exc.detail}")
