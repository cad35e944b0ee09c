"""Approval requests in Vault's KV v2 mount, at ``approvals/<agent>/<id>``.

Shared through Vault so any operator can act on one and it survives a sidecar restart.
Every change is a check-and-set write against the version that was read, so two operators
(or an operator and the sidecar) cannot both act on the same approval: the second write
fails and is reported as a conflict, never silently applied.

An approver's decision is also written, once, at ``decisions/<approver>/<agent>/<id>``: the
approver policy lets only the Vault identity named ``<approver>`` create it, so a raw KV write
to the approval document cannot make an approval that the sidecar will honour."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.core.approvals import Approval, ApprovalError, Decided, NotAnApprover, check_id
from broker.core.errors import NotFound, PermissionDenied
from broker.vault.kv import kv_list, kv_read, kv_read_versioned, kv_write_cas
from broker.vault.layout import decision_path

if TYPE_CHECKING:
    import hvac

APPROVALS_DIR = "approvals"


class ApprovalConflict(ApprovalError):
    """A check-and-set write lost to another writer."""


def approval_path(agent: str, approval_id: str) -> str:
    return f"{APPROVALS_DIR}/{agent}/{check_id(approval_id)}"


class ApprovalStore:
    """Create, read, list and change approvals with the caller's own Vault token."""

    def __init__(self, client: hvac.Client, addr: str = "") -> None:
        self.client = client
        self.addr = addr

    def create(self, approval: Approval) -> None:
        """Write a new approval; refuses to overwrite one that exists (cas 0)."""
        self._write(approval, 0)

    def read(self, agent: str, approval_id: str) -> tuple[Approval, int] | None:
        """The approval and its KV version, or None."""
        doc, version = kv_read_versioned(self.client, approval_path(agent, approval_id))
        return None if doc is None else (Approval.from_json(doc), version)

    def find(self, approval_id: str, agent: str | None = None) -> tuple[Approval, int]:
        """An approval by id, searching every agent's approvals unless ``agent`` is given."""
        check_id(approval_id)
        for name in [agent] if agent else self.agents():
            found = self.read(name, approval_id)
            if found is not None:
                return found
        raise NotFound(f"no approval {approval_id}")

    def agents(self) -> list[str]:
        return [k.rstrip("/") for k in kv_list(self.client, f"{APPROVALS_DIR}/", self.addr)]

    def ids(self, agent: str) -> list[str]:
        keys = kv_list(self.client, f"{APPROVALS_DIR}/{agent}/", self.addr)
        return [k for k in keys if not k.endswith("/")]

    def list(self, agent: str | None = None) -> list[Approval]:
        """Every approval of one agent, or of all agents, oldest first."""
        found: list[Approval] = []
        for name in [agent] if agent else self.agents():
            for approval_id in self.ids(name):
                got = self.read(name, approval_id)
                if got is not None:
                    found.append(got[0])
        return sorted(found, key=lambda a: a.created_at)

    def update(
        self,
        agent: str,
        approval_id: str,
        change: Callable[[Approval], Approval],
        attempts: int = 3,
    ) -> Approval:
        """Apply ``change`` to the stored approval with check-and-set; ``change`` may raise.

        When another writer got in between, ``change`` is applied again to what it wrote, so
        the lifecycle decides again: a late second decision is refused, while a harmless
        concurrent write (the sidecar noting a step) does not fail the change."""
        for attempt in range(attempts):
            found = self.read(agent, approval_id)
            if found is None:
                raise NotFound(f"no approval {approval_id} for {agent}")
            approval, version = found
            changed = change(approval)
            try:
                self._write(changed, version)
            except ApprovalConflict:
                if attempt == attempts - 1:
                    raise
                continue
            return changed
        raise AssertionError("unreachable")

    def _write(self, approval: Approval, cas: int) -> None:
        path = approval_path(approval.agent, approval.id)
        if kv_write_cas(self.client, path, approval.to_json(), cas) is None:
            raise ApprovalConflict(
                f"approval {approval.id} changed while this change was made; "
                "read it again (someone else acted first)"
            )


def write_decision(client: hvac.Client, decided: Decided, addr: str = "") -> None:
    """Record an approver's decision where only that approver's Vault identity may create it;
    Vault refusing the path means the caller is not that approver."""
    path = decision_path(decided.approver, decided.agent, check_id(decided.approval_id))
    try:
        if kv_write_cas(client, path, decided.to_json(), 0) is None:
            raise ApprovalConflict(
                f"{decided.approver} already decided approval {decided.approval_id}"
            )
    except PermissionDenied as exc:
        raise NotAnApprover(
            f"Vault refused to record a decision as {decided.approver}: this Vault token is "
            "not that approver's identity (an admin issues it through the broker-approver role)"
        ) from exc


def read_decision(
    client: hvac.Client, approver: str, agent: str, approval_id: str, addr: str = ""
) -> Decided | None:
    """The decision ``approver`` recorded on this approval, or None (also when unreadable
    as a decision: a malformed record backs nothing)."""
    if not approver or "/" in approver:
        return None
    data = kv_read(client, decision_path(approver, agent, check_id(approval_id)))
    try:
        return Decided.from_json(data) if isinstance(data, dict) else None
    except (KeyError, TypeError, ValueError):
        return None
