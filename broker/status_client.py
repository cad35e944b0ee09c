"""Check a token's entry in its status list, as a gateway without a Vault token does.

The list comes from the trusted issuer only (its URL must start with the issuer's
``/statuslists/``), as a Status List Token whose signature is checked against the issuer's
JWKS (ES256 only), whose ``sub`` is the list's own URL and which has not expired. A list is
reused for its ``ttl`` (at most ``max_ttl``). Any doubt fails closed with a
``VerificationError`` that says what went wrong: an unreachable issuer, a bad list, an
index outside the list."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

from broker.core.claims import StatusRef
from broker.core.errors import VerificationError
from broker.core.statuslist import STATUS_LIST_TYP, bit_at, decode_bits

Fetch = Callable[[str], str]


def _http_get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Accept": "application/statuslist+jwt"})  # noqa: S310 - the trusted issuer's URL
    with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
        body: bytes = resp.read(4 * 1024 * 1024)
    return body.decode("ascii")


class StatusListClient:
    def __init__(
        self,
        issuer: str,
        *,
        fetch: Fetch = _http_get,
        jwks: jwt.PyJWKClient | None = None,
        clock: Callable[[], float] = time.time,
        max_ttl: float = 60.0,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._prefix = f"{self.issuer}/statuslists/"
        self._fetch = fetch
        self._jwks = jwks or jwt.PyJWKClient(f"{self.issuer}/.well-known/jwks.json")
        self._clock = clock
        self._max_ttl = max_ttl
        self._cache: dict[str, tuple[bytes, float]] = {}  # uri -> (bits, reuse until)

    def revoked(self, ref: StatusRef) -> bool:
        """Whether the token's bit is set; raises VerificationError if that cannot be known."""
        bits = self._bits(ref.uri)
        try:
            return bit_at(bits, ref.index) == 1
        except IndexError as exc:
            raise VerificationError(str(exc), code="status_index_out_of_range") from exc

    def _bits(self, uri: str) -> bytes:
        if not uri.startswith(self._prefix):
            raise VerificationError(
                f"status list {uri!r} is not served by the issuer {self.issuer}",
                code="untrusted_status",
            )
        cached = self._cache.get(uri)
        now = self._clock()
        if cached is not None and now < cached[1]:
            return cached[0]
        claims = self._verified(self._download(uri), uri)
        try:
            bits = decode_bits(str(claims["status_list"]["lst"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationError(
                f"status list {uri} is malformed", code="status_invalid"
            ) from exc
        ttl = claims.get("ttl")
        reuse = min(float(ttl), self._max_ttl) if isinstance(ttl, int | float) else 0.0
        self._cache[uri] = (bits, now + reuse)
        return bits

    def _download(self, uri: str) -> str:
        try:
            return self._fetch(uri)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket
            code = "status_unknown" if exc.code == 404 else "status_unavailable"
            raise VerificationError(f"status list {uri}: HTTP {exc.code}", code=code) from exc
        except (OSError, ValueError) as exc:
            raise VerificationError(
                f"status list {uri} cannot be fetched: {type(exc).__name__}",
                code="status_unavailable",
            ) from exc

    def _verified(self, token: str, uri: str) -> dict[str, Any]:
        try:
            if jwt.get_unverified_header(token).get("typ") != STATUS_LIST_TYP:
                raise VerificationError(f"{uri} is not a {STATUS_LIST_TYP}", code="status_invalid")
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["ES256"],
                issuer=self.issuer,
                # Times are checked against the injected clock below, not pyjwt's.
                options={
                    "require": ["sub", "iat", "exp", "status_list"],
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise VerificationError(
                f"status list {uri} does not verify: {exc}", code="status_invalid"
            ) from exc
        if claims.get("sub") != uri:
            raise VerificationError(f"status list token is not for {uri}", code="status_invalid")
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int) or exp <= self._clock():
            raise VerificationError(f"status list {uri} has expired", code="status_invalid")
        return claims
