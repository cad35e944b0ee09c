"""`broker rotate signing-key --revoke-old` against a live issuer: the old generation's keys
leave the JWKS, and every bit of their status lists is set, within a second, with no word
from the sidecar. Runs on an OpenBao of its own: raising the revoked-below generation in the
session's server would revoke every other test's keys."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from broker.core.claims import StatusRef
from broker.core.controlstate import ControlState
from broker.dev.devstack import DevServer, start_dev_server
from broker.dev.issuerproc import issuer_token
from broker.sidecar.signing import ActionTokenSigner, PublishedKey
from broker.status_client import StatusListClient
from broker.vault.bootstrap import AgentGrant, bootstrap
from broker.vault.jwks import publish_keys, publish_status
from broker.vault.layout import SECURITY_OPERATOR_POLICY
from broker.vault.pki import sign_csr
from broker.vault.session import make_client
from tests.gateways import issuer_process

pytestmark = pytest.mark.integration

AGENT = "revoke-old-agent"


@pytest.fixture(scope="module")
def own_bao() -> Iterator[DevServer]:
    server = start_dev_server()
    try:
        yield server
    finally:
        server.stop()


def _jwks_kids(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/.well-known/jwks.json", timeout=5) as resp:  # noqa: S310
        doc: dict[str, Any] = json.load(resp)
    return {k["kid"] for k in doc["keys"]}


def test_revoke_old_removes_keys_and_flips_lists_at_once(
    own_bao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generation-1 keys are served; after --revoke-old they are gone from the JWKS and
    their status list reads revoked within a second."""
    root = make_client(own_bao.addr, own_bao.root_token)
    bootstrap(root, [AgentGrant(AGENT)], addr=own_bao.addr)
    operator = root.auth.token.create(policies=[SECURITY_OPERATOR_POLICY], ttl="1h")
    with issuer_process(
        own_bao.addr, issuer_token(root, own_bao.addr), tmp_path / "i.log"
    ) as issuer:

        def publish(keys: list[PublishedKey]) -> None:
            publish_keys(root, AGENT, [k.to_json() for k in keys], time.time(), own_bao.addr)

        signer = ActionTokenSigner(
            AGENT,
            lambda csr, ttl, alg: sign_csr(root, AGENT, csr, ttl, own_bao.addr, alg=alg),
            issuer=issuer.url,
            publish=publish,
        )
        signer.rotate(1)
        assert signer.status is not None
        lists = signer.status.snapshot(ControlState(agent=AGENT), time.time())
        publish_status(root, AGENT, lists, time.time(), own_bao.addr)
        old = set(signer.serials.values())
        deadline = time.monotonic() + 5
        while not old <= _jwks_kids(issuer.url):
            assert time.monotonic() < deadline, "generation-1 keys never served"
            time.sleep(0.05)
        ref = StatusRef(next(iter(signer.status.lists.values())).uri, 0)
        status = StatusListClient(issuer.url, max_ttl=0)
        assert status.revoked(ref) is False
        monkeypatch.setenv("VAULT_TOKEN", operator["auth"]["client_token"])
        assert main(["rotate", "signing-key", "--revoke-old", "--vault-addr", own_bao.addr]) == 0
        start = time.monotonic()
        while old & _jwks_kids(issuer.url) or not status.revoked(ref):
            assert time.monotonic() - start < 1.0, "old keys still served after 1 s"
            time.sleep(0.05)
    root.adapter.close()
