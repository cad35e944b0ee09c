"""DPoP-bound tokens (RFC 9449) at gateways that verify by the issuer's JWKS: a Python gateway
(pyjwt's PyJWKClient, then ``broker.verify.check_binding``) and a Node one (jose alone, see
``tests/node/dpop.mjs``) accept the holder's proof and refuse the stolen token, the thief's
proof, a replay, another URL or method, another token's hash and an unsigned proof. Node's
RFC 7638 thumbprint of our keys is ours, for both key types.

Real OpenBao and a real ``broker issuer`` process, as in ``test_gateway_verifiers``."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from broker.core.canonical import inputs_digest
from broker.core.dpop import ReplayCache, token_hash
from broker.core.errors import VerificationError
from broker.dpop import DPoPKey
from broker.verify import DPoPProof, check_binding
from tests.gateways import run_node
from tests.issuer.test_gateway_verifiers import (  # noqa: F401 - gateway is a fixture
    ACTION,
    AGENT,
    AUDIENCE,
    INPUTS,
    Gateway,
    _get_json,
    gateway,
    pyjwt_verify,
)
from tests.tokenfactory import forge

pytestmark = pytest.mark.integration

TOOL = "https://orders.example.com/api/refunds"


def _bound(gw: Gateway, alg: str, key: DPoPKey | None) -> str:
    """A token minted by the Vault-certified signer, bound to ``key`` (None: unbound)."""
    return gw.signer.mint(
        time.time(), 120, alg=alg, audience=AUDIENCE, action=ACTION,
        accountable="alice@example.com", policy_version="v7",
        inputs_hash=inputs_digest(AGENT, ACTION, INPUTS), manifest_hash="sha256:" + "0" * 64,
        jkt=key.thumbprint if key else None,
    ).token  # fmt: skip


def _unsigned_proof(key: DPoPKey, token: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk}
    claims = {
        "jti": "x1",
        "htm": "POST",
        "htu": TOOL,
        "iat": int(time.time()),
        "ath": token_hash(token),
    }
    return forge(header, claims, None)


def test_metadata_names_the_proof_algorithms(gateway: Gateway) -> None:  # noqa: F811
    """Discovery says which algorithms sign DPoP proofs (RFC 9449 section 5.1)."""
    meta = _get_json(f"{gateway.url}/.well-known/openid-configuration")
    assert meta["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA"]


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_pyjwt_gateway_checks_the_binding(gateway: Gateway, alg: str) -> None:  # noqa: F811
    """PyJWKClient verifies the token; check_binding then accepts only the holder's fresh proof."""
    key, thief = DPoPKey.generate("ES256"), DPoPKey.generate("EdDSA")
    token = _bound(gateway, alg, key)
    jkt = pyjwt_verify(gateway.url, token)["cnf"]["jkt"]
    assert jkt == key.thumbprint
    cache = ReplayCache()
    proof = DPoPProof(key.proof("POST", TOOL, token), "POST", TOOL)
    check_binding(token, jkt, proof, now=time.time(), replay=cache)
    refusals = [
        (None, "dpop_required"),
        (DPoPProof(thief.proof("POST", TOOL, token), "POST", TOOL), "dpop_key_mismatch"),
        (proof, "dpop_replayed"),
        (DPoPProof(key.proof("POST", TOOL + "/all", token), "POST", TOOL), "dpop_wrong_url"),
        (DPoPProof(key.proof("GET", TOOL, token), "POST", TOOL), "dpop_wrong_method"),
    ]
    for presented, code in refusals:
        with pytest.raises(VerificationError) as info:
            check_binding(token, jkt, presented, now=time.time(), replay=cache)
        assert info.value.code == code


def test_jose_gateway_checks_the_binding(gateway: Gateway) -> None:  # noqa: F811
    """Node's jose verifies our proofs by their embedded key, and its thumbprint of an ES256
    and an EdDSA key is the cnf.jkt we minted; every hostile presentation is refused."""
    es, ed, thief = (DPoPKey.generate(a) for a in ("ES256", "EdDSA", "ES256"))
    t_es, t_ed, plain = (
        _bound(gateway, "ES256", es),
        _bound(gateway, "EdDSA", ed),
        _bound(gateway, "EdDSA", None),
    )
    used = es.proof("POST", TOOL, t_es)

    def case(token: str, proof: str | None, htm: str = "POST", htu: str = TOOL) -> dict[str, Any]:
        return {"token": token, "audience": AUDIENCE, "proof": proof, "htm": htm, "htu": htu}

    cases = [
        (case(t_es, used), "ok"),
        (case(t_ed, ed.proof("POST", TOOL, t_ed)), "ok"),
        (case(t_es, used), "DPOP_REPLAYED"),
        (case(t_es, None), "DPOP_REQUIRED"),
        (case(t_es, thief.proof("POST", TOOL, t_es)), "DPOP_KEY_MISMATCH"),
        (case(t_es, es.proof("POST", TOOL + "/all", t_es)), "DPOP_WRONG_URL"),
        (case(t_es, es.proof("GET", TOOL, t_es)), "DPOP_WRONG_METHOD"),
        (case(t_es, es.proof("POST", TOOL, t_ed)), "DPOP_WRONG_ATH"),
        (case(t_es, _unsigned_proof(es, t_es)), "ERR_JOSE_ALG_NOT_ALLOWED"),
        (case(plain, ed.proof("POST", TOOL, plain)), "TOKEN_NOT_BOUND"),
    ]
    results = run_node(gateway.url, [c for c, _ in cases], script="dpop.mjs")
    got = [r.get("code", "ok") if not r["ok"] else "ok" for r in results]
    assert got == [want for _, want in cases], json.dumps(results, indent=1)
    assert [results[0]["jkt"], results[1]["jkt"]] == [es.thumbprint, ed.thumbprint]
