"""``broker issuer``: the token issuer's public face for gateways (aiohttp).

Serves OpenID/OAuth discovery metadata, the JWKS of every live sidecar signing key, and the
token status lists, all read from Vault. It holds no state of its own (like SPIRE's OIDC
discovery provider): run as many as you like behind one URL. What it read is reused for
``refresh`` seconds, so a burst of gateways costs Vault a few reads a second, and a key a
sidecar published (or a revocation) shows here within that time.

Every answer is JSON; an unknown path, a bad parameter or an unreachable Vault is a clear
``{"error", "detail"}`` with a 4xx or 503, never a stack trace."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509

from broker.errors import BackendUnavailable, BrokerError
from broker.issuer_keys import JWKS_MAX_AGE, Skipped, live_jwks, metadata

log = logging.getLogger("broker.issuer")

# (agent docs, min_generation, CA PEM) as read from Vault; see broker.vault.jwks.
Source = Callable[[], Awaitable[tuple[dict[str, dict[str, Any]], int, str]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METADATA_MAX_AGE = 300


@dataclass(frozen=True)
class Snapshot:
    jwks: list[dict[str, Any]]
    loaded_at: float
    etag: str
    skipped: list[Skipped] = field(default_factory=list)


class IssuerState:
    """What the issuer last read, refreshed at most every ``refresh`` seconds, one read at
    a time however many requests wait for it."""

    def __init__(
        self,
        issuer: str,
        source: Source,
        *,
        refresh: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._source = source
        self._refresh = refresh
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self) -> Snapshot:
        current = self._snapshot
        if current is not None and self._clock() - current.loaded_at < self._refresh:
            return current
        async with self._lock:
            current = self._snapshot
            if current is None or self._clock() - current.loaded_at >= self._refresh:
                self._snapshot = current = await self._load()
        return current

    async def _load(self) -> Snapshot:
        docs, min_generation, ca_pem = await self._source()
        now = self._clock()
        skipped: list[Skipped] = []
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        keys = live_jwks(docs, ca, min_generation=min_generation, now=now, skipped=skipped)
        for s in skipped:
            log.warning("not serving key %s of %s: %s", s.kid, s.agent, s.why)
        body = json.dumps({"keys": keys}, sort_keys=True).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return Snapshot(jwks=keys, loaded_at=now, etag=etag, skipped=skipped)


STATE: web.AppKey[IssuerState] = web.AppKey("issuer_state", IssuerState)


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BrokerError as exc:
        return _error(exc.http_status, exc.code, exc.detail)
    except web.HTTPException as exc:
        if exc.status == 404:
            return _error(404, "not_found", f"nothing at {request.path}; see {_DISCOVERY}")
        code = {405: "method_not_allowed"}.get(exc.status, "http_error")
        return _error(exc.status, code, exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal_error", "the issuer failed; the incident is logged")


_DISCOVERY = "/.well-known/openid-configuration"


def _cached(body: Any, max_age: int, etag: str | None = None) -> web.Response:
    response = web.json_response(body)
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    if etag:
        response.etag = etag.strip('"')
    return response


async def discovery(request: web.Request) -> web.Response:
    return _cached(metadata(request.app[STATE].issuer), METADATA_MAX_AGE)


async def jwks(request: web.Request) -> web.StreamResponse:
    snap = await request.app[STATE].snapshot()
    if request.headers.get("If-None-Match") == snap.etag:
        return web.Response(status=304, headers={"ETag": snap.etag})
    return _cached({"keys": snap.jwks}, JWKS_MAX_AGE, snap.etag)


async def readyz(request: web.Request) -> web.Response:
    try:
        snap = await request.app[STATE].snapshot()
    except BackendUnavailable as exc:
        return _error(503, exc.code, exc.detail)
    return web.json_response({"ready": True, "keys": len(snap.jwks)})


def build_app(state: IssuerState) -> web.Application:
    app = web.Application(middlewares=[errors_middleware])
    app[STATE] = state
    app.router.add_get(_DISCOVERY, discovery)
    app.router.add_get("/.well-known/oauth-authorization-server", discovery)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/readyz", readyz)
    return app
