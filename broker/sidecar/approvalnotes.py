"""What the approval gate writes and announces: each approval step's audit record, the
notifications of approval steps, of control commands and of budget thresholds, and the
human-readable message of an approval.

Notifications go only to humans the manifest names (approvers, consulted, informed,
owners); they are announcements, never a path by which anything is decided.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from broker.audit.records import iso_utc
from broker.core.approvals import EVENT_NAMES, Approval, Event, Step, recipients
from broker.core.decision import Decision
from broker.core.limits import UsageLedger, window_start
from broker.core.manifest import Manifest
from broker.sidecar.metrics import SidecarMetrics
from broker.sidecar.notify import BudgetAlarms, Notification, Notifier

__all__ = ["ApprovalNotes", "approval_message"]


def approval_message(manifest: Manifest, action: str, decision: Decision) -> str:
    """The record's human-readable ``output``: the manifest's message, else a template."""
    found = manifest.actions.get(action)
    spec = found.approval if found is not None else None
    if spec is not None and spec.message:
        return spec.message
    who = ", ".join(decision.raci.approvers) if decision.raci else "an approver"
    return f"{action} requires approval by {who} ({decision.approval_reason})."


class ApprovalNotes:
    """The record-and-announce half of ``ApprovalGate``."""

    clock: Callable[[], float]
    notifier: Notifier
    ledger: UsageLedger
    metrics: SidecarMetrics | None
    _budgets: BudgetAlarms

    if TYPE_CHECKING:

        @property
        def manifest(self) -> Manifest: ...

        @property
        def agent(self) -> str: ...

    def announce_requested(self, approval: Approval) -> None:
        who = tuple(dict.fromkeys((*approval.raci.approvers, *recipients(approval.raci))))
        self._publish("approval.requested", approval, who, by=None, reason=approval.reason)

    def _record(self, approval: Approval, step: Step, credential_id: str | None) -> dict[str, Any]:
        return {
            "type": "approval",
            "event": EVENT_NAMES[step.event],
            "timestamp": iso_utc(step.at),
            "at": round(step.at, 6),
            "agent_id": approval.agent,
            "approval_id": approval.id,
            "action": approval.action,
            "workflow": approval.workflow,
            "request_id": approval.request_id,
            "inputs_hash": approval.inputs_hash,
            "by": step.by,
            "reason": step.reason,
            "approval_reason": approval.reason,
            "credential_id": credential_id,
            "policy_version": approval.policy_version,
            "manifest_hash": approval.manifest_hash,
            "raci": {
                "accountable": approval.raci.accountable,
                "consulted": list(approval.raci.consulted),
                "informed": list(approval.raci.informed),
                "approvers": list(approval.raci.approvers),
            },
            # A human's approval turned the automatic outcome (blocked) into an allow.
            "human_override": step.event is Event.approve,
        }

    def _publish(
        self, event: str, approval: Approval, who: tuple[str, ...], *, by: str | None, reason: str
    ) -> None:
        data = {
            "approval_id": approval.id,
            "action": approval.action,
            "request_id": approval.request_id,
            "approval_reason": approval.reason,
            "message": approval.message,
            "policy_version": approval.policy_version,
            "by": by,
            "reason": reason,
            "expires_at": iso_utc(approval.created_at + approval.expires_in),
        }
        self.notifier.publish(Notification(event, approval.agent, who, self.clock(), data))

    # -- other notifications -----------------------------------------------------------------

    def everyone(self) -> tuple[str, ...]:
        """The agent's humans: owners, then every action's accountable, consulted, informed."""
        m = self.manifest
        names: list[str] = [m.system_owner, m.risk_owner]
        for action in m.actions.values():
            names += [action.accountable, *action.consulted, *action.informed]
        return tuple(dict.fromkeys(names))

    def announce_control(self, event: str, data: Mapping[str, Any]) -> None:
        """Kill switch, revival or revocation, to every human named in the manifest."""
        self.notifier.publish(Notification(event, self.agent, self.everyone(), self.clock(), data))

    def check_budgets(self) -> None:
        """Announce each budget's 80% and 100% crossings once per window."""
        now = self.clock()
        for name, budget in self.manifest.budgets.items():
            used = self.ledger.reported_used(name, now)
            if self.metrics is not None:
                self.metrics.budget(name, used, float(budget.limit))
            window = window_start(now, budget.per)
            for event in self._budgets.crossings(name, window, used, budget.limit):
                owners = [self.manifest.risk_owner]
                for action in self.manifest.actions.values():
                    if name in action.cost:
                        owners += [action.accountable, *action.consulted, *action.informed]
                data = {"budget": name, "used": used, "limit": budget.limit, "per": budget.per}
                who = tuple(dict.fromkeys(owners))
                self.notifier.publish(Notification(event, self.agent, who, now, data))
