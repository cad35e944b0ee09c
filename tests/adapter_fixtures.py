"""A live sidecar for the adapter tests (the gateway tests' manifest, jwt credentials) and
a verifier that checks the tokens the tools receive against the broker CA in Vault."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from broker.client import Credential
from broker.core.claims import ActionClaims
from broker.dev.devstack import DevServer
from broker.vault.pki import fetch_ca_pem
from broker.verify import Verifier
from tests.harness import Harness, running_sidecar, unique_agent, write_manifest
from tests.mcp_fixtures import MANIFEST


@asynccontextmanager
async def sidecar(openbao: DevServer, tmp_path: Path) -> AsyncIterator[Harness]:
    path = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("adapt")))
    async with running_sidecar(openbao, path, tmp_path) as h:
        yield h


def verified(openbao: DevServer, cred: Credential, inputs: dict[str, Any]) -> ActionClaims:
    assert cred.token is not None
    return Verifier([fetch_ca_pem(openbao.addr)]).verify(
        cred.token, audience="zendesk-gateway", action="zendesk.get_ticket", inputs=inputs
    )


def records(h: Harness, **match: Any) -> list[dict[str, Any]]:
    found = [json.loads(x) for x in h.audit_path.read_text().splitlines()]
    return [r for r in found if all(r.get(k) == v for k, v in match.items())]
