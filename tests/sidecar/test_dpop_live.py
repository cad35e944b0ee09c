"""DPoP (RFC 9449) against the live stack: a real sidecar on the session's OpenBao mints
tokens bound to the agent's key when the client holds one, the verifier trusts only Vault's
CA, and a manifest's ``dpop: required`` refuses a mint that comes without a proof."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from broker.client import AsyncBrokerClient, BrokerClient, Denied
from broker.core.dpop import ReplayCache
from broker.core.errors import VerificationError
from broker.dev.devstack import DevServer
from broker.dpop import DPoPKey
from broker.vault.pki import fetch_ca_pem
from broker.verify import DPoPProof, Verifier
from tests.harness import Harness, running_sidecar, unique_agent, write_manifest

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: dpop-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
    inputs:
      id: {{type: string}}
  pay.out:
    accountable: finance@acme.example
    credential: {{kind: jwt, audience: payments, ttl: 30s, alg: ES256, dpop: required}}
    inputs:
      amount: {{type: number, min: 0, max: 100}}
"""
TOOL = "https://things.example/v1/things/T-1"


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("dpop")))


def _records(h: Harness) -> list[dict[str, Any]]:
    lines = h.audit_path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "decision"]


def _refused(verifier: Verifier, token: str, code: str, dpop: DPoPProof | None) -> None:
    with pytest.raises(VerificationError) as info:
        verifier.verify(token, audience="things", dpop=dpop)
    assert info.value.code == code, info.value.detail


async def test_bound_token_verifies_only_with_its_holders_proof(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """The client with a key gets a DPoP token bound to it (cnf.jkt, on the record too); the
    gateway accepts it with the agent's proof, and refuses the token stolen without the key,
    with the thief's proof, a replayed proof, or a proof for another URL or method."""
    key, thief = DPoPKey.generate("ES256"), DPoPKey.generate("EdDSA")
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        async with AsyncBrokerClient(h.url, dpop=key) as client:
            cred = await client.credential("read.thing", {"id": "T-1"})
        records = _records(h)
    token = cred.token
    assert token is not None
    assert cred.secret["token_type"] == "DPoP"
    assert records[-1]["dpop_jkt"] == key.thumbprint
    gateway = Verifier([fetch_ca_pem(openbao.addr)])
    proof = key.proof("GET", TOOL, token)
    claims = gateway.verify(token, audience="things", dpop=DPoPProof(proof, "GET", TOOL))
    assert claims.key_thumbprint == key.thumbprint
    assert claims.jti == cred.credential_id
    _refused(gateway, token, "dpop_required", None)
    _refused(
        gateway, token, "dpop_key_mismatch", DPoPProof(thief.proof("GET", TOOL, token), "GET", TOOL)
    )
    _refused(gateway, token, "dpop_replayed", DPoPProof(proof, "GET", TOOL))
    other_url = DPoPProof(key.proof("GET", TOOL + "/delete", token), "GET", TOOL)
    _refused(gateway, token, "dpop_wrong_url", other_url)
    other_method = DPoPProof(key.proof("DELETE", TOOL, token), "GET", TOOL)
    _refused(gateway, token, "dpop_wrong_method", other_method)


async def test_manifest_requiring_dpop_refuses_a_mint_without_proof(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """pay.out says dpop: required: without a key the mint is refused with dpop_required (on
    the record, nothing minted); with a key it is minted, ES256, bound to that key. An action
    without the requirement still mints plain bearer tokens."""
    key = DPoPKey.generate("EdDSA")
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        async with AsyncBrokerClient(h.url) as plain:
            with pytest.raises(Denied) as refused:
                await plain.credential("pay.out", {"amount": 5})
            bearer = await plain.credential("read.thing", {"id": "T-2"})
        async with AsyncBrokerClient(h.url, dpop=key) as holder:
            bound = await holder.credential("pay.out", {"amount": 5})
        records = _records(h)
    assert refused.value.reason == "dpop_required"
    denied = [r for r in records if r["reason"] == "dpop_required"]
    assert len(denied) == 1
    assert (denied[0]["outcome"], denied[0]["credential_id"]) == ("deny", None)
    assert bearer.secret["token_type"] == "Bearer"
    assert bound.secret["token_type"] == "DPoP"
    assert bound.token is not None
    gateway = Verifier([fetch_ca_pem(openbao.addr)])
    url = "https://payments.example/v1/payouts"
    proof = DPoPProof(key.proof("POST", url, bound.token), "POST", url)
    claims = gateway.verify(bound.token, audience="payments", action="pay.out", dpop=proof)
    assert claims.key_thumbprint == key.thumbprint


def _late(key: DPoPKey) -> DPoPKey:
    """Another key of the agent's kind, whose clock is 30 s behind (the sidecar allows 10 s)."""
    return DPoPKey.generate(key.alg, clock=lambda: time.time() - 30)


def _mint_proof_cases(key: DPoPKey, url: str) -> list[tuple[str, list[tuple[str, str]], str]]:
    proof = key.proof("POST", url)
    return [
        ("proof for another URL", [("DPoP", key.proof("POST", url + "/x"))], "dpop_wrong_url"),
        ("proof for another method", [("DPoP", key.proof("PUT", url))], "dpop_wrong_method"),
        ("a replayed proof", [("DPoP", proof)], "dpop_replayed"),
        ("two proofs", [("DPoP", key.proof("POST", url)), ("DPoP", key.proof("POST", url))],
         "dpop_malformed"),
        ("a bearer token as its proof", [("DPoP", "eyJhbGciOiJub25lIn0.e30.")], "dpop_wrong_type"),
        ("a proof made 30 s ago", [("DPoP", _late(key).proof("POST", url))], "dpop_stale"),
    ]  # fmt: skip


async def test_bad_proof_on_a_mint_is_a_clear_400_and_changes_nothing(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """A mint whose proof does not hold answers 400 with the proof's code; no record, no token.
    (The replayed proof is one the sidecar accepted once already.)"""
    key = DPoPKey.generate("ES256")
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        url = f"{h.url}/v1/credentials"
        cases = _mint_proof_cases(key, url)
        body = {"action": "read.thing", "inputs": {"id": "T-3"}}
        async with h.http.post(url, json=body, headers=[cases[2][1][0]]) as first:
            assert first.status == 200, await first.text()
        before = len(_records(h))
        answers = []
        for _name, headers, _code in cases:
            async with h.http.post(url, json=body, headers=headers) as resp:
                answers.append((resp.status, (await resp.json())["error"]))
        after = len(_records(h))
    assert answers == [(400, code) for _, _, code in cases]
    assert after == before


async def test_sync_client_binds_its_tokens_over_a_unix_socket(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """The synchronous client on the sidecar's unix socket: its proof's URL (the socket's
    http://localhost) matches what the sidecar sees, so the token comes bound."""
    key = DPoPKey.generate("ES256")
    sock = tmp_path / "sidecar.sock"
    async with running_sidecar(openbao, manifest_path, tmp_path, listen=f"unix:{sock}"):
        with BrokerClient(f"unix://{sock}", dpop=key) as client:
            cred = await asyncio.to_thread(client.credential, "pay.out", {"amount": 1})
    assert cred.token is not None
    gateway = Verifier([fetch_ca_pem(openbao.addr)])
    url = "https://payments.example/v1/payouts"
    proof = DPoPProof(key.proof("POST", url, cred.token), "POST", url)
    assert (
        gateway.verify(cred.token, audience="payments", dpop=proof).key_thumbprint == key.thumbprint
    )


async def test_full_replay_cache_is_a_temporary_503_not_a_forgotten_id(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """With room for one live proof id, the second proof is refused with 503 (retry later)
    rather than an id dropped early; nothing is minted for it."""
    key = DPoPKey.generate("ES256")
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        assert h.sidecar.service is not None
        h.sidecar.service.dpop_replay = ReplayCache(capacity=1)
        url, body = f"{h.url}/v1/credentials", {"action": "read.thing", "inputs": {"id": "T-4"}}
        statuses = []
        for _ in range(2):
            async with h.http.post(url, json=body, headers={"DPoP": key.proof("POST", url)}) as r:
                statuses.append((r.status, (await r.json()).get("error")))
        minted = [r for r in _records(h) if r["outcome"] == "allow"]
    assert statuses == [(200, None), (503, "dpop_replay_cache_full")]
    assert len(minted) == 1
