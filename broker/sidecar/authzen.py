"""OpenID AuthZEN 1.0 access evaluation on the sidecar, so a gateway (an API or MCP gateway,
Envoy, Kong...) can ask the broker for a decision in a standard shape.

``POST /access/v1/evaluation``, the batch ``POST /access/v1/evaluations``, and the PDP
metadata at ``GET /.well-known/authzen-configuration``. The mapping onto the manifest:

- ``subject.id`` must be this sidecar's agent (a sidecar serves one agent); another id is
  ``decision: false`` with code ``subject_mismatch``. ``subject.type`` is free.
- ``action.name`` is the manifest action (``stripe.refund``).
- ``resource.properties`` are the call's inputs (``{"ticket_id": ..., "amount_usd": ...}``);
  ``resource.type`` and ``resource.id`` are the gateway's own and are echoed, not used.
- ``context.broker`` (optional): ``charge`` (default false), ``workflow``, ``request_id``.

Without ``charge`` it decides only: the pure decision core against current usage, nothing
recorded, charged, minted, nor any approval opened, so asking is free and repeatable. With
``charge: true`` it is exactly ``POST /v1/credentials`` (recorded, charged, minted, an
approval opened when one is needed) and ``context.broker`` carries that reply, credential
included. ``decision`` is true only for an allow; a pending approval is false with outcome
``pending_approval``. Malformed requests are 400 with a stable ``error`` code."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from broker.core.decision import ActionRequest, decide
from broker.core.errors import PayloadTooLarge, RequestError
from broker.core.reasons import Outcome
from broker.sidecar.service import CredentialService

MAX_EVALUATIONS = 64
Text = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Properties = dict[Annotated[str, StringConstraints(max_length=128)], JsonValue]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Entity(_Frozen):
    type: Text
    id: Text
    properties: Properties = Field(default_factory=dict)


class AuthzAction(_Frozen):
    name: Text
    properties: Properties = Field(default_factory=dict)


class BrokerContext(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    charge: bool = False
    workflow: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")] | None = None
    request_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")] | None = (
        None
    )


class Evaluation(_Frozen):
    subject: Entity
    action: AuthzAction
    resource: Entity
    context: dict[str, JsonValue] = Field(default_factory=dict)


class EvaluationItem(_Frozen):
    """One batch item: what it names replaces the request's default whole."""

    subject: Entity | None = None
    action: AuthzAction | None = None
    resource: Entity | None = None
    context: dict[str, JsonValue] | None = None


class Options(_Frozen):
    evaluations_semantic: Literal["execute_all", "deny_on_first_deny", "permit_on_first_permit"] = (
        "execute_all"
    )


class EvaluationsRequest(EvaluationItem):
    evaluations: list[EvaluationItem] | None = Field(default=None, max_length=MAX_EVALUATIONS)
    options: Options = Field(default_factory=Options)


# -- decisions -----------------------------------------------------------------------------


def _answer(decision: bool, broker: dict[str, Any]) -> dict[str, Any]:
    detail = str(broker.get("detail") or broker.get("outcome") or "")
    return {
        "decision": decision,
        "context": {"reason_admin": {"en": detail}, "broker": broker},
    }


def _broker_context(ev: Evaluation) -> BrokerContext:
    raw = ev.context.get("broker", {})
    if not isinstance(raw, dict):
        raise RequestError("context.broker must be an object", code="invalid_field")
    try:
        return BrokerContext.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, "context.broker") from exc


async def evaluate(service: CredentialService, ev: Evaluation) -> dict[str, Any]:
    """One evaluation's AuthZEN answer."""
    opts = _broker_context(ev)
    agent = service.manifest.agent
    if ev.subject.id != agent:
        detail = f"this sidecar decides for agent {agent!r}, not {ev.subject.id!r}"
        return _answer(False, {"outcome": "deny", "reason": "subject_mismatch", "detail": detail})
    try:
        req = ActionRequest(
            action=ev.action.name,
            inputs=dict(ev.resource.properties),
            workflow=opts.workflow,
            request_id=opts.request_id or service.new_request_id(),
        )
    except ValidationError as exc:
        raise _validation_error(exc, "resource.properties") from exc
    if opts.charge:
        reply = await service.request(req)
        return _answer(reply.status == 200, {"charged": True, **reply.body})
    return _dry_run(service, req)


def _dry_run(service: CredentialService, req: ActionRequest) -> dict[str, Any]:
    """The pure decision against current usage: nothing recorded, charged or opened."""
    decision = decide(
        req,
        service.manifest,
        service.ledger,
        service.approvals.clock(),
        agent_disabled=service.runtime.control.killed,
    )
    body = {
        "charged": False,
        "outcome": str(decision.outcome),
        "reason": decision.reason and str(decision.reason),
        "approval_reason": decision.approval_reason,
        "detail": decision.detail,
        "policy_version": decision.policy_version,
        "manifest_hash": decision.manifest_hash,
        "charges": dict(decision.charges),
        "retry_after": decision.retry_after,
    }
    return _answer(decision.outcome is Outcome.allow, body)


def _merged(batch: EvaluationsRequest, item: EvaluationItem, index: int) -> Evaluation:
    parts = {
        "subject": item.subject or batch.subject,
        "action": item.action or batch.action,
        "resource": item.resource or batch.resource,
    }
    missing = [name for name, value in parts.items() if value is None]
    if missing:
        raise RequestError(
            f"evaluations[{index}] has no {', '.join(missing)} and the request sets no default",
            code="missing_field",
        )
    context = item.context if item.context is not None else (batch.context or {})
    return Evaluation.model_validate({**parts, "context": context})


async def evaluate_batch(service: CredentialService, batch: EvaluationsRequest) -> dict[str, Any]:
    if not batch.evaluations:  # no items: the request is one evaluation (AuthZEN 1.0 §7)
        return await evaluate(service, _merged(batch, EvaluationItem(), 0))
    items = [_merged(batch, item, i) for i, item in enumerate(batch.evaluations)]
    stop_on = {"deny_on_first_deny": False, "permit_on_first_permit": True}.get(
        batch.options.evaluations_semantic
    )
    answers = []
    for ev in items:  # in order: a charged item may change the next one's answer
        answers.append(await evaluate(service, ev))
        if answers[-1]["decision"] is stop_on:
            break
    return {"evaluations": answers}


# -- HTTP ----------------------------------------------------------------------------------


def _validation_error(exc: ValidationError, prefix: str = "") -> RequestError:
    first = exc.errors()[0]
    where = ".".join(filter(None, [prefix, *(str(p) for p in first["loc"])])) or "body"
    if first["type"] == "extra_forbidden":
        return RequestError(f"unknown field {where!r}", code="unknown_field")
    if first["type"] == "missing":
        return RequestError(f"missing field {where!r}", code="missing_field")
    return RequestError(f"field {where!r}: {first['msg']}", code="invalid_field")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def _body(request: web.Request, limit: int) -> dict[str, Any]:
    raw = await request.read()  # aiohttp stops at the app's client_max_size (413)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"body is not valid JSON: {exc}", code="malformed_json") from exc
    if not isinstance(doc, dict):
        raise RequestError("body must be a JSON object", code="invalid_body")
    return doc


def add_routes(app: web.Application, service_key: Any, max_body_key: Any) -> None:
    """Register the two AuthZEN routes on the sidecar's app."""

    async def one(request: web.Request) -> web.Response:
        doc = await _body(request, request.app[max_body_key])
        try:
            ev = Evaluation.model_validate(doc)
        except ValidationError as exc:
            raise _validation_error(exc) from exc
        return web.json_response(await evaluate(request.app[service_key], ev))

    async def many(request: web.Request) -> web.Response:
        doc = await _body(request, request.app[max_body_key])
        try:
            batch = EvaluationsRequest.model_validate(doc)
        except ValidationError as exc:
            raise _validation_error(exc) from exc
        return web.json_response(await evaluate_batch(request.app[service_key], batch))

    async def metadata(request: web.Request) -> web.Response:
        """PDP metadata (AuthZEN 1.0 §9): where the two endpoints are, as this request saw
        the sidecar; search endpoints are not offered."""
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {
                "policy_decision_point": base,
                "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
                "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
            }
        )

    app.router.add_post("/access/v1/evaluation", one)
    app.router.add_post("/access/v1/evaluations", many)
    app.router.add_get("/.well-known/authzen-configuration", metadata)
