"""What the credential service tells the rest of the world about itself: a change of control
state goes on the record and to the webhooks, the heartbeat's summary of what is outstanding,
and readiness for ``/readyz``. A mixin of ``CredentialService``, over its state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from broker.audit.records import iso_utc
from broker.core.controlstate import ControlState
from broker.core.limits import UsageLedger
from broker.core.manifest import Manifest
from broker.sidecar.approvalgate import ApprovalGate
from broker.sidecar.metrics import SidecarMetrics
from broker.sidecar.runtime import Runtime

_CONTROL_EVENTS = {
    "kill": "agent.killed",
    "revive": "agent.revived",
    "revoke": "credentials.revoked",
}


class AuditSink(Protocol):
    async def append(self, body: Mapping[str, Any], *, owned: bool = False) -> Any: ...


class ServiceViews:
    manifest: Manifest
    runtime: Runtime
    ledger: UsageLedger
    approvals: ApprovalGate
    metrics: SidecarMetrics | None
    audit: AuditSink
    vault_ids: dict[str, tuple[str, str, str, float]]
    manifest_state: Callable[[], dict[str, Any]] | None
    _background: set[asyncio.Task[Any]]
    _clock: Callable[[], float]

    def control_changed(self, old: ControlState, new: ControlState) -> None:
        """Runs on the event loop: a kill or mass revocation frees slots and goes on the record."""
        if new.killed or new.revoked_before > old.revoked_before:
            self.ledger.release_all()
            self.vault_ids.clear()
        event = (
            "kill"
            if new.killed and not old.killed
            else "revive"
            if old.killed and not new.killed
            else "revoke"
        )
        body = {
            "type": "control",
            "event": event,
            "timestamp": iso_utc(self._clock()),
            "at": round(self._clock(), 6),
            "agent_id": self.manifest.agent,
            "reason": new.kill_reason,
            "revoked_before": new.revoked_before,
        }
        self.approvals.announce_control(_CONTROL_EVENTS[event], body)
        if self.metrics is not None and event != "revive":
            self.metrics.revocation("agent" if event == "kill" else "all")
        task = asyncio.get_running_loop().create_task(self.audit.append(body))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def outstanding_summary(self) -> dict[str, Any]:
        """For the heartbeat: how many credentials are live, and which Vault ids back them."""
        now = self._clock()
        for cid in [c for c, v in self.vault_ids.items() if v[3] <= now]:
            del self.vault_ids[cid]
        watched = self.manifest_state() if self.manifest_state else {}
        return {
            "in_flight": self.ledger.in_flight(now),
            "manifest_hash": self.manifest.content_hash,
            # So `broker scopes verify` can say why a published version is not enforced.
            "manifest_source": watched.get("source", "file"),
            "manifest_refused": watched.get("refused"),
            "actions": sorted(self.manifest.actions),  # runbook commands check --action here
            "vault_credentials": [
                {"credential_id": c, "kind": k, "vault_id": v, "action": a, "expires_at": e}
                for c, (k, v, a, e) in self.vault_ids.items()
            ],
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready exactly when no reason of the sidecar's own would refuse a mint: the audit
        trail, Vault, the control state's age and the signing certificate, each named."""
        problems = self.runtime.problems()
        failed = getattr(self.audit, "failed", "")
        if failed:
            problems["audit"] = failed
        ready = not problems
        return ready, {
            "ready": ready,
            "problems": problems,
            "vault": problems.get("vault", "ok"),
            "manifest": {
                "agent": self.manifest.agent,
                "hash": self.manifest.content_hash,
                **(self.manifest_state() if self.manifest_state else {}),
            },
            "agent_disabled": self.runtime.control.killed,
            "revoked_before": self.runtime.control.revoked_before,
            "control_age_seconds": round(min(self.runtime.control_age(), 1e9), 3),
            # "node-agent" while the node's agent confirms control/version for this sidecar.
            "control_source": self.runtime.control_source,
            # When a kill or revocation was last taken in (wall clock), for time-to-effect.
            "control_changed_at": self.runtime.control_changed_at,
        }
