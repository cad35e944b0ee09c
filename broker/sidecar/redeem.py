"""Redeeming an approved request, once: the checks made at redeem time, in order (the
approval's state and inputs, DPoP, the approval document's integrity, Vault and control
state, the budget through ``decide`` again, the approver still listed in the manifest in
force), the approval spent before anything is minted, and reopened if the mint fails.

A mixin of ``CredentialService``: it reads the service's gate, runtime and ledger, and
records and mints through the service's own ``_record`` and ``_allow``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from broker.core.approvals import State, approved_by
from broker.core.decision import ActionRequest, Decision, decide
from broker.core.limits import UsageLedger
from broker.core.manifest import Manifest
from broker.core.reasons import Outcome, ReasonCode
from broker.sidecar.approvalgate import ApprovalGate
from broker.sidecar.minting import Minter, bounded
from broker.sidecar.reply import Reply, refusal
from broker.sidecar.runtime import Runtime


class Redeemer:
    approvals: ApprovalGate
    minter: Minter
    runtime: Runtime
    manifest: Manifest
    ledger: UsageLedger
    _clock: Callable[[], float]

    async def redeem(
        self,
        approval_id: str,
        wait: float = 0.0,
        inputs: Mapping[str, Any] | None = None,
        jkt: str | None = None,
    ) -> Reply:
        """An approved request's credential, once: 202 while pending, 403 once denied,
        expired or spent, or when ``inputs`` are not the approved ones."""
        gate = self.approvals
        async with gate.lock(approval_id):
            fetched = gate.fetch(approval_id, wait)
            approval = await bounded(fetched, wait + self.minter.deadline, "reading the approval")
            req = gate.request_of(approval)
            refused = await gate.refusal(approval, None, inputs)
            if refused is None and approval.state_at(gate.clock()) is State.pending:
                return Reply(202, gate.pending_body(approval))
            missing = self._dpop_missing(req.action, jkt)
            if refused is None and missing is not None:  # before spending: it stays redeemable
                refused = ReasonCode.dpop_required, missing
            if refused is None and approval.state_at(gate.clock()) is State.approved:
                problem = await gate.vouch(approval)
                if problem is not None:
                    refused = ReasonCode.approval_denied, f"approval not honoured: {problem}"
            if refused is None and not self.runtime.available():
                refused = ReasonCode.backend_unavailable, "Vault is unavailable, nothing is minted"
                if self.runtime.vault_ok:
                    refused = ReasonCode.control_state_stale, self.runtime.stale_detail()
            if refused is None:
                approval = await gate.spend(approval)  # single use: spent before minting
                await self._fleet_ensure(req)  # no slice: decide refuses, the approval reopens
            now = self._clock()
            decision = decide(
                req, self.manifest, self.ledger, now, agent_disabled=self.runtime.control.killed
            )
            extra = {"approval_id": approval.id}
            if refused is None and decision.outcome is Outcome.deny:
                assert decision.reason is not None
                refused = decision.reason, decision.detail
                await gate.reopen(approval, f"refused at redeem: {decision.reason}")
            approver = approved_by(approval)
            still_listed = decision.raci is not None and approver in decision.raci.approvers
            if (
                refused is None
                and decision.outcome is Outcome.pending_approval
                and not still_listed
            ):
                # The manifest changed since the approval: only a current approver's word counts.
                refused = (
                    ReasonCode.approval_denied,
                    f"{approver} is no longer an approver of {req.action} under the manifest in force",
                )
            if refused is not None:
                denied = replace(
                    decision,
                    outcome=Outcome.deny,
                    reason=refused[0],
                    approval_reason=None,
                    detail=refused[1],
                )
                await self._record(req, denied, now, status="blocked", extra=extra)
                return refusal(denied, refused[0], refused[1], decision.retry_after)
            by = approved_by(approval)
            granted = replace(
                decision, outcome=Outcome.allow, reason=None, detail=f"approved by {by}"
            )
            reply = await self._allow(
                req,
                granted,
                now,
                extra={**extra, "approved_by": by, "human_override": True},
                jkt=jkt,
            )
            if reply.status == 200:
                await gate.redeemed(approval, reply.body["credential"]["credential_id"])
            else:
                await gate.reopen(approval, "the mint failed")
            return reply

    # -- provided by CredentialService ----------------------------------------------------

    def _dpop_missing(self, action: str, jkt: str | None) -> str | None:
        raise NotImplementedError

    async def _fleet_ensure(self, req: ActionRequest) -> str | None:
        raise NotImplementedError

    async def _record(
        self,
        req: ActionRequest,
        decision: Decision,
        now: float,
        *,
        status: str,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        raise NotImplementedError

    async def _allow(
        self,
        req: ActionRequest,
        decision: Decision,
        now: float,
        extra: Mapping[str, Any] | None = None,
        *,
        jkt: str | None = None,
    ) -> Reply:
        raise NotImplementedError
