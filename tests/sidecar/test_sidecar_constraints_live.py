"""Input constraints through a live sidecar (real OpenBao): ``max_length`` and a pattern with
trailing text are refused with 403 constraint_violation, nothing is minted, the refusal is
on the audit trail; a value exactly at the limit gets its credential."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.dev.devstack import DevServer
from tests.harness import Harness, running_sidecar, unique_agent, write_manifest

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: constraints-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  mail.send:
    accountable: marketing-lead@acme.example
    credential: {{kind: jwt, audience: mail, ttl: 60s}}
    inputs:
      subject: {{type: string, max_length: 8}}
      ticket: {{type: string, pattern: "CS-[0-9]+", required: false}}
"""


@pytest.fixture
async def sidecar(openbao: DevServer, tmp_path: Path) -> AsyncIterator[Harness]:
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("limits")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        yield h


REFUSED = [
    pytest.param({"subject": "123456789"}, "subject", "max_length", id="one character over"),
    pytest.param({"subject": "x" * 5000}, "subject", "max_length", id="far over"),
    pytest.param({"subject": "ok", "ticket": "CS-1 x"}, "ticket", "pattern", id="trailing text"),
    pytest.param({"subject": "ok", "ticket": "CS-1\n"}, "ticket", "pattern", id="trailing newline"),
]


@pytest.mark.parametrize(("inputs", "name", "constraint"), REFUSED)
async def test_constraint_refusals_through_the_sidecar(
    sidecar: Harness, inputs: dict[str, Any], name: str, constraint: str
) -> None:
    """The sidecar answers 403 constraint_violation, mints nothing, and records the refusal."""
    status, body, _ = await sidecar.ask("mail.send", inputs)
    assert (status, body["reason"]) == (403, "constraint_violation")
    assert f"input {name!r}" in body["detail"]
    assert f"({constraint})" in body["detail"]
    assert "credential" not in body
    trail = [json.loads(line) for line in sidecar.audit_path.read_text().splitlines()]
    decisions = [r for r in trail if r.get("type") == "decision"]
    assert decisions[-1]["reason"] == "constraint_violation"
    assert not [r for r in decisions if r.get("outcome") == "allow"]


async def test_values_at_the_limit_are_minted(sidecar: Harness) -> None:
    """Exactly max_length characters, and a ticket that is the whole pattern: 200 with a token."""
    status, body, _ = await sidecar.ask("mail.send", {"subject": "12345678", "ticket": "CS-12"})
    assert status == 200, body
    assert body["credential"]["kind"] == "jwt"
