"""RFC 8693 token exchange for sub-agents, and the delegation routes of the sidecar.

``POST /v1/token`` (form-encoded, as OAuth token endpoints are): ``grant_type`` is
``urn:ietf:params:oauth:grant-type:token-exchange``, ``subject_token`` a grant from
``POST /v1/delegations`` with ``subject_token_type`` ``urn:agent-credential-broker:token-type:grant``,
``scope`` the one action wanted, and the extension parameters ``inputs`` (a JSON object: the
call's inputs, bound into the token as for any credential), ``workflow`` and ``request_id``.
``audience`` (or ``resource``), when given, must be the action's audience. The answer is
RFC 8693's (``access_token``, ``issued_token_type``, ``token_type``, ``expires_in``) plus the
``act`` chain; errors are RFC 6749's ``error`` and ``error_description`` with our stable
``reason`` beside them.

The request is decided by the same ``decide`` as any other, against the grant's scope, with
budgets from the grant's own ledger (its carve) and rates and concurrency from the agent's
(``SharedUsage``: a sub-agent's calls count against the agent's allowance); it is recorded (with the chain) before the token is signed; the token
speaks for the root agent (``sub``) and names the sub-agents in ``act``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from aiohttp import web
from pydantic import JsonValue, ValidationError

from broker.core.credids import unique_id
from broker.core.decision import ActionRequest, Decision, decide
from broker.core.delegation import (
    ACCESS_TOKEN_TYPE,
    EXCHANGE_GRANT_TYPE,
    GRANT_TOKEN_TYPE,
    Grant,
    GrantRefusal,
    GrantRequest,
    actor_claim,
)
from broker.core.errors import BrokerError, PayloadTooLarge, RequestError
from broker.core.limits import UsageLedger
from broker.core.manifest import JwtCredential
from broker.core.reasons import REASON_HTTP_STATUS, Outcome, ReasonCode
from broker.sidecar.decisionrecord import jwt_claims
from broker.sidecar.delegation import DelegationDesk
from broker.sidecar.reply import Reply
from broker.sidecar.service import CredentialService
from broker.vault.delegations import DelegationStore

JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URI
_FIELDS = frozenset(
    {
        "grant_type",
        "subject_token",
        "subject_token_type",
        "requested_token_type",
        "scope",
        "audience",
        "resource",
        "inputs",
        "workflow",
        "request_id",
    }
)


def _oauth_error(status: int, error: str, description: str, reason: str) -> Reply:
    return Reply(status, {"error": error, "error_description": description, "reason": reason})


def _delegation(grant: Grant) -> dict[str, Any]:
    return {
        "grant_id": grant.id,
        "sub_agent": grant.sub_agent,
        "chain": [{"sub": a.sub, "grant": a.grant} for a in grant.chain],
    }


class TokenExchange:
    def __init__(self, desk: DelegationDesk) -> None:
        self.desk = desk
        self.service: CredentialService = desk.service

    async def exchange(self, form: dict[str, str]) -> Reply:
        problem = _form_problem(form)
        if problem is not None:
            return problem
        now = self.desk.clock()
        await self.desk.sweep(now)
        grant = self.desk.authenticate(form["subject_token"], now)
        if isinstance(grant, GrantRefusal):
            return _oauth_error(400, "invalid_grant", grant.detail, grant.reason.value)
        try:
            inputs = json.loads(form.get("inputs") or "{}")
            req = ActionRequest(
                action=form["scope"],
                inputs=cast(dict[str, JsonValue], inputs),
                workflow=form.get("workflow") or None,
                request_id=form.get("request_id") or self.service.new_request_id(),
            )
        except (ValueError, ValidationError) as exc:
            detail = f"inputs must be a JSON object of finite values ({type(exc).__name__})"
            return _oauth_error(400, "invalid_request", detail, "invalid_inputs")
        target = form.get("audience") or form.get("resource")
        spec = grant.scope.actions.get(req.action)
        if target and spec is not None:
            audience = getattr(spec.credential, "audience", None)
            if target != audience:
                detail = f"{req.action} tokens are for {audience!r}, not {target!r}"
                return _oauth_error(400, "invalid_target", detail, "invalid_target")
        return await self._decided(req, grant, now)

    async def _decided(self, req: ActionRequest, grant: Grant, now: float) -> Reply:
        usage = SharedUsage(self.desk.ledgers[grant.id], self.service.ledger)
        killed = self.service.runtime.control.killed
        decision = decide(req, grant.scope, usage, now, agent_disabled=killed)
        extra = {"delegation": _delegation(grant)}
        if decision.outcome is Outcome.pending_approval:
            detail = "a delegated grant cannot wait for a human approval; the parent must ask"
            decision = replace(
                decision, outcome=Outcome.deny, reason=ReasonCode.approval_required, detail=detail
            )
        if decision.outcome is Outcome.deny:
            assert decision.reason is not None
            await self.service._record(req, decision, now, status="blocked", extra=extra)
            return self._denied(decision.reason, decision.detail, decision.retry_after)
        problem = self.service.runtime.mint_problem("jwt")
        if problem is not None:
            await self.service._record(
                req, decision, now, status="blocked", override=problem[0], detail=problem[1]
            )
            return self._denied(problem[0], problem[1], 2.0)
        return await self._mint(req, decision, grant, now, extra)

    def _denied(self, reason: ReasonCode, detail: str, retry_after: float | None) -> Reply:
        status = REASON_HTTP_STATUS.get(reason, 403)
        error = "invalid_scope" if reason is ReasonCode.unknown_action else "access_denied"
        if status in (429, 503):
            error = "temporarily_unavailable"
        reply = _oauth_error(400 if status == 403 else status, error, detail, reason.value)
        if retry_after:
            reply.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        return reply

    async def _mint(
        self,
        req: ActionRequest,
        decision: Decision,
        grant: Grant,
        now: float,
        extra: dict[str, Any],
    ) -> Reply:
        spec = decision.credential
        assert isinstance(spec, JwtCredential)
        # A token never outlives the grant it was minted from.
        ttl = max(1, min(spec.ttl, int(grant.expires_at - now)))
        credential_id = unique_id()
        ledger, agent = self.desk.ledgers[grant.id], self.service.ledger
        ledger.charge(decision, credential_id, now + ttl, now)
        calls_only = _Calls(decision.action)
        agent.charge(calls_only, credential_id, now + ttl, now)  # the agent's rates and slots
        try:  # the record goes first: the token does not exist until it is durable
            await self.service._record(
                req, decision, now, status="ok", credential=(credential_id, "jwt", ttl), extra=extra
            )
            claims = {**jwt_claims(decision), "actor": actor_claim(grant.chain)}
            issued = self.service.minter.mint_jwt(
                jti=credential_id, now=now, ttl=ttl, claims=claims
            )
        except (BrokerError, RuntimeError):
            ledger.refund(decision, credential_id, now)
            agent.refund(calls_only, credential_id, now)
            raise
        return Reply(
            200,
            {
                "access_token": issued.secret["token"],
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": issued.ttl,
                "scope": req.action,
                "credential_id": credential_id,
                "act": claims["actor"],
            },
        )


@dataclass(frozen=True)
class _Calls:
    """A charge of no budget: one call on the agent's rate logs and one concurrency slot."""

    action: str
    charges: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SharedUsage:
    """What ``decide`` reads for a delegated call: budgets from the grant's own ledger (its
    carve), rates and concurrency from the agent's, which counts the calls of the agent and of
    all its sub-agents together, so a grant never adds calls to the agent's allowance."""

    grant: UsageLedger
    agent: UsageLedger

    def budget_used(self, name: str, now: float) -> float:
        return self.grant.budget_used(name, now)

    def rate_count(self, key: str, per: float, now: float) -> int:
        return self.agent.rate_count(key, per, now)

    def retry_after(self, key: str, limit: int, per: float, now: float) -> float:
        return self.agent.retry_after(key, limit, per, now)

    def in_flight(self, now: float) -> int:
        return self.agent.in_flight(now)

    def slot_frees_in(self, now: float) -> float | None:
        return self.agent.slot_frees_in(now)


def _form_problem(form: dict[str, str]) -> Reply | None:
    unknown = sorted(set(form) - _FIELDS)
    if unknown:
        return _oauth_error(
            400, "invalid_request", f"unknown parameter {unknown[0]!r}", "unknown_field"
        )
    if form.get("grant_type") != EXCHANGE_GRANT_TYPE:
        detail = f"grant_type must be {EXCHANGE_GRANT_TYPE}"
        return _oauth_error(400, "unsupported_grant_type", detail, "unsupported_grant_type")
    for name in ("subject_token", "scope"):
        if not form.get(name):
            return _oauth_error(400, "invalid_request", f"missing {name}", "missing_field")
    if form.get("subject_token_type") != GRANT_TOKEN_TYPE:
        detail = f"subject_token_type must be {GRANT_TOKEN_TYPE}"
        return _oauth_error(400, "invalid_request", detail, "invalid_field")
    wanted = form.get("requested_token_type")
    if wanted and wanted not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
        detail = f"requested_token_type must be {ACCESS_TOKEN_TYPE}"
        return _oauth_error(400, "invalid_request", detail, "invalid_field")
    return None


_NOT_FORM = "the body must be application/x-www-form-urlencoded (RFC 6749 3.2)"


def _repeated(posted: Mapping[str, Any]) -> Reply | None:
    """RFC 6749 3.2: no parameter twice, in the endpoint's own error shape."""
    names = [name for name, _ in posted.items()]  # a MultiDict: one pair per value
    twice = sorted({name for name in names if names.count(name) > 1})
    if not twice:
        return None
    return _oauth_error(
        400, "invalid_request", f"parameter {twice[0]!r} is repeated", "invalid_body"
    )


# -- routes --------------------------------------------------------------------------------

DESK: web.AppKey[DelegationDesk] = web.AppKey("delegations", DelegationDesk)


def _render(reply: Reply) -> web.Response:
    headers = {**reply.headers, "Cache-Control": "no-store"}  # RFC 6749 5.1: tokens
    return web.json_response(reply.body, status=reply.status, headers=headers)


async def _bounded_read(request: web.Request, max_body: int) -> bytes:
    if request.content_length is not None and request.content_length > max_body:
        raise PayloadTooLarge(f"request body is larger than {max_body} bytes")
    return await request.read()


def desk_for(service: CredentialService) -> DelegationDesk:
    """The sidecar's desk, revoking through its own Vault session."""
    runtime = service.runtime
    agent = service.manifest.agent
    store = DelegationStore(lambda: runtime.sync_client, agent, runtime.session.addr)
    return DelegationDesk(service, store, clock=service.approvals.clock)


def add_routes(app: web.Application, desk: DelegationDesk, max_body: int) -> None:
    """``POST /v1/delegations``, ``GET /v1/delegations``, ``POST /v1/delegations/{id}/revoke``
    and ``POST /v1/token``."""
    app[DESK] = desk
    exchange = TokenExchange(desk)

    async def create(request: web.Request) -> web.Response:
        raw = await _bounded_read(request, max_body)
        try:
            req = GrantRequest.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise RequestError(f"field {where!r}: {first['msg']}", code="invalid_field") from exc
        request_id = request.headers.get("X-Request-Id") or desk.service.new_request_id()
        return _render(await desk.grant(req, request_id[:128]))

    async def listing(request: web.Request) -> web.Response:
        await desk.sweep(desk.clock())
        return web.json_response(desk.listing(desk.clock()))

    async def revoke(request: web.Request) -> web.Response:
        raw = await _bounded_read(request, max_body)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise RequestError("body is not valid JSON", code="malformed_json") from exc
        reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
        request_id = desk.service.new_request_id()
        reply = await desk.revoke(request.match_info["grant_id"], reason[:256], request_id)
        return _render(reply)

    async def token(request: web.Request) -> web.Response:
        await _bounded_read(request, max_body)
        if request.content_type != "application/x-www-form-urlencoded":  # no file parts
            return _render(_oauth_error(400, "invalid_request", _NOT_FORM, "invalid_body"))
        try:
            posted = await request.post()
        except ValueError:
            return _render(_oauth_error(400, "invalid_request", _NOT_FORM, "invalid_body"))
        problem = _repeated(posted)
        if problem is not None:
            return _render(problem)
        return _render(await exchange.exchange({k: str(v) for k, v in posted.items()}))

    app.router.add_post("/v1/delegations", create)
    app.router.add_get("/v1/delegations", listing)
    app.router.add_post("/v1/delegations/{grant_id}/revoke", revoke)
    app.router.add_post("/v1/token", token)
