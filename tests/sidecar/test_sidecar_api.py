"""The agent API through a live sidecar: every refusal reason of the decision core reaches
the agent with its status, and malformed requests get stable 4xx codes, never a 500."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from broker.dev.devstack import DevServer
from broker.sidecar.api import openapi_document
from broker.vault.control import control_written
from broker.vault.kv import kv_write
from tests.harness import REPO, root_client, running_sidecar, unique_agent, write_manifest

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: api-test-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
budgets:
  usd: {{limit: 100, per: 1d, unit: usd}}
concurrency: 3
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
    inputs:
      id: {{type: string, pattern: '^T-[0-9]+$'}}
  pay.out:
    accountable: finance@acme.example
    credential: {{kind: jwt, audience: payments, ttl: 60s}}
    inputs:
      usd: {{type: number, min: 0, max: 80}}
    cost: {{usd: inputs.usd}}
    approval: {{when: {{usd: {{gt: 50}}}}, approvers: [finance@acme.example], reason: big_payment}}
  ping.it:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: ping, ttl: 60s}}
    rate: {{limit: 1, per: 1m}}
"""

Step = tuple[str, dict[str, Any]]

# (name, setup requests, final request, expected status, expected outcome, expected reason)
REFUSALS: list[tuple[str, list[Step], Step, int, str, str]] = [
    ("unknown_action", [], ("deploy.production", {}), 403, "deny", "unknown_action"),
    (
        "invalid_inputs",
        [],
        ("read.thing", {"id": "T-1", "extra": 1}),
        403,
        "deny",
        "invalid_inputs",
    ),
    (
        "constraint_violation",
        [],
        ("read.thing", {"id": "X-1"}),
        403,
        "deny",
        "constraint_violation",
    ),
    (
        "budget_exhausted",
        [("pay.out", {"usd": 50}), ("pay.out", {"usd": 40})],
        ("pay.out", {"usd": 20}),
        403,
        "deny",
        "budget_exhausted",
    ),
    ("rate_limited", [("ping.it", {})], ("ping.it", {}), 429, "deny", "rate_limited"),
    (
        "concurrency_limit",
        [
            ("read.thing", {"id": "T-1"}),
            ("read.thing", {"id": "T-2"}),
            ("read.thing", {"id": "T-4"}),
        ],
        ("read.thing", {"id": "T-3"}),
        429,
        "deny",
        "concurrency_limit",
    ),
    ("approval", [], ("pay.out", {"usd": 60}), 202, "pending_approval", "big_payment"),
]


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("api")))


@pytest.mark.parametrize(
    ("name", "setup", "final", "status", "outcome", "reason"),
    REFUSALS,
    ids=[r[0] for r in REFUSALS],
)
async def test_each_refusal_reason_reaches_the_agent_with_its_status(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    name: str,
    setup: list[Step],
    final: Step,
    status: int,
    outcome: str,
    reason: str,
) -> None:
    """Every reason code the decision core can give is what the HTTP API answers, with its status."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        for action, inputs in setup:
            got, body, _ = await h.ask(action, inputs)
            assert got == 200, body
        got, body, headers = await h.ask(*final)
    assert (got, body["outcome"], body["reason"]) == (status, outcome, reason)
    assert body["detail"]
    if status == 429:
        assert int(headers["Retry-After"]) >= 1


async def test_agent_disabled_through_the_shared_control_state(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """A kill flag written to Vault's control state makes the sidecar refuse with agent_disabled."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        agent = h.sidecar.manifest.agent
        assert (await h.ask("read.thing", {"id": "T-1"}))[0] == 200
        client = root_client(openbao)
        kv_write(client, f"control/agents/{agent}", {"killed": True, "reason": "drill"})
        control_written(client)  # what every broker command does after a control write
        await _until(lambda: h.sidecar.runtime.control.killed)
        status, body, _ = await h.ask("read.thing", {"id": "T-1"})
    assert (status, body["reason"]) == (403, "agent_disabled")


async def _until(predicate: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("malformed JSON", b'{"action": ', 400, "malformed_json"),
    ("not an object", b"[1, 2]", 400, "invalid_body"),
    ("unknown field", b'{"action": "ping.it", "agent": "someone-else"}', 400, "unknown_field"),
    ("missing action", b'{"inputs": {}}', 400, "missing_field"),
    ("wrong type", b'{"action": 7}', 400, "invalid_field"),
    ("nested input", b'{"action": "ping.it", "inputs": {"a": {"b": 1}}}', 400, "invalid_field"),
    ("bad request id", b'{"action": "ping.it", "request_id": "a b\\n"}', 400, "invalid_field"),
    ("not UTF-8", b'{"action": "\xff"}', 400, "malformed_json"),
    ("NaN input", b'{"action": "ping.it", "inputs": {"a": NaN}}', 400, "malformed_json"),
    ("huge number", b'{"action": "ping.it", "inputs": {"a": 1e999}}', 400, "malformed_json"),
    (
        "oversized",
        b'{"action": "ping.it", "inputs": {"x": "' + b"a" * 70_000 + b'"}}',
        413,
        "payload_too_large",
    ),
]


@pytest.mark.parametrize(
    ("name", "raw", "status", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
async def test_bad_requests_get_stable_codes(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    name: str,
    raw: bytes,
    status: int,
    code: str,
) -> None:
    """Malformed, mistyped, unknown-field and oversized bodies get a 4xx with a stable code."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        got, body, _ = await h.raw(
            "POST", "/v1/credentials", data=raw, headers={"content-type": "application/json"}
        )
    assert (got, body["error"]) == (status, code)
    assert "Traceback" not in body["detail"]


BAD_FOLLOW_UPS: list[tuple[str, str, bytes, str]] = [
    ("wait above 30", "/v1/approvals/apr_00000000000000000000/redeem?wait=31", b"{}", "invalid_field"),
    ("wait negative", "/v1/approvals/apr_00000000000000000000/redeem?wait=-1", b"{}", "invalid_field"),
    ("wait NaN", "/v1/approvals/apr_00000000000000000000/redeem?wait=nan", b"{}", "invalid_field"),
    ("cost true", "/v1/credentials/c1/outcome", b'{"status": "ok", "cost": {"usd": true}}', "invalid_field"),
    ("cost text", "/v1/credentials/c1/outcome", b'{"status": "ok", "cost": {"usd": "1"}}', "invalid_field"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "path", "raw", "code"), BAD_FOLLOW_UPS, ids=[b[0] for b in BAD_FOLLOW_UPS]
)
async def test_bad_redeems_and_outcomes_are_400s(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    name: str,
    path: str,
    raw: bytes,
    code: str,
) -> None:
    """What the OpenAPI document declares invalid is refused (found by schemathesis): a wait
    outside 0..30 s, a cost that is not a number (JSON true is not 1)."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        got, body, _ = await h.raw(
            "POST", path, data=raw, headers={"content-type": "application/json"}
        )
    assert (got, body["error"]) == (400, code), name


async def test_scope_health_readiness_and_openapi(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """/v1/scope lists the actions; /healthz and /readyz answer 200; /openapi.json is the committed one."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        scope = (await h.raw("GET", "/v1/scope"))[1]
        health = await h.raw("GET", "/healthz")
        ready = await h.raw("GET", "/readyz")
        served = (await h.raw("GET", "/openapi.json"))[1]
        missing = await h.raw("GET", "/nope")
    assert set(scope["actions"]) == {"read.thing", "pay.out", "ping.it"}
    assert scope["actions"]["pay.out"]["needs_approval"] is True
    assert health[0] == 200
    assert ready[0] == 200
    assert ready[1]["ready"] is True
    assert served == json.loads((REPO / "openapi.json").read_text())
    assert (missing[0], missing[1]["error"]) == (404, "not_found")


def test_committed_openapi_document_is_current() -> None:
    """openapi.json in the repository is exactly what the code generates."""
    assert json.loads((REPO / "openapi.json").read_text()) == openapi_document()


async def test_outcome_report_frees_the_concurrency_slot(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """Reporting an outcome releases the credential's slot; an unknown id is a 404."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        ids = [
            (await h.ask("read.thing", {"id": f"T-{i}"}))[1]["credential"]["credential_id"]
            for i in range(3)
        ]
        assert (await h.ask("read.thing", {"id": "T-3"}))[0] == 429
        done = await h.raw("POST", f"/v1/credentials/{ids[0]}/outcome", json={"status": "ok"})
        again = await h.raw("POST", f"/v1/credentials/{ids[0]}/outcome", json={"status": "ok"})
        after = await h.ask("read.thing", {"id": "T-3"})
    assert done[0] == 200
    assert again[0] == 404
    assert after[0] == 200


async def test_malformed_header_is_a_400_and_a_warning_without_traceback(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client's malformed header line gets 400; the sidecar logs one WARNING naming the
    problem's kind, no ERROR, no traceback, and not the header's text (it may hold a token)."""
    from urllib.parse import urlsplit

    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        where = urlsplit(h.url)
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization secret-value\r\n\r\n")
        await writer.drain()
        answer = await reader.read(64)
        writer.close()
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    aiohttp_records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert aiohttp_records
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in aiohttp_records)
    assert "secret-value" not in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/credentials", "POST"),
        ("DELETE", "/v1/scope", "GET"),
        ("PUT", "/healthz", "GET"),
        ("GET", "/v1/credentials/abc/outcome", "POST"),
    ],
)
async def test_method_not_allowed_names_the_allowed_methods(
    openbao: DevServer, manifest_path: Path, tmp_path: Path, method: str, path: str, allowed: str
) -> None:
    """A wrong method is a JSON 405 with an ``Allow`` header (RFC 9110), as schemathesis checks."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        status, body, headers = await h.raw(method, path)
    assert (status, body["error"]) == (405, "method_not_allowed")
    assert allowed in headers["Allow"]
