"""What the issuer serves: only published keys that Vault's CA certified for the publishing
agent, of an allowed kind, of a live generation, while a token they signed may still live."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from broker.core.jwk import KEY_LEEWAY, merge_published, published_until
from broker.issuer.keys import Skipped, live_jwks, metadata
from broker.sidecar.signing import ActionTokenSigner, PublishedKey
from tests.tokenfactory import AGENT, OTHER_AGENT, FakeCA

NOW = 1_900_000_000.0


@pytest.fixture
def ca() -> FakeCA:
    return FakeCA(clock=lambda: NOW)


def _published(ca: FakeCA, agent: str = AGENT, generation: int = 1) -> list[dict[str, Any]]:
    out: list[PublishedKey] = []
    signer = ActionTokenSigner(agent, ca.issue, publish=out.extend)
    signer.rotate(generation)
    return [k.to_json() for k in out]


def _docs(entries: list[dict[str, Any]], agent: str = AGENT) -> dict[str, Any]:
    return {agent: merge_published({}, entries, NOW)}


def test_genuine_keys_are_served_sorted_by_kid(ca: FakeCA) -> None:
    """Both of an agent's keys are served with kid, alg, use and x5c, sorted by kid."""
    keys = live_jwks(_docs(_published(ca)), ca.cert, min_generation=0, now=NOW)
    assert sorted(k["alg"] for k in keys) == ["ES256", "EdDSA"]
    assert [k["kid"] for k in keys] == sorted(k["kid"] for k in keys)
    assert all(k["use"] == "sig" and len(k["x5c"]) == 2 for k in keys)


def _tamper_x(jwk: dict[str, Any]) -> None:
    jwk["x"] = jwk["x"][:-2] + ("AA" if jwk["x"][-2:] != "AA" else "BB")


REFUSED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("JWK key is not the certificate's", lambda e: _tamper_x(e["jwk"]), "not the certificate"),
    ("alg outside the allowlist", lambda e: e["jwk"].update(alg="RS256"), "not allowed"),
    ("use is not sig", lambda e: e["jwk"].update(use="enc"), "kid or use"),
    ("no x5c", lambda e: e["jwk"].pop("x5c"), "no x5c"),
    ("x5c not base64", lambda e: e["jwk"].update(x5c=["%%%"]), "issued by the broker CA"),
    ("generation not an int", lambda e: e.update(gen="1"), "no integer generation"),
    ("not a record", lambda e: e.pop("jwk"), "not a published-key record"),
]


@pytest.mark.parametrize(("change", "why"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_tampered_records_are_not_served(
    ca: FakeCA, change: Callable[[dict[str, Any]], None], why: str
) -> None:
    """A record changed by a raw KV write is skipped, with the reason, never served."""
    entries = copy.deepcopy(_published(ca))
    change(entries[0])
    docs = {AGENT: {"keys": {e.get("jwk", {}).get("kid", "x"): e for e in entries}}}
    skipped: list[Skipped] = []
    keys = live_jwks(docs, ca.cert, min_generation=0, now=NOW, skipped=skipped)
    assert len(keys) == 1
    assert [s.why for s in skipped if why in s.why]


def test_key_published_under_another_agent_is_not_served(ca: FakeCA) -> None:
    """Agent B's login writing B's certified key under A's name publishes nothing."""
    skipped: list[Skipped] = []
    keys = live_jwks(
        _docs(_published(ca, OTHER_AGENT), AGENT),
        ca.cert,
        min_generation=0,
        now=NOW,
        skipped=skipped,
    )
    assert keys == []
    assert {s.why for s in skipped} == {"certificate does not name the publishing agent"}


def test_key_certified_by_another_ca_is_not_served(ca: FakeCA) -> None:
    """A key certified by any CA but the broker's is skipped."""
    other = FakeCA(clock=lambda: NOW)
    keys = live_jwks(_docs(_published(other)), ca.cert, min_generation=0, now=NOW)
    assert keys == []


def test_revoked_generation_is_removed_at_once(ca: FakeCA) -> None:
    """`rotate signing-key --revoke-old` raises min_generation: older keys go from the JWKS."""
    docs = _docs(_published(ca, generation=1) + _published(ca, generation=2))
    assert len(live_jwks(docs, ca.cert, min_generation=0, now=NOW)) == 4
    keys = live_jwks(docs, ca.cert, min_generation=2, now=NOW)
    assert len(keys) == 2


@pytest.mark.parametrize(
    ("not_after", "retire_after", "until"),
    [
        (1000, None, 1000 + KEY_LEEWAY),
        (1000, 400, 400 + KEY_LEEWAY),
        (1000, 2000, 1000 + KEY_LEEWAY),
    ],
)
def test_published_until(not_after: int, retire_after: int | None, until: int) -> None:
    """A key stays until its last token (or its certificate) expired, plus the leeway."""
    assert published_until({"not_after": not_after, "retire_after": retire_after}) == until


def test_retired_key_leaves_once_its_tokens_expired(ca: FakeCA) -> None:
    """merge drops a record whose last token expired more than KEY_LEEWAY ago."""
    entries = _published(ca)
    entries[0]["retire_after"] = int(NOW) + 10
    doc = merge_published({}, entries, NOW)
    assert len(doc["keys"]) == 2
    later = merge_published(doc, [], NOW + 10 + KEY_LEEWAY)
    assert len(later["keys"]) == 1


def test_metadata_points_at_the_jwks() -> None:
    """Discovery names the issuer, its jwks_uri and the two algorithms."""
    doc = metadata("http://127.0.0.1:8400")
    assert doc["issuer"] == "http://127.0.0.1:8400"
    assert doc["jwks_uri"] == "http://127.0.0.1:8400/.well-known/jwks.json"
    assert doc["id_token_signing_alg_values_supported"] == ["EdDSA", "ES256"]
