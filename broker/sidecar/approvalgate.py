"""The sidecar's side of human approval gates: open an approval in Vault, watch it, audit and
announce each step, and hand the redeem path what it needs.

Invariants:
- Every approval step reaches this sidecar's audit trail once: steps taken by operators
  (approve, deny) when the sidecar first sees them (watch loop or redeem), its own steps
  (expire, redeem, reopen) right after it wrote them. ``noted`` in the Vault document
  counts the audited steps, so a restarted sidecar continues where it stopped.
- The sidecar's own transitions are check-and-set writes like the operators', so a redeem
  and an operator's late action cannot both win.
- An approve or deny step counts only when its approver's own decision record (written where
  only that approver's Vault identity can write) backs it: a step without one, such as a raw
  KV rewrite of the document, is audited as ``unverified``, never announced, never redeemed.
- The store's calls run in worker threads (``off_loop``), which hand each Vault request to
  the event loop's client (``LoopBridge``); nothing here runs inside the decide-and-charge
  step of the service.

Each step's audit record and notifications are worded in ``approvalnotes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from broker.audit.records import iso_utc
from broker.audit.redaction import seal, stored_inputs, unseal
from broker.core.approvals import (
    EVENT_NAMES,
    Approval,
    ApprovalError,
    Event,
    State,
    Step,
    approved_by,
    check_id,
    recipients,
    redeem_refusal,
    transition,
    vouch_problem,
)
from broker.core.decision import ActionRequest, Decision
from broker.core.errors import BrokerError, NotFound
from broker.core.limits import UsageLedger
from broker.core.manifest import Manifest
from broker.core.manifesttypes import DEFAULT_APPROVAL_EXPIRY_SECONDS
from broker.core.reasons import ReasonCode
from broker.sidecar.approvalnotes import ApprovalNotes, approval_message
from broker.sidecar.metrics import SidecarMetrics
from broker.sidecar.notify import BudgetAlarms, Notifier, NullNotifier
from broker.sidecar.runtime import Runtime
from broker.vault.approvals import ApprovalStore, read_decision
from broker.vault.asyncapi import off_loop

log = logging.getLogger("broker.sidecar.approvalgate")

MAX_WAIT = 30.0  # longest ?wait= a redeem may hold its connection open
SIDECAR = "sidecar"
TERMINAL = frozenset({State.denied, State.expired, State.redeemed})
SEALED_INPUTS = "sealed_inputs"  # in Approval.extra: redacted inputs, sealed for the redeem


# The watch's wait while no approval is open (budget alarms and gauges only).
IDLE_TICK = 2.0


class AuditSink(Protocol):
    async def append(self, body: Mapping[str, Any]) -> Any: ...


def _sealed(approval: Approval) -> Mapping[str, Any]:
    found = approval.extra.get(SEALED_INPUTS)
    return found if isinstance(found, Mapping) else {}


class ApprovalGate(ApprovalNotes):
    def __init__(
        self,
        manifest: Callable[[], Manifest],
        runtime: Runtime,
        audit: AuditSink,
        ledger: UsageLedger,
        *,
        clock: Callable[[], float] = time.time,
        redact_key: bytes = b"",
    ) -> None:
        self._manifest, self.runtime, self.audit, self.ledger = manifest, runtime, audit, ledger
        self._redact_key = redact_key
        self.clock = clock  # the approval clock: a hook for expiry tests
        self.notifier: Notifier = NullNotifier()
        self.poll = 0.25
        self.open: set[str] = set()
        self._noted: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # one redeem at a time per approval
        self._steps = asyncio.Lock()  # the watch and a redeem must not audit a step twice
        self._budgets = BudgetAlarms()
        self._task: asyncio.Task[None] | None = None
        self._activity = asyncio.Event()  # a decision since the watch's last pass
        self.metrics: SidecarMetrics | None = None

    @property
    def manifest(self) -> Manifest:
        """The manifest enforced now (it may be swapped while the sidecar runs)."""
        return self._manifest()

    @property
    def agent(self) -> str:
        return self.manifest.agent

    @property
    def store(self) -> ApprovalStore:
        return ApprovalStore(self.runtime.sync_client, self.runtime.session.addr)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, interval: float) -> None:
        """Pick up this agent's unfinished approvals from Vault, then watch them."""
        self.poll = interval
        self._task = asyncio.create_task(self._watch(), name=f"approvals-{self.agent}")

    async def _load_open_once(self) -> None:
        # In the watch task, not in start: a sidecar starting while Vault is away must not
        # wait for it here.
        await self.runtime.wait_connected()
        try:
            await off_loop(self._load_open)
        except BrokerError as exc:  # redeem still reads Vault directly; the watch catches up
            log.warning("approvals left open before this start not loaded: %s", exc.detail)

    def _load_open(self) -> None:
        store = self.store
        for approval_id in store.ids(self.agent):
            found = store.read(self.agent, approval_id)
            if found and (found[0].state not in TERMINAL or found[0].noted < len(found[0].history)):
                self.open.add(approval_id)

    def touched(self) -> None:
        """A decision was recorded: the next pass checks the budgets without waiting."""
        self._activity.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        await self._load_open_once()
        while True:
            await asyncio.sleep(self.poll)
            if not self.open and not self._activity.is_set():
                # Nothing open, no decision since the last pass: only the budget alarms and
                # gauges would be checked, and usage moves with decisions (or a replica's
                # spending, seen within IDLE_TICK); an idle sidecar sleeps till then.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_TICK - self.poll):
                        await self._activity.wait()
            self._activity.clear()
            try:
                await self.tick()
            except BrokerError as exc:
                log.warning("approval watch: %s", exc.detail)

    async def tick(self) -> None:
        """One pass: audit operators' steps, expire what lapsed, check budget thresholds."""
        self.check_budgets()
        for approval_id in sorted(self.open):
            found = await off_loop(self.store.read, self.agent, approval_id)
            if found is None:
                self.open.discard(approval_id)
                continue
            approval = await self.note(found[0])
            if approval.state_at(self.clock()) is State.expired and approval.state in (
                State.pending,
                State.approved,
            ):
                with contextlib.suppress(ApprovalError):
                    approval = await self.advance(approval, Event.expire, SIDECAR, "deadline")
            if approval.state in TERMINAL and self._noted.get(approval_id, 0) >= len(
                approval.history
            ):
                self._forget(approval_id)
        if self.metrics is not None:
            self.metrics.approvals_pending(len(self.open))

    def _forget(self, approval_id: str) -> None:
        """A finished approval: stop watching it (a late redeem still reads it from Vault)."""
        self.open.discard(approval_id)
        # ``_noted`` is kept (one int per approval): a redeem holding a copy read before the
        # watch audited the last step must still see that the step is done.
        lock = self._locks.get(approval_id)
        if lock is not None and not lock.locked():
            del self._locks[approval_id]

    def lock(self, approval_id: str) -> asyncio.Lock:
        return self._locks.setdefault(approval_id, asyncio.Lock())

    # -- opening -----------------------------------------------------------------------------

    async def open_for(self, req: ActionRequest, decision: Decision, now: float) -> Approval:
        """Store a new approval request in Vault; raises BrokerError when Vault refuses.

        Its deadline runs on the approval clock (operators act on wall-clock time), not on
        the decision's ``now``, which only stamps the decision record."""
        del now
        assert decision.raci is not None
        approval_id = "apr_" + uuid.uuid4().hex[:20]
        # Redacted inputs: keyed-hashed as in the trail, and sealed for the redeem (redaction.py).
        fields = self._redacted_fields(req.action)
        shown, shown_hash = stored_inputs(
            decision.agent, req.action, req.inputs, fields, self._redact_key
        )
        sealed = seal(req.inputs, fields, self._redact_key, approval_id)
        approval = Approval(
            id=approval_id,
            agent=decision.agent,
            action=req.action,
            inputs=shown,
            inputs_hash=shown_hash,
            extra={SEALED_INPUTS: sealed} if sealed else {},
            workflow=req.workflow,
            request_id=req.request_id,
            reason=decision.approval_reason or "",
            message=approval_message(self.manifest, req.action, decision),
            raci=decision.raci,
            policy_version=decision.policy_version,
            manifest_hash=decision.manifest_hash,
            created_at=self.clock(),
            expires_in=decision.approval_expires_in or DEFAULT_APPROVAL_EXPIRY_SECONDS,
        )
        await off_loop(self.store.create, approval)
        self.open.add(approval.id)
        self._noted[approval.id] = 0
        return approval

    def pending_body(self, approval: Approval) -> dict[str, Any]:
        deadline = approval.deadline or approval.created_at + approval.expires_in
        return {
            "outcome": "pending_approval",
            "approval_id": approval.id,
            "reason": approval.reason,
            "detail": approval.message,
            "approvers": list(approval.raci.approvers),
            "expires_at": iso_utc(deadline),
            "expires_in": max(0, int(deadline - self.clock())),
        }

    # -- redeeming ---------------------------------------------------------------------------

    async def fetch(self, approval_id: str, wait: float = 0.0) -> Approval:
        """The approval, its operator steps audited; waits up to ``wait`` s while pending."""
        check_id(approval_id)
        give_up = time.monotonic() + max(0.0, min(wait, MAX_WAIT))
        while True:
            found = await off_loop(self.store.read, self.agent, approval_id)
            if found is None:
                raise NotFound(f"no approval {approval_id} for {self.agent}")
            approval = await self.note(found[0])
            left = give_up - time.monotonic()
            if approval.state_at(self.clock()) is not State.pending or left <= 0:
                return approval
            await asyncio.sleep(min(self.poll, left))

    async def refusal(
        self, approval: Approval, action: str | None, inputs: Mapping[str, Any] | None
    ) -> tuple[ReasonCode, str] | None:
        """Why a redeem is refused (an expiry is written down first), or None."""
        # The binding is checked on the stored (redacted) form, and always: without the
        # agent's inputs, on the ones unsealed from the document (a swapped value fails here).
        given = self.request_of(approval).inputs if inputs is None else inputs
        fields = _sealed(approval)
        shown, _ = stored_inputs(approval.agent, approval.action, given, fields, self._redact_key)
        why = redeem_refusal(approval, self.clock(), action, shown)
        if inputs is None and why is not None and why[0] is ReasonCode.invalid_inputs:
            # No inputs of the agent's to compare: the document disagrees with its own binding,
            # so it was changed after it was requested (a raw KV write).
            why = (
                ReasonCode.approval_denied,
                f"approval not honoured: {approval.id} no longer matches the action and "
                "inputs it was requested for",
            )
        if why is not None and approval.state_at(self.clock()) is State.expired:
            with contextlib.suppress(ApprovalError):
                await self.advance(approval, Event.expire, SIDECAR, "deadline")
        return why

    def _redacted_fields(self, action: str) -> tuple[str, ...]:
        found = self.manifest.actions.get(action)
        return found.redact if found is not None else ()

    def request_of(self, approval: Approval) -> ActionRequest:
        try:
            clear = unseal(_sealed(approval), self._redact_key, approval.id)
        except ValueError as exc:
            log.warning("approval %s: %s", approval.id, exc)
            clear = {}  # the stored keyed hashes stay; the binding check then refuses
        return ActionRequest(
            action=approval.action,
            inputs={**approval.inputs, **clear},
            workflow=approval.workflow,
            request_id=approval.request_id,
        )

    async def vouch(self, approval: Approval, step: Step | None = None) -> str | None:
        """Why an approver's step (by default the last approve) is not backed by that
        approver's own decision record, or None. The approvers are the manifest's in force,
        not the document's."""
        found = self.manifest.actions.get(approval.action)
        approvers = found.approval.approvers if found and found.approval else ()
        by = step.by if step is not None else approved_by(approval)
        decided = None
        if by in approvers:
            session = self.runtime.session
            decided = await off_loop(
                read_decision, self.runtime.sync_client, by, self.agent, approval.id, session.addr
            )
        return vouch_problem(approval, approvers, decided, step)

    async def spend(self, approval: Approval) -> Approval:
        """Mark the approval redeemed in Vault (check-and-set) before anything is minted."""
        return await self.advance(approval, Event.redeem, SIDECAR, "", audit=False)

    async def redeemed(self, approval: Approval, credential_id: str) -> None:
        await self.audit.append(self._record(approval, approval.history[-1], credential_id))

    async def reopen(self, approval: Approval, why: str) -> None:
        with contextlib.suppress(ApprovalError):
            await self.advance(approval, Event.reopen, SIDECAR, why)

    # -- steps -------------------------------------------------------------------------------

    async def advance(
        self, approval: Approval, event: Event, by: str, reason: str, *, audit: bool = True
    ) -> Approval:
        """The sidecar's own transition, written with check-and-set, then audited."""
        now = self.clock()

        def change(stored: Approval) -> Approval:
            moved = transition(stored, event, at=now, by=by, reason=reason)
            return replace(moved, noted=len(moved.history))

        async with self._steps:
            moved = await off_loop(self.store.update, self.agent, approval.id, change)
            already = self._noted.get(approval.id, approval.noted)
            self._noted[approval.id] = len(moved.history)
            steps = moved.history[already:] if audit else moved.history[already:-1]
            for step in steps:
                await self._step(moved, step)
        return moved

    async def note(self, approval: Approval) -> Approval:
        """Audit and announce steps this sidecar has not yet recorded (operators' steps)."""
        async with self._steps:
            already = max(self._noted.get(approval.id, 0), approval.noted)
            if already >= len(approval.history):
                return approval
            for step in approval.history[already:]:
                await self._step(approval, step)
            self._noted[approval.id] = done = len(approval.history)

            def mark(stored: Approval) -> Approval:
                return replace(stored, noted=max(stored.noted, done))

            with contextlib.suppress(ApprovalError):
                approval = await off_loop(self.store.update, self.agent, approval.id, mark)
        return approval

    async def _step(self, approval: Approval, step: Step) -> None:
        decides = step.event in (Event.approve, Event.deny)
        problem = await self.vouch(approval, step) if decides else None
        if problem is not None:
            log.warning("approval %s: approve step not honoured: %s", approval.id, problem)
            record = self._record(approval, step, None)
            record.update(event="unverified", reason=problem, human_override=False)
            record["claimed_reason"] = step.reason
            await self.audit.append(record)
            return
        await self.audit.append(self._record(approval, step, None))
        if step.event in (Event.approve, Event.deny, Event.expire):
            if self.metrics is not None:
                self.metrics.approval_wait(step.at - approval.created_at)
            name = EVENT_NAMES[step.event]
            self._publish(
                f"approval.{name}",
                approval,
                tuple(recipients(approval.raci)),
                by=step.by,
                reason=step.reason,
            )
