"""The sidecar's HTTP surface (aiohttp): parse, call the service, render.

Every failure is rendered as ``{"error": code, "detail": text}`` with a stable code; no
handler can answer with a stack trace. Bodies are bounded (413 past ``max_body``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from aiohttp import web
from pydantic import JsonValue, ValidationError

from broker.core.decision import ActionRequest
from broker.core.errors import BrokerError, NotFound, PayloadTooLarge, RequestError, RequestTimeout
from broker.sidecar import authzen, tokenexchange
from broker.sidecar.api import CredentialRequest, OutcomeReport, openapi_document
from broker.sidecar.approvalgate import MAX_WAIT
from broker.sidecar.reply import Reply
from broker.sidecar.service import CredentialService

log = logging.getLogger("broker.sidecar.server")

SERVICE: web.AppKey[CredentialService] = web.AppKey("service", CredentialService)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY_TIMEOUT = 5.0


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BrokerError as exc:
        return _error(exc.http_status, exc.code, exc.detail)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, PayloadTooLarge.code, "request body is too large")
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        response = _error(exc.status, code, exc.reason)
        if "Allow" in exc.headers:  # RFC 9110: a 405 names the methods the resource allows
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal_error", "the sidecar failed; the incident is logged")


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > request.app[MAX_BODY]:
        raise PayloadTooLarge(f"request body is larger than {request.app[MAX_BODY]} bytes")
    try:
        async with asyncio.timeout(BODY_TIMEOUT):  # a body dribbled slowly holds nothing long
            raw = await request.read()
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {BODY_TIMEOUT:g} s") from exc
    try:
        return _DECODER.decode(raw.decode("utf-8"))  # JSON text is UTF-8 (RFC 8259)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"body is not valid JSON: {exc}", code="malformed_json") from exc
    except ValueError as exc:
        raise RequestError(f"body is not valid JSON: {exc}", code="malformed_json") from exc


def _not_json(constant: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and neither do we.
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return value


# Built once: ``json.loads`` with hooks builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def _validation_error(exc: ValidationError) -> RequestError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        return RequestError(f"unknown field {where!r}", code="unknown_field")
    if first["type"] == "missing":
        return RequestError(f"missing field {where!r}", code="missing_field")
    return RequestError(f"field {where!r}: {first['msg']}", code="invalid_field")


M = TypeVar("M", CredentialRequest, OutcomeReport)


def _parse(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise RequestError("body must be a JSON object", code="invalid_body")
    try:
        return model.model_validate(data, strict=False)
    except ValidationError as exc:
        raise _validation_error(exc) from exc


def _render(reply: Reply) -> web.Response:
    return web.json_response(reply.body, status=reply.status, headers=reply.headers)


async def post_credentials(request: web.Request) -> web.Response:
    body = _parse(CredentialRequest, await _json_body(request))
    try:
        req = ActionRequest(
            action=body.action,
            inputs=cast(dict[str, JsonValue], body.inputs),
            workflow=body.workflow,
            request_id=body.request_id or request.app[SERVICE].new_request_id(),
        )
    except ValidationError as exc:  # the core's own checks (finite numbers) are the last word
        raise _validation_error(exc) from exc
    return _render(await request.app[SERVICE].request(req, _proof_key(request)))


async def post_outcome(request: web.Request) -> web.Response:
    body = _parse(OutcomeReport, await _json_body(request))
    service = request.app[SERVICE]
    if not await service.report_outcome(
        request.match_info["credential_id"], body.status, body.cost
    ):
        raise NotFound(f"no outstanding credential {request.match_info['credential_id']!r}")
    return web.json_response({"recorded": True})


async def post_redeem(request: web.Request) -> web.Response:
    """``POST /v1/approvals/{id}/redeem[?wait=S]``, body ``{}`` or ``{"inputs": {...}}``."""
    body = await _json_body(request) if request.can_read_body else {}
    if not isinstance(body, dict) or set(body) - {"inputs"}:
        raise RequestError('body must be {} or {"inputs": {...}}', code="invalid_body")
    inputs = body.get("inputs")
    if inputs is not None and not isinstance(inputs, dict):
        raise RequestError("field 'inputs' must be an object", code="invalid_field")
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT:  # also refuses NaN
        raise RequestError(
            f"wait must be a number of seconds from 0 to {MAX_WAIT:g}", code="invalid_field"
        )
    service = request.app[SERVICE]
    jkt = _proof_key(request)
    return _render(await service.redeem(request.match_info["approval_id"], wait, inputs, jkt))


def _proof_key(request: web.Request) -> str | None:
    """The key of the request's DPoP proof (RFC 9449), checked, or None without a proof."""
    proofs = request.headers.getall("DPoP", [])
    if len(proofs) > 1:
        raise RequestError("a request carries at most one DPoP proof", code="dpop_malformed")
    if not proofs:
        return None
    return request.app[SERVICE].proof_key(proofs[0], request.method, str(request.url))


async def get_scope(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].scope())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "up"})


async def readyz(request: web.Request) -> web.Response:
    ready, detail = request.app[SERVICE].readiness()
    return web.json_response(detail, status=200 if ready else 503)


async def get_metrics(request: web.Request) -> web.Response:
    metrics = request.app[SERVICE].metrics
    if metrics is None:
        raise NotFound("metrics are not enabled on this sidecar")
    body, content_type = metrics.render()
    # aiohttp refuses a charset inside content_type=, so the header is set whole.
    return web.Response(body=body, headers={"Content-Type": content_type})


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a malformed header line, say) as an ERROR with
    a traceback, though the client already got its 400 and nothing in the sidecar failed.
    Such records become one WARNING line naming the kind of problem, without the header's
    text: it may hold a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = (
                "malformed HTTP request answered with %s (%s)",
                (
                    exc.code,
                    type(exc).__name__,
                ),
            )
            record.exc_info, record.exc_text = None, None
        return True


MALFORMED_FILTER = MalformedRequestFilter()


def build_app(service: CredentialService, *, max_body: int) -> web.Application:
    logging.getLogger("aiohttp.server").addFilter(MALFORMED_FILTER)  # idempotent: one object
    # aiohttp's own limit is set above ours so that our check answers first, with our code.
    app = web.Application(middlewares=[errors_middleware], client_max_size=max_body + 1)
    app[SERVICE] = service
    app[MAX_BODY] = max_body
    app.router.add_post("/v1/credentials", post_credentials)
    app.router.add_post("/v1/credentials/{credential_id}/outcome", post_outcome)
    app.router.add_post("/v1/approvals/{approval_id}/redeem", post_redeem)
    app.router.add_get("/v1/scope", get_scope)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_get("/metrics", get_metrics)
    authzen.add_routes(app, SERVICE, MAX_BODY)  # OpenID AuthZEN 1.0 access evaluation
    # Delegated grants and RFC 8693 token exchange for sub-agents.
    tokenexchange.add_routes(app, tokenexchange.desk_for(service), max_body)
    return app
