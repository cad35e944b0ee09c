"""Revocation that offline verifiers see: a real sidecar (its issuer URL in the environment)
mints tokens naming their status list; after ``broker revoke --jti`` or ``broker kill``, the
token's bit at ``broker issuer`` flips within a second, and broker.verify (through the
status list, no Vault token), pyjwt-based and Node jose verifiers refuse the token.
Everything is real: OpenBao, the sidecar's AppRole, the issuer process, the runbook CLI."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.core.claims import StatusRef
from broker.core.errors import VerificationError
from broker.core.statuslist import CAPACITY
from broker.dev.devstack import DevServer
from broker.dev.issuerproc import issuer_token
from broker.status_client import StatusListClient
from broker.vault.bootstrap import bootstrap
from broker.vault.pki import fetch_ca_pem
from broker.verify import Verifier
from tests.gateways import IssuerProc, issuer_process, run_node
from tests.harness import Harness, root_client, running_sidecar, unique_agent, write_manifest
from tests.manifests_live import cli, security_operator

pytestmark = pytest.mark.integration

AUDIENCE = "https://tickets.example.com/api"
MANIFEST = """\
agent: {agent}
policy_version: status-1
system_owner: platform@acme.example
risk_owner: security@acme.example
actions:
  tickets.read:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: "{aud}", ttl: 5m}}
    inputs:
      id: {{type: string}}
  tickets.close:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: "{aud}", ttl: 5m, alg: ES256}}
    inputs:
      id: {{type: string}}
"""


@pytest.fixture(scope="module")
def issuer(openbao: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerProc]:
    log = tmp_path_factory.mktemp("issuer") / "issuer.log"
    root = root_client(openbao)
    bootstrap(root, [], addr=openbao.addr)  # the CA and the status-list key the issuer serves
    token = issuer_token(root, openbao.addr)
    root.adapter.close()
    with issuer_process(openbao.addr, token, log, refresh=0.2) as proc:
        yield proc


@pytest.fixture
async def drill(
    openbao: DevServer, issuer: IssuerProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    monkeypatch.setenv("BROKER_ISSUER_URL", issuer.url)
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("status"), aud=AUDIENCE))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        await _keys_served(issuer, set(h.sidecar.runtime.signer.serials.values()))
        yield h


async def _keys_served(issuer: IssuerProc, kids: set[str], timeout: float = 5.0) -> None:
    """Until the issuer's JWKS lists ``kids``: what a brand-new sidecar's first keys need
    (the issuer reads Vault every 0.2 s here) before a JWKS-only gateway can check them."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        jwks = await asyncio.to_thread(_get_json, f"{issuer.url}/.well-known/jwks.json")
        if kids <= {k["kid"] for k in jwks["keys"]}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the issuer did not serve {kids} within {timeout} s")


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback test issuer
        doc: dict[str, Any] = json.load(resp)
    return doc


async def _token(h: Harness, action: str) -> str:
    status, body, _ = await h.ask(action, {"id": "T-1"})
    assert status == 200, body
    return str(body["credential"]["token"])


def _verifier(openbao: DevServer, issuer: IssuerProc) -> Verifier:
    """A gateway with the CA and the issuer URL only: no Vault token, no control state."""
    status = StatusListClient(issuer.url, max_ttl=0)
    return Verifier([fetch_ca_pem(openbao.addr)], issuer=issuer.url, status=status)


async def _until_refused(verifier: Verifier, token: str, timeout: float = 5.0) -> float:
    """Seconds until the verifier refuses ``token`` as revoked (checked every 50 ms)."""
    start = time.monotonic()
    code = None
    while code is None and time.monotonic() - start < timeout:
        try:
            await asyncio.to_thread(verifier.verify, token, audience=AUDIENCE)
        except VerificationError as exc:
            code = exc.code
        else:
            await asyncio.sleep(0.05)
    assert code == "token_revoked", f"after {timeout} s: {code}"
    return time.monotonic() - start


def _node(issuer: IssuerProc, tokens: list[str]) -> list[dict[str, Any]]:
    cases = [{"token": t, "audience": AUDIENCE, "check_status": True} for t in tokens]
    return run_node(issuer.url, cases)


async def test_revoked_token_bit_flips_within_a_second(
    drill: Harness,
    openbao: DevServer,
    issuer: IssuerProc,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """`broker revoke --jti` on one EdDSA token: its bit flips in under 1 s; the other
    tokens (EdDSA and ES256) stay valid, for broker.verify and for Node jose."""
    revoked, kept, es256 = [
        await _token(drill, a) for a in ("tickets.read", "tickets.read", "tickets.close")
    ]
    verifier = _verifier(openbao, issuer)
    claims = verifier.verify(revoked, audience=AUDIENCE)
    assert claims.status is not None
    assert claims.status.uri.startswith(f"{issuer.url}/statuslists/")
    assert [r["ok"] for r in await asyncio.to_thread(_node, issuer, [revoked, kept, es256])] == [
        True
    ] * 3
    ops = str(tmp_path / "ops.jsonl")
    code = await cli(monkeypatch, security_operator(openbao), "revoke", "--jti", claims.jti,
                     "--vault-addr", openbao.addr, "--audit-log", ops)  # fmt: skip
    assert code == 0
    took = await _until_refused(verifier, revoked)
    assert took < 1.0, f"the bit flipped {took:.2f} s after the command"
    verifier.verify(kept, audience=AUDIENCE)
    verifier.verify(es256, audience=AUDIENCE)
    results = await asyncio.to_thread(_node, issuer, [revoked, kept, es256])
    assert [r["ok"] for r in results] == [False, True, True]
    assert results[0]["code"] == "TOKEN_REVOKED"


async def test_killed_agent_tokens_all_flip_within_a_second(
    drill: Harness,
    openbao: DevServer,
    issuer: IssuerProc,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """`broker kill --agent`: every token the agent holds, of both algorithms, is refused
    through the status list within a second."""
    tokens = [await _token(drill, a) for a in ("tickets.read", "tickets.close")]
    verifier = _verifier(openbao, issuer)
    ops = str(tmp_path / "ops.jsonl")
    code = await cli(monkeypatch, security_operator(openbao), "kill", "--agent",
                     drill.sidecar.manifest.agent, "--wait", "0", "--vault-addr", openbao.addr,
                     "--audit-log", ops)  # fmt: skip
    assert code == 0  # verified in Vault: the agent's logins and what they minted are gone
    for token in tokens:
        assert await _until_refused(verifier, token) < 1.0
    assert [r["ok"] for r in await asyncio.to_thread(_node, issuer, tokens)] == [False, False]


async def test_bad_status_references_are_clear_refusals(
    drill: Harness, openbao: DevServer, issuer: IssuerProc
) -> None:
    """Against the live issuer: an index past the end of a real list is
    status_index_out_of_range, a list that was never published is status_unknown."""
    claims = _verifier(openbao, issuer).verify(
        await _token(drill, "tickets.read"), audience=AUDIENCE
    )
    assert claims.status is not None
    client = StatusListClient(issuer.url)
    cases = [
        (StatusRef(claims.status.uri, CAPACITY), "status_index_out_of_range"),
        (StatusRef(f"{issuer.url}/statuslists/nobody/00", 0), "status_unknown"),
    ]
    for ref, code in cases:
        with pytest.raises(VerificationError) as info:
            await asyncio.to_thread(client.revoked, ref)
        assert info.value.code == code


async def _until_seen(h: Harness, jti: str, timeout: float = 5.0) -> None:
    start = time.monotonic()
    while jti not in h.sidecar.runtime.control.revoked_jtis:
        assert time.monotonic() - start < timeout, f"the sidecar never read the revocation of {jti}"
        await asyncio.sleep(0.02)


async def test_a_revocation_that_changes_none_of_its_bits_writes_no_status_list(
    drill: Harness,
    openbao: DevServer,
    issuer: IssuerProc,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Every sidecar reads every revocation; only the one whose token it names publishes
    its lists again (in a fleet, one revoked token cost every sidecar a read and a write)."""
    token = await _token(drill, "tickets.read")
    mine = _verifier(openbao, issuer).verify(token, audience=AUDIENCE).jti
    runtime = drill.sidecar.runtime
    await asyncio.sleep(0.5)  # the mint's own publication, if any, is behind us
    before = runtime.status_writes
    ops = str(tmp_path / "ops.jsonl")
    other = f"{mine[:16]}{'f' * 16}"  # this sidecar's form, a token it never issued
    for jti, writes in ((other, before), (mine, before + 1)):
        code = await cli(monkeypatch, security_operator(openbao), "revoke", "--jti", jti,
                         "--vault-addr", openbao.addr, "--audit-log", ops)  # fmt: skip
        assert code == 0
        await _until_seen(drill, jti)
        await asyncio.sleep(0.3)  # a write, if one were coming, would follow the read
        assert runtime.status_writes == writes, jti
    assert await _until_refused(_verifier(openbao, issuer), token) < 1.0
