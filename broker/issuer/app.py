"""``broker issuer``: the token issuer's public face for gateways (aiohttp).

Serves OpenID/OAuth discovery metadata, the JWKS of every live sidecar signing key (and of
the key that signs status lists), and the token status lists, all read from Vault. It holds
no state of its own (like SPIRE's OIDC discovery provider): run as many as you like behind
one URL. What it read is reused for ``refresh`` seconds, so a burst of gateways costs Vault
a few reads a second, and a key a sidecar published (or a revocation) shows here within
that time.

Every answer is JSON (a status list is a signed JWT); an unknown path, a bad parameter or an
unreachable Vault is a clear ``{"error", "detail"}`` with a 4xx or 503, never a stack trace."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from broker.core.errors import BackendUnavailable, BrokerError, NotFound
from broker.core.jwk import public_jwk
from broker.core.statuslist import STATUS_LIST_TTL, STATUS_LIST_TYP, encode_all, whole_list_revoked
from broker.issuer.keys import JWKS_MAX_AGE, Skipped, live_jwks, metadata
from broker.vault.jwks import IssuerView

log = logging.getLogger("broker.issuer.app")

Source = Callable[[], Awaitable[IssuerView]]
Signer = Callable[[bytes, str], Awaitable[bytes]]  # (signing input, key version) -> r||s
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METADATA_MAX_AGE = 300
MISS_RELOAD = 0.05  # an unknown status list forces a fresh read at most this often
STATUS_TOKEN_LIFETIME = 300  # exp of a Status List Token; ttl (1 s) says when to refetch
_AGENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
_LIST_ID = re.compile(r"[0-9a-f]{1,64}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Snapshot:
    view: IssuerView
    jwks: list[dict[str, Any]]
    status_kid: str | None
    loaded_at: float
    etag: str
    skipped: list[Skipped] = field(default_factory=list)
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)  # signed status lists


def _status_jwks(view: IssuerView) -> tuple[list[dict[str, Any]], str | None]:
    keys, latest = [], None
    for version, pem in sorted(view.status_keys.items(), key=lambda kv: int(kv[0])):
        key = load_pem_public_key(pem.encode())
        if isinstance(key, ec.EllipticCurvePublicKey):
            keys.append(public_jwk(key, kid=f"status-list-{version}", alg="ES256"))
            latest = version
    return keys, latest


class IssuerState:
    """What the issuer last read, refreshed at most every ``refresh`` seconds, one read at
    a time however many requests wait for it."""

    def __init__(
        self,
        issuer: str,
        source: Source,
        *,
        sign: Signer | None = None,
        refresh: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._source = source
        self._sign = sign
        self._refresh = refresh
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self, max_age: float | None = None) -> Snapshot:
        """The last read if younger than ``max_age`` (default: the refresh interval)."""
        age = self._refresh if max_age is None else max_age
        current = self._snapshot
        if current is not None and self._clock() - current.loaded_at < age:
            return current
        async with self._lock:
            current = self._snapshot
            if current is None or self._clock() - current.loaded_at >= age:
                self._snapshot = current = await self._load()
        return current

    async def _load(self) -> Snapshot:
        view = await self._source()
        now = self._clock()
        skipped: list[Skipped] = []
        try:
            ca = x509.load_pem_x509_certificate(view.ca_pem.encode())
            status_keys, status_kid = _status_jwks(view)
        except ValueError as exc:
            raise BackendUnavailable(
                f"Vault returned a CA or key that does not parse: {exc}"
            ) from exc
        keys = live_jwks(
            view.keys, ca, min_generation=view.min_generation, now=now, skipped=skipped
        )
        for s in skipped:
            log.warning("not serving key %s of %s: %s", s.kid, s.agent, s.why)
        keys += status_keys
        body = json.dumps({"keys": keys}, sort_keys=True).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return Snapshot(view, keys, status_kid, now, etag, skipped)

    async def status_token(self, agent: str, list_id: str) -> str:
        """The signed Status List Token for one list, built once per snapshot."""
        snap = await self.snapshot()
        cached = snap.tokens.get((agent, list_id))
        if cached is not None:
            return cached
        record = _record(snap, agent, list_id)
        if record is None:
            # A list a sidecar created a moment ago: read again, at most every MISS_RELOAD s.
            snap = await self.snapshot(max_age=MISS_RELOAD)
            record = _record(snap, agent, list_id)
        if record is None:
            raise NotFound(f"no status list {list_id} for agent {agent}")
        if self._sign is None or snap.status_kid is None:
            raise BackendUnavailable("no status-list signing key in Vault; run `broker bootstrap`")
        token = await self._signed(snap, agent, record, self._sign, snap.status_kid)
        snap.tokens[(agent, list_id)] = token
        return token

    async def _signed(
        self, snap: Snapshot, agent: str, record: dict[str, Any], sign: Signer, kid: str
    ) -> str:
        killed = agent in snap.view.killed
        if whole_list_revoked(record, killed=killed, min_generation=snap.view.min_generation):
            lst = encode_all(int(record["size"]))
        else:
            lst = str(record.get("lst", ""))
        now = int(self._clock())
        header = {"alg": "ES256", "kid": f"status-list-{kid}", "typ": STATUS_LIST_TYP}
        claims = {
            "iss": self.issuer,
            "sub": str(record["uri"]),
            "iat": now,
            "exp": now + STATUS_TOKEN_LIFETIME,
            "ttl": STATUS_LIST_TTL,
            "status_list": {"bits": 1, "lst": lst},
        }
        signing_input = ".".join(
            _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        ).encode()
        signature = await sign(signing_input, kid)
        return f"{signing_input.decode()}.{_b64(signature)}"


def _record(snap: Snapshot, agent: str, list_id: str) -> dict[str, Any] | None:
    record = ((snap.view.status.get(agent) or {}).get("lists") or {}).get(list_id)
    ok = isinstance(record, dict) and isinstance(record.get("size"), int)
    return record if ok else None


STATE: web.AppKey[IssuerState] = web.AppKey("issuer_state", IssuerState)
_DISCOVERY = "/.well-known/openid-configuration"


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


async def status_list(request: web.Request) -> web.Response:
    agent, list_id = request.match_info["agent"], request.match_info["list_id"]
    if not _AGENT.fullmatch(agent) or not _LIST_ID.fullmatch(list_id):
        raise NotFound(f"{request.path} is not a status list path (/statuslists/AGENT/LIST)")
    token = await request.app[STATE].status_token(agent, list_id)
    return web.Response(
        text=token,
        content_type="application/statuslist+jwt",
        headers={"Cache-Control": f"public, max-age={STATUS_LIST_TTL}"},
    )


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
    app.router.add_get("/statuslists/{agent}/{list_id}", status_list)
    app.router.add_get("/readyz", readyz)
    return app
