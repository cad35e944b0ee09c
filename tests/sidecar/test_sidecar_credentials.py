"""Each credential kind minted by a live sidecar does exactly what its scope says in the real
systems: a Vault token reads what its policy allows and nothing else, a database login
works until its lease is revoked, and an action token verifies with the Vault CA only."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import hvac
import jwt
import psycopg
import pytest
from cryptography import x509

from broker.core.canonical import inputs_digest
from broker.core.errors import VerificationError
from broker.dev.devstack import DevServer
from broker.dev.pgdev import PgCluster
from broker.vault.pki import fetch_ca_pem
from broker.vault.session import make_client
from broker.verify import Verifier
from tests.harness import (
    SCOPES,
    root_client,
    running_sidecar,
    setup_database,
    unique_agent,
    write_manifest,
)

pytestmark = pytest.mark.integration


async def test_vault_token_reads_its_policy_and_nothing_else(
    openbao: DevServer, tmp_path: Path
) -> None:
    """A stripe.refund token reads the secret its policy allows, is refused elsewhere, and is used up."""
    async with running_sidecar(openbao, SCOPES / "support-refund-agent.yaml", tmp_path) as h:
        status, body, _ = await h.ask("stripe.refund", {"ticket_id": "CS-1", "amount_usd": 20})
    assert status == 200, body
    cred = body["credential"]
    assert cred["kind"] == "vault_token"
    assert cred["policies"] == ["stripe-refund"]
    client = make_client(openbao.addr, cred["token"])
    secret = client.secrets.kv.v2.read_secret_version(
        path="demo/stripe-refund", mount_point="secret", raise_on_deleted_version=False
    )
    assert secret["data"]["data"]["note"].startswith("readable")
    with pytest.raises(hvac.exceptions.Forbidden):  # uses: 1 is spent; and it never had more
        client.secrets.kv.v2.read_secret_version(
            path="demo/stripe-refund", mount_point="secret", raise_on_deleted_version=False
        )


async def test_vault_token_cannot_read_outside_its_policy(
    openbao: DevServer, tmp_path: Path
) -> None:
    """A fresh single-use token's one use, spent on another path, is refused."""
    async with running_sidecar(openbao, SCOPES / "support-refund-agent.yaml", tmp_path) as h:
        _, body, _ = await h.ask("stripe.refund", {"ticket_id": "CS-2", "amount_usd": 5})
    client = make_client(openbao.addr, body["credential"]["token"])
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(
            path="demo/other", mount_point="secret", raise_on_deleted_version=False
        )


async def test_vault_token_is_a_child_of_the_sidecar_token(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Revoking the sidecar's own token revokes every child token it minted."""
    async with running_sidecar(openbao, SCOPES / "support-refund-agent.yaml", tmp_path) as h:
        _, body, _ = await h.ask("stripe.refund", {"ticket_id": "CS-3", "amount_usd": 5})
        root = root_client(openbao)
        accessor = body["credential"]["vault_id"]
        assert root.auth.token.lookup_accessor(accessor)["data"]["policies"] == ["stripe-refund"]
        root.auth.token.revoke_accessor(h.sidecar.runtime.session.accessor)
    with pytest.raises(hvac.exceptions.Forbidden):
        make_client(openbao.addr, body["credential"]["token"]).auth.token.lookup_self()


async def test_vault_token_expires_with_its_ttl(openbao: DevServer, tmp_path: Path) -> None:
    """The child token's TTL is the manifest's, as Vault reports it."""
    async with running_sidecar(openbao, SCOPES / "support-refund-agent.yaml", tmp_path) as h:
        _, body, _ = await h.ask("stripe.refund", {"ticket_id": "CS-4", "amount_usd": 5})
    info = root_client(openbao).auth.token.lookup_accessor(body["credential"]["vault_id"])["data"]
    assert 0 < info["ttl"] <= 30
    assert info["num_uses"] == 1
    assert info["renewable"] is False


async def test_dynamic_credential_logs_in_until_its_lease_is_revoked(
    openbao: DevServer, postgres: PgCluster, tmp_path: Path
) -> None:
    """A db.read_orders credential logs in to PostgreSQL and reads orders; revoked, it cannot."""
    setup_database(openbao, postgres)
    async with running_sidecar(openbao, SCOPES / "research-agent.yaml", tmp_path) as h:
        status, body, _ = await h.ask("db.read_orders", {"customer_id": "cus_ABC123"})
    assert status == 200, body
    cred = body["credential"]
    dsn = postgres.dsn(cred["username"], cred["password"])
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM payroll")
    root_client(openbao).sys.revoke_lease(cred["lease_id"])
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn).close()


async def test_jwt_verifies_with_broker_verify_and_with_plain_pyjwt(
    openbao: DevServer, tmp_path: Path
) -> None:
    """An action token verifies with broker.verify, and with pyjwt given only the Vault CA's word."""
    inputs = {"ticket_id": "CS-19422"}
    async with running_sidecar(openbao, SCOPES / "support-refund-agent.yaml", tmp_path) as h:
        _, body, _ = await h.ask("zendesk.get_ticket", inputs)
    token = body["credential"]["token"]
    ca_pem = fetch_ca_pem(openbao.addr)
    claims = Verifier([ca_pem]).verify(
        token, audience="zendesk-gateway", action="zendesk.get_ticket", inputs=inputs
    )
    assert (claims.agent, claims.accountable, claims.policy_version) == (
        "support-refund-agent",
        "support-lead@acme.example",
        "refund-policy-2026-02",
    )
    assert claims.expires_at - claims.issued_at <= 60
    # A gateway with nothing of ours: check the chain with cryptography, the token with pyjwt.
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    cert = x509.load_der_x509_certificate(
        base64.b64decode(jwt.get_unverified_header(token)["x5c"][0])
    )
    cert.verify_directly_issued_by(ca)
    payload = jwt.decode(token, cert.public_key(), algorithms=["EdDSA"], audience="zendesk-gateway")  # type: ignore[arg-type]
    assert payload["ibh"] == inputs_digest("support-refund-agent", "zendesk.get_ticket", inputs)
    with pytest.raises(VerificationError) as refused:
        Verifier([ca_pem]).verify(token, audience="zendesk-gateway", inputs={"ticket_id": "CS-1"})
    assert refused.value.code == "inputs_mismatch"


UNCAPPED = """\
agent: {agent}
policy_version: failclosed-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  zendesk.get_ticket:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: zendesk-gateway, ttl: 60s}}
    inputs:
      ticket_id: {{type: string}}
  stripe.refund:
    accountable: finance-ops@acme.example
    credential: {{kind: vault_token, policies: [stripe-refund], ttl: 30s}}
    inputs:
      ticket_id: {{type: string}}
      amount_usd: {{type: number}}
"""


async def test_vault_down_means_503_within_two_seconds_and_recovery(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Vault frozen mid-test: the sidecar refuses with 503 within 2 s, mints nothing, and recovers."""
    manifest = write_manifest(tmp_path, UNCAPPED.format(agent=unique_agent("failclosed")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        assert (await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"}))[0] == 200
        openbao.pause()
        try:
            start = asyncio.get_running_loop().time()
            while True:
                status, body, headers = await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"})
                if status == 503:
                    break
                assert asyncio.get_running_loop().time() - start < 2.0, (
                    "still minting with Vault down"
                )
                await asyncio.sleep(0.05)
            elapsed = asyncio.get_running_loop().time() - start
            ready = await h.raw("GET", "/readyz")
            refused_token = await h.ask("stripe.refund", {"ticket_id": "CS-1", "amount_usd": 5})
        finally:
            openbao.resume()
        assert elapsed < 2.0
        assert body["reason"] == "backend_unavailable"
        assert int(headers["Retry-After"]) >= 1
        assert ready[0] == 503
        assert refused_token[0] == 503
        for _ in range(100):
            if (await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"}))[0] == 200:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the sidecar did not recover after Vault came back")


async def test_unwritable_audit_trail_means_503_and_no_credential(
    openbao: DevServer, tmp_path: Path
) -> None:
    """The audit file removed underneath the sidecar: it refuses to mint (503) and says why."""
    async with running_sidecar(openbao, SCOPES / "support-refund-agent.yaml", tmp_path) as h:
        assert (await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"}))[0] == 200
        h.audit_path.unlink()
        jwt_status, jwt_body, _ = await h.ask("zendesk.get_ticket", {"ticket_id": "CS-2"})
        token_status, token_body, _ = await h.ask(
            "stripe.refund", {"ticket_id": "CS-2", "amount_usd": 5}
        )
    assert (jwt_status, jwt_body.get("error")) == (503, "audit_unavailable")
    assert (token_status, token_body.get("error")) == (503, "audit_unavailable")
    assert "credential" not in jwt_body
    assert "credential" not in token_body
    assert str(h.audit_path) in jwt_body["detail"]
