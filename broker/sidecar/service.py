"""decide -> reserve -> mint -> audit -> answer, for one agent.

Invariants:
- A decision and its charge happen with no ``await`` between them, so budgets, rates and
  concurrency are exact in one event loop; a failed mint gives the reservation back.
- A credential leaves the sidecar only after its record is durable in the audit trail.
  A JWT's record is written before it is even signed (its jti is chosen first); a Vault
  token or lease whose record cannot be written is revoked in Vault before answering 503.
- Vault unreachable, or the audit trail unwritable, means no credential (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from broker.audit.records import iso_utc
from broker.audit.redaction import stored_inputs
from broker.core.credids import unique_id as _unique_id
from broker.core.decision import ActionRequest, Decision, decide
from broker.core.dpop import ProofError, ProofRequest, ReplayCache, check_proof
from broker.core.errors import AuditUnavailable, BackendUnavailable, BrokerError, RequestError
from broker.core.fleetdoc import LeaseLost
from broker.core.limits import UsageLedger
from broker.core.manifest import JwtCredential, Manifest
from broker.core.reasons import Outcome, ReasonCode
from broker.core.toolcalls import ToolCallLog
from broker.sidecar.api import scope_document
from broker.sidecar.approvalgate import ApprovalGate
from broker.sidecar.decisionrecord import (
    Recorded,
    decision_record,
    decision_summary,
    jwt_claims,
    tool_call,
)
from broker.sidecar.fleetledger import FleetLedger, request_costs
from broker.sidecar.metrics import SidecarMetrics
from broker.sidecar.minting import IssuedCredential, Minter, bounded
from broker.sidecar.orphans import LateCredentials, revoke_in_vault
from broker.sidecar.redeem import Redeemer
from broker.sidecar.reply import Reply, refusal
from broker.sidecar.runtime import Runtime
from broker.sidecar.serviceviews import AuditSink, ServiceViews

log = logging.getLogger("broker.sidecar.service")

RETRY_AFTER_UNAVAILABLE = 2
# The agent makes its proof just before asking, on the sidecar's own clock: a short window
# keeps the replay cache small (REPLAY_CACHE_SIZE / 15 s is over 6,000 proofs per second).
MINT_PROOF_AGE = 10
# Refusals that, with the fleet's ledger unreachable, mean "cannot ask for more", not "spent".
_SHARED_LIMITS = (
    ReasonCode.budget_exhausted,
    ReasonCode.rate_limited,
    ReasonCode.concurrency_limit,
)


class CredentialService(Redeemer, ServiceViews):
    def __init__(
        self,
        manifest: Manifest,
        runtime: Runtime,
        audit: AuditSink,
        ledger: UsageLedger,
        *,
        redact_key: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manifest = manifest
        self.runtime = runtime
        self.minter = Minter(runtime.session, runtime.signer)
        self.late = LateCredentials(runtime.session, audit, manifest.agent, clock)
        self.audit = audit
        self.ledger = ledger
        self._redact_key = redact_key
        self._clock = clock
        # Outstanding Vault-backed credentials: credential id -> (kind, vault id, action, expiry).
        self.vault_ids: dict[str, tuple[str, str, str, float]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.metrics: SidecarMetrics | None = None
        # Manifests by content hash, so a record written after an await is redacted under
        # the manifest that decided it even if a new version was switched in meanwhile.
        self._manifests: dict[str, Manifest] = {manifest.content_hash: manifest}
        # Set by the sidecar when the manifest comes from Vault: the watcher's state.
        self.manifest_state: Callable[[], dict[str, Any]] | None = None
        # Human approval gates (broker.sidecar.approvalgate) and each request's tool calls so far.
        self.approvals = ApprovalGate(
            lambda: self.manifest, runtime, audit, ledger, clock=clock, redact_key=redact_key
        )
        self.tool_calls = ToolCallLog()
        self.dpop_replay = ReplayCache()

    @staticmethod
    def new_request_id() -> str:
        return "req_" + _unique_id()[-16:]

    def scope(self) -> dict[str, Any]:
        """What this agent may do, for its planner: actions, inputs, limits, approval gates."""
        return scope_document(self.manifest, disabled=self.runtime.control.killed)

    def swap_manifest(self, new: Manifest) -> None:
        """Enforce ``new`` from the next request on; synchronous, so atomic on the event loop."""
        if len(self._manifests) >= 8:
            self._manifests = {self.manifest.content_hash: self.manifest}
        self._manifests[new.content_hash] = new
        self.ledger.configure(new)
        self.manifest = new
        if self.metrics is not None:
            self.metrics.manifest_changed(new.actions, new.budgets)

    async def report_outcome(
        self, credential_id: str, status: str, cost: Mapping[str, float]
    ) -> bool:
        """Free the slot and record the outcome; False for an unknown or released credential."""
        if not self.ledger.release(credential_id):
            return False
        if self.metrics is not None:
            self.metrics.outcome(credential_id, status)
        body = {
            "type": "outcome",
            "timestamp": iso_utc(self._clock()),
            "agent_id": self.manifest.agent,
            "credential_id": credential_id,
            "status": status,
            "cost": dict(cost),
        }
        await self.audit.append(body)
        return True

    def proof_key(self, proof: str, method: str, url: str) -> str:
        """The thumbprint of the key whose DPoP proof came with this request (RFC 9449);
        RequestError with the proof's ``dpop_*`` code when it does not hold."""
        request = ProofRequest(method, url)
        try:
            return check_proof(
                proof, request, now=self._clock(), replay=self.dpop_replay, max_age=MINT_PROOF_AGE
            )
        except ProofError as exc:
            if exc.code == "dpop_replay_cache_full":  # temporary: the ids age out in seconds
                raise BackendUnavailable(exc.detail, code=exc.code) from exc
            raise RequestError(exc.detail, code=exc.code) from exc

    def _dpop_missing(self, action: str, jkt: str | None) -> str | None:
        spec = self.manifest.actions.get(action)
        credential = spec.credential if spec is not None else None
        if jkt is None and isinstance(credential, JwtCredential) and credential.dpop == "required":
            return f"{action} requires a DPoP proof with the request, to bind its token to a key"
        return None

    async def request(self, req: ActionRequest, jkt: str | None = None) -> Reply:
        """Decide and answer; ``jkt`` binds a jwt credential to the key of the request's
        DPoP proof (already checked by ``proof_key``)."""
        failed = getattr(self.audit, "failed", "")
        if failed:
            # Nothing can be recorded, so nothing may be minted: refuse before touching Vault.
            raise AuditUnavailable(failed)
        if not self.runtime.available():
            await self.runtime.refresh_now()  # stale only because the loop ran late?
        # A replica that cannot mint while Vault answers (its control state is stale) takes
        # no slice of the fleet's limits: it would hold it, refusing, while the other replicas
        # run short. With Vault away the top-up fails and says so (ledger_unavailable).
        idle = self.runtime.mint_problem(None) if self.runtime.vault_ok else None
        ledger_problem = await self._fleet_ensure(req) if idle is None else None
        now = self._clock()
        decision = decide(
            req, self.manifest, self.ledger, now, agent_disabled=self.runtime.control.killed
        )
        if ledger_problem is not None:
            idle = ReasonCode.ledger_unavailable, ledger_problem
        if idle is not None and decision.reason in _SHARED_LIMITS:
            # The local slice is spent and more cannot be asked for (the fleet's store is
            # away, or this replica may not mint now): money fails closed, and says it is
            # temporary rather than "budget exhausted".
            return await self._unavailable(req, decision, now, idle[1], reason=idle[0])
        if decision.outcome is Outcome.deny:
            assert decision.reason is not None
            await self._record(req, decision, now, status="blocked")
            return refusal(decision, decision.reason, decision.detail, decision.retry_after)
        missing = self._dpop_missing(req.action, jkt)
        if missing is not None:
            reason = ReasonCode.dpop_required
            await self._record(
                req, decision, now, status="blocked", override=reason, detail=missing
            )
            return refusal(decision, reason, missing, None)
        spec = decision.credential
        problem = self.runtime.mint_problem(spec.kind if spec is not None else None)
        if problem is not None:
            return await self._unavailable(req, decision, now, problem[1], reason=problem[0])
        if decision.outcome is Outcome.pending_approval:
            return await self._pending(req, decision, now)
        return await self._allow(req, decision, now, jkt=jkt)

    async def _fleet_ensure(self, req: ActionRequest) -> str | None:
        """With a fleet ledger, top up the slices this call needs; the problem if it cannot."""
        if not isinstance(self.ledger, FleetLedger):
            return None
        costs = request_costs(self.manifest, req)
        for attempt in range(2):
            try:
                await self.ledger.ensure(costs, self._clock())
            except LeaseLost as exc:  # reclaimed while silent: a fresh lease, once
                if attempt:
                    return f"{exc.code}: {exc.detail}"
            except BrokerError as exc:
                return f"{exc.code}: {exc.detail}"
            else:
                return None
        return None

    async def _unavailable(
        self,
        req: ActionRequest,
        decision: Decision,
        now: float,
        detail: str,
        status: str = "blocked",
        *,
        extra: Mapping[str, Any] | None = None,
        reason: ReasonCode = ReasonCode.backend_unavailable,
    ) -> Reply:
        """Fail closed: record the refusal, answer 503 (backend_unavailable unless told
        otherwise) with Retry-After."""
        await self._record(
            req, decision, now, status=status, override=reason, detail=detail, extra=extra
        )
        return refusal(decision, reason, detail, RETRY_AFTER_UNAVAILABLE)

    async def _pending(self, req: ActionRequest, decision: Decision, now: float) -> Reply:
        """Store the approval request in Vault (fail closed), record it, answer 202."""
        try:
            stored = self.approvals.open_for(req, decision, now)
            approval = await bounded(stored, self.minter.deadline, "storing the approval")
        except BrokerError as exc:
            detail = f"the approval request could not be stored: {exc.detail}"
            return await self._unavailable(req, decision, now, detail)
        await self._record(
            req,
            decision,
            now,
            status="blocked",
            detail=approval.message,
            extra={"approval_id": approval.id},
        )
        self.approvals.announce_requested(approval)
        return Reply(202, self.approvals.pending_body(approval))

    async def _allow(
        self,
        req: ActionRequest,
        decision: Decision,
        now: float,
        extra: Mapping[str, Any] | None = None,
        *,
        jkt: str | None = None,
    ) -> Reply:
        spec = decision.credential
        assert spec is not None
        credential_id = _unique_id()
        expires_at = now + spec.ttl
        self.ledger.charge(decision, credential_id, expires_at, now)
        if isinstance(self.ledger, FleetLedger) and self.ledger.must_commit(decision, now):
            try:  # the spending is in the fleet's document before the credential exists
                await self.ledger.commit(self._clock())
            except BrokerError as exc:
                self.ledger.refund(decision, credential_id, now)
                detail = f"{exc.code}: {exc.detail}"
                reason = ReasonCode.ledger_unavailable
                return await self._unavailable(req, decision, now, detail, reason=reason)
        started = time.perf_counter()
        try:
            issued = await self._mint(req, decision, credential_id, now, extra, jkt=jkt)
        except BrokerError as exc:
            if self.metrics is not None:
                self.metrics.vault_error(f"mint_{spec.kind}")
            self.ledger.refund(decision, credential_id, now)
            # The id Vault's metadata carries, so a late credential always matches a record.
            extra = {**(extra or {}), "abandoned_credential_id": credential_id}
            return await self._unavailable(req, decision, now, exc.detail, "error", extra=extra)
        if self.metrics is not None:
            self.metrics.mint_latency(spec.kind, time.perf_counter() - started)
            self.metrics.credentials_issued(
                spec.kind, action=req.action, credential_id=credential_id
            )
        return Reply(
            200,
            {
                "outcome": Outcome.allow.value,
                "credential": issued.to_json(),
                "decision": decision_summary(decision),
            },
        )

    async def _mint(
        self,
        req: ActionRequest,
        decision: Decision,
        credential_id: str,
        now: float,
        extra: Mapping[str, Any] | None = None,
        *,
        jkt: str | None = None,
    ) -> IssuedCredential:
        spec = decision.credential
        assert spec is not None
        if spec.kind == "jwt":
            claims = jwt_claims(decision)
            if jkt is not None:  # bound to the agent's key: the record names the key too
                claims["jkt"] = jkt
                extra = {**(extra or {}), "dpop_jkt": jkt}
            # The record goes first: the token does not exist until it is durable.
            await self._record(
                req,
                decision,
                now,
                status="ok",
                credential=(credential_id, spec.kind, spec.ttl),
                extra=extra,
            )
            return self.minter.mint_jwt(jti=credential_id, now=now, ttl=spec.ttl, claims=claims)
        if spec.kind == "vault_token":
            meta = {
                "agent": decision.agent,
                "action": decision.action,
                "credential_id": credential_id,
            }
            call = self.minter.mint_vault_token(
                now=now,
                action=decision.action,
                policies=list(spec.policies),
                ttl=spec.ttl,
                uses=spec.uses,
                meta=meta,
            )
        else:
            call = self.minter.mint_dynamic(now=now, mount=spec.mount, role=spec.role, ttl=spec.ttl)
        on_late = self.late.handler(credential_id, decision.action)
        issued = await self.minter.within_deadline(call, f"{spec.kind} mint", on_late)
        try:
            await self._record(
                req,
                decision,
                now,
                status="ok",
                credential=(credential_id, spec.kind, issued.ttl),
                vault_id=issued.credential_id,
                extra=extra,
            )
        except AuditUnavailable:
            with contextlib.suppress(BrokerError):
                await revoke_in_vault(self.runtime.session, issued)
            raise
        self.runtime.dirty = True
        self.vault_ids[credential_id] = (
            spec.kind,
            issued.credential_id,
            decision.action,
            issued.expires_at,
        )
        return IssuedCredential(
            issued.kind,
            credential_id,
            issued.expires_at,
            issued.ttl,
            {**issued.secret, "vault_id": issued.credential_id},
        )

    async def _record(
        self,
        req: ActionRequest,
        decision: Decision,
        now: float,
        *,
        status: str,
        override: ReasonCode | None = None,
        detail: str | None = None,
        credential: tuple[str, str, int] | None = None,
        vault_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        reason = override or decision.reason
        manifest = self._manifests.get(decision.manifest_hash, self.manifest)
        action = manifest.actions.get(req.action)
        fields = action.redact if action is not None else ()
        outcome = Outcome.deny if override else decision.outcome
        inputs, digest = self._stored_inputs(req, decision, fields)
        calls = self.tool_calls.add(
            req.workflow, req.request_id, tool_call(req.action, status, decision, reason)
        )
        body = decision_record(
            req,
            decision,
            now,
            Recorded(outcome, reason, inputs, digest, calls, detail, credential, vault_id),
            extra,
        )
        started = time.perf_counter()
        # Every value in ``body`` is fresh (tool_calls is a copy): the trail may own it.
        await self.audit.append(body, owned=True)
        if credential is not None:
            self.ledger.recorded(credential[0])
        self.approvals.touched()  # budget alarms and gauges are checked after activity
        if self.metrics is not None:
            self.metrics.audit_append(time.perf_counter() - started)
            self.metrics.decision(req.action, outcome.value, reason.value if reason else None)

    def _stored_inputs(
        self, req: ActionRequest, decision: Decision, fields: tuple[str, ...]
    ) -> tuple[dict[str, Any], str]:
        """The inputs as recorded and their hash: over the redacted form when any input is
        redacted (a plain hash of the clear value would confirm a guess)."""
        if any(name in req.inputs for name in fields):
            inputs, digest = stored_inputs(
                decision.agent, req.action, req.inputs, fields, self._redact_key
            )
        else:
            inputs, digest = dict(req.inputs), decision.inputs_hash
        return inputs, digest
