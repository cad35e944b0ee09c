"""Delegated grants against the live stack (real OpenBao, a running sidecar): a narrowing
grant works end to end through RFC 8693 token exchange, widening grants are refused with the
rule, a child's spending comes out of the parent's budget exactly, and revoking or killing
the parent refuses the child's tokens at a gateway within a second."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import jwt
import pytest
from pydantic import SecretStr

from broker.cli import main
from broker.core.controlstate import REVOKED_PATH, delegations_path
from broker.core.delegation import EXCHANGE_GRANT_TYPE, GRANT_TOKEN_TYPE, Actor
from broker.core.errors import VerificationError
from broker.core.fleetdoc import summary
from broker.dev.devstack import DevServer
from broker.settings import VaultSettings
from broker.sidecar.tokenexchange import DESK
from broker.vault.control import VaultRevocations
from broker.vault.kv import kv_read
from broker.vault.layout import KV_MOUNT
from broker.vault.ledgerstore import ledger_path
from broker.vault.pki import fetch_ca_pem
from broker.verify import Verifier
from tests.harness import Harness, root_client, running_sidecar, unique_agent, write_manifest
from tests.sidecar.test_sidecar_faults import _fill, small_disk  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: delegation-1
system_owner: platform@acme.example
risk_owner: security@acme.example
budgets:
  refunds-usd: {{limit: 100, per: 1d, unit: usd}}
delegation: {{max_depth: 2, max_ttl: 10m}}
actions:
  tickets.read:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: tickets, ttl: 5m}}
    inputs:
      ticket_id: {{type: string, pattern: '^CS-[0-9]+$'}}
  payments.refund:
    accountable: finance-ops@acme.example
    credential: {{kind: jwt, audience: payments, ttl: 60s}}
    inputs:
      amount_usd: {{type: number, min: 0, max: 50}}
    cost: {{refunds-usd: inputs.amount_usd}}
"""

NARROW: dict[str, Any] = {
    "sub_agent": "refund-helper",
    "actions": {
        "tickets.read": {"ttl": "60s"},
        "payments.refund": {"inputs": {"amount_usd": {"max": 10}}},
    },
    "budgets": {"refunds-usd": 30},
    "ttl": "5m",
}


def sidecar(openbao: DevServer, tmp_path: Path, **config: Any) -> Any:
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("deleg")))
    return running_sidecar(openbao, manifest, tmp_path, **config)


async def delegate(h: Harness, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, answer, _ = await h.raw("POST", "/v1/delegations", json=body)
    return status, answer


async def exchange(
    h: Harness, grant: str, action: str, inputs: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": EXCHANGE_GRANT_TYPE,
        "subject_token": grant,
        "subject_token_type": GRANT_TOKEN_TYPE,
        "scope": action,
        "inputs": json.dumps(inputs or {}),
    }
    status, answer, _ = await h.raw("POST", "/v1/token", data=form)
    return status, answer


def gateway(openbao: DevServer) -> Verifier:
    """A gateway's verifier: Vault's CA, control state read from Vault (briefly cached)."""
    revocations = VaultRevocations(
        VaultSettings(addr=openbao.addr, token=SecretStr(openbao.root_token))
    )
    return Verifier([fetch_ca_pem(openbao.addr)], revocations=revocations)


def records(h: Harness, **match: Any) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in h.audit_path.read_text().splitlines() if line.strip()]
    return [r for r in found if all(r.get(k) == v for k, v in match.items())]


async def test_a_narrowing_grant_works_end_to_end(openbao: DevServer, tmp_path: Path) -> None:
    """Grant, exchange, verify at a gateway: the token speaks for the agent, names the
    sub-agent in act, stays inside the grant; a grant below it carries both actors."""
    async with sidecar(openbao, tmp_path) as h:
        agent = h.sidecar.manifest.agent
        status, granted = await delegate(h, NARROW)
        assert status == 201, granted
        assert granted["depth"] == 1
        assert granted["sub_agent"] == "refund-helper"

        status, issued = await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 7})
        assert status == 200, issued
        assert issued["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
        claims = gateway(openbao).verify(
            issued["access_token"], audience="payments", inputs={"amount_usd": 7}
        )
        assert claims.agent == agent
        assert claims.action == "payments.refund"
        assert claims.actors == (Actor("refund-helper", granted["grant_id"]),)
        assert jwt.decode(issued["access_token"], options={"verify_signature": False})["act"] == {
            "sub": "refund-helper",
            "grant": granted["grant_id"],
        }
        status, wide = await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 20})
        assert (status, wide["reason"]) == (400, "constraint_violation"), wide

        below = {"sub_agent": "ticket-reader", "actions": {"tickets.read": {}}, "ttl": "1m"}
        status, sub = await delegate(h, {**below, "parent_grant": granted["grant"]})
        assert status == 201, sub
        status, issued = await exchange(h, sub["grant"], "tickets.read", {"ticket_id": "CS-1"})
        assert status == 200, issued
        claims = gateway(openbao).verify(issued["access_token"], audience="tickets")
        assert [a.sub for a in claims.actors] == ["refund-helper", "ticket-reader"]
        assert claims.expires_at - claims.issued_at <= 60  # the grant's TTL, not the parent's 5m

        [made] = records(h, type="delegation", event="grant", grant_id=granted["grant_id"])
        [minted] = records(h, type="decision", credential_id=issued["credential_id"])
        assert minted["delegation"]["chain"] == sub["chain"]
        assert made["budgets"] == {"refunds-usd": 30}


def _cases() -> list[Any]:
    def plain(changes: dict[str, Any]) -> dict[str, Any]:
        return {**NARROW, **changes}

    return [
        pytest.param(
            plain({"actions": {"github.open_pr": {}}}),
            "delegation_widens",
            "actions.github.open_pr",
            id="another action",
        ),
        pytest.param(
            plain({"actions": {"payments.refund": {"inputs": {"amount_usd": {"max": 80}}}}}),
            "delegation_widens",
            "actions.payments.refund.inputs.amount_usd.max",
            id="a looser constraint",
        ),
        pytest.param(
            plain({"budgets": {"refunds-usd": 31}}),
            "delegation_budget_exceeded",
            "budgets.refunds-usd",
            id="more budget than the parent has left",
        ),
        pytest.param(plain({"ttl": "11m"}), "delegation_ttl_too_long", "ttl", id="a longer TTL"),
        pytest.param(
            plain({"actions": {"tickets.read": {"ttl": "6m"}}}),
            "delegation_widens",
            "actions.tickets.read.credential.ttl",
            id="a longer credential TTL",
        ),
        pytest.param(None, "delegation_too_deep", "delegation.max_depth", id="depth over limit"),
    ]


@pytest.mark.parametrize(("body", "reason", "rule"), _cases())
async def test_a_widening_grant_is_refused_with_the_rule(
    openbao: DevServer, tmp_path: Path, body: dict[str, Any] | None, reason: str, rule: str
) -> None:
    """The parent has spent 70 of 100: each way of asking for more is refused and recorded,
    and nothing is carved."""
    async with sidecar(openbao, tmp_path) as h:
        for _ in range(2):
            assert (await h.ask("payments.refund", {"amount_usd": 35}))[0] == 200
        if body is None:  # two levels are allowed; the third is refused
            status, first = await delegate(h, {**NARROW, "budgets": {"refunds-usd": 10}})
            assert status == 201, first
            below = {"sub_agent": "two", "actions": {"tickets.read": {}}, "ttl": "1m"}
            status, second = await delegate(h, {**below, "parent_grant": first["grant"]})
            assert status == 201, second
            body = {**below, "sub_agent": "three", "parent_grant": second["grant"]}
        status, refused = await delegate(h, body)
        assert (status, refused["reason"], refused["rule"]) == (403, reason, rule), refused
        [logged] = records(h, type="delegation", event="refused")
        assert (logged["reason"], logged["rule"]) == (reason, rule)
        spent_by_parent = 70 + (10 if reason == "delegation_too_deep" else 0)
        status, _ = await delegate(h, {**NARROW, "budgets": {"refunds-usd": 100 - spent_by_parent}})
        assert status == 201  # what was left is still there, exactly


@pytest.mark.parametrize("ledger", ["local", "vault"])
async def test_the_childs_spending_is_charged_to_the_parents_budget_exactly(
    openbao: DevServer, tmp_path: Path, ledger: str
) -> None:
    """Budget 100, 30 carved for the child, both spending 5 at a time concurrently: the parent
    gets exactly 70, the child exactly 30, never more than 100 in all (with the sidecar's own
    ledger and with the fleet's in Vault); revoking the spent grant gives nothing back."""
    async with sidecar(openbao, tmp_path, ledger=ledger) as h:
        status, granted = await delegate(h, NARROW)
        assert status == 201, granted

        async def parent() -> int:
            status, _, _ = await h.ask("payments.refund", {"amount_usd": 5})
            return 5 if status == 200 else 0

        async def child() -> int:
            status, _ = await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 5})
            return 5 if status == 200 else 0

        calls = [parent() for _ in range(20)] + [child() for _ in range(10)]
        spent = await asyncio.gather(*calls)
        assert (sum(spent[:20]), sum(spent[20:])) == (70, 30)
        allowed = records(h, type="decision", outcome="allow", action="payments.refund")
        assert sum(r["charges"]["refunds-usd"] for r in allowed) == 100

        status, listing, _ = await h.raw("GET", "/v1/delegations")
        assert listing["grants"][0]["spent"] == {"refunds-usd": 30.0}
        assert (await h.raw("POST", f"/v1/delegations/{granted['grant_id']}/revoke"))[0] == 200
        assert (await h.ask("payments.refund", {"amount_usd": 1}))[0] == 403  # nothing came back
        if ledger == "vault":  # the fleet's document agrees: 100 used, the carve included
            path = ledger_path(h.sidecar.manifest.agent)
            doc = kv_read(root_client(openbao), path)
            assert summary(doc, path, time.time())["refunds-usd"]["used"] == "100.0"


async def test_an_ended_grant_gives_back_what_it_did_not_spend(
    openbao: DevServer, tmp_path: Path
) -> None:
    """The child spends 10 of its 30; once the grant is revoked the parent can spend 90."""
    async with sidecar(openbao, tmp_path) as h:
        status, granted = await delegate(h, NARROW)
        assert status == 201
        for _ in range(2):
            assert (await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 5}))[
                0
            ] == 200
        status, _ = await delegate(h, {**NARROW, "budgets": {"refunds-usd": 71}})
        assert status == 403  # 100 - 30 carved = 70 left
        assert (await h.raw("POST", f"/v1/delegations/{granted['grant_id']}/revoke"))[0] == 200
        status, _ = await delegate(h, {**NARROW, "budgets": {"refunds-usd": 90}})
        assert status == 201
        status, answer = await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 1})
        assert (status, answer["reason"]) == (400, "grant_revoked")


async def _refused_within(
    verifier: Verifier, token: str, audience: str, limit: float
) -> tuple[float, str]:
    """Seconds until the verifier refuses ``token``, and its code (it is asked every 20 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < limit + 2:
        try:
            await asyncio.to_thread(verifier.verify, token, audience=audience)
        except VerificationError as exc:
            return time.monotonic() - started, exc.code
        await asyncio.sleep(0.02)
    raise AssertionError("the token was still accepted")


async def test_revoking_the_parent_grant_kills_the_childs_tokens_within_a_second(
    openbao: DevServer, tmp_path: Path
) -> None:
    """A gateway that accepted the grandchild's token refuses it under a second after the
    grant above it is revoked; the agent's own tokens stay good."""
    async with sidecar(openbao, tmp_path) as h:
        status, top = await delegate(h, NARROW)
        below = {"sub_agent": "ticket-reader", "actions": {"tickets.read": {}}, "ttl": "1m"}
        status, sub = await delegate(h, {**below, "parent_grant": top["grant"]})
        assert status == 201, sub
        status, issued = await exchange(h, sub["grant"], "tickets.read", {"ticket_id": "CS-1"})
        _own_status, own, _ = await h.ask("tickets.read", {"ticket_id": "CS-2"})
        verifier = gateway(openbao)
        verifier.verify(issued["access_token"], audience="tickets")  # accepted, and cached

        status, revoked, _ = await h.raw("POST", f"/v1/delegations/{top['grant_id']}/revoke")
        assert status == 200
        assert set(revoked["revoked"]) == {top["grant_id"], sub["grant_id"]}
        took, code = await _refused_within(verifier, issued["access_token"], "tickets", 1.0)
        assert code == "token_revoked"
        assert took < 1.0, took
        assert verifier.verify(own["credential"]["token"], audience="tickets").actors == ()
        status, answer = await exchange(h, sub["grant"], "tickets.read", {"ticket_id": "CS-1"})
        assert (status, answer["reason"]) == (400, "grant_revoked")
        assert len(records(h, type="delegation", event="revoke")) == 2


async def test_killing_the_parent_agent_kills_the_childs_tokens_within_a_second(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`broker kill` of the agent: its sub-agent's token is refused within a second, and the
    grant is revoked with everything else the agent held."""
    async with sidecar(openbao, tmp_path) as h:
        status, granted = await delegate(h, NARROW)
        status, issued = await exchange(h, granted["grant"], "tickets.read", {"ticket_id": "CS-1"})
        assert status == 200, issued
        verifier = gateway(openbao)
        verifier.verify(issued["access_token"], audience="tickets")
        operator_env(openbao, tmp_path, monkeypatch)
        args = ["kill", "--agent", h.sidecar.manifest.agent, "--reason", "incident"]
        assert await asyncio.to_thread(main, args) == 0
        took, code = await _refused_within(verifier, issued["access_token"], "tickets", 1.0)
        assert code == "token_revoked"
        assert took < 1.0, took
        await asyncio.sleep(0.3)  # the sidecar's poll (0.1 s here) sees the kill
        status, answer = await exchange(h, granted["grant"], "tickets.read", {"ticket_id": "CS-1"})
        # A kill revokes everything the agent holds: its grants too.
        assert (status, answer["reason"]) == (400, "grant_revoked"), answer


def operator_env(openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    operator = root_client(openbao).auth.token.create(
        policies=["broker-security-operator"], meta={"operator": "sec@acme.example"}, ttl="1h"
    )["auth"]["client_token"]
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("VAULT_TOKEN", operator)
    monkeypatch.setenv("BROKER_OPERATOR_AUDIT", str(tmp_path / "ops.jsonl"))
    for name in ("BAO_ADDR", "BAO_TOKEN"):
        monkeypatch.delenv(name, raising=False)


async def test_status_and_audit_trace_show_the_chain(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`broker status` lists the live grants with their chains (a revoked one marked);
    `broker audit trace` of a delegated request shows the grants that allowed it."""
    async with sidecar(openbao, tmp_path) as h:
        agent = h.sidecar.manifest.agent
        status, top = await delegate(h, NARROW)
        below = {"sub_agent": "ticket-reader", "actions": {"tickets.read": {}}, "ttl": "1m"}
        status, sub = await delegate(h, {**below, "parent_grant": top["grant"]})
        assert status == 201, sub
        form = {
            "grant_type": EXCHANGE_GRANT_TYPE,
            "subject_token": sub["grant"],
            "subject_token_type": GRANT_TOKEN_TYPE,
            "scope": "tickets.read",
            "inputs": json.dumps({"ticket_id": "CS-9"}),
            "request_id": "req-delegated-1",
        }
        assert (await h.raw("POST", "/v1/token", data=form))[0] == 200
        assert (await h.raw("POST", f"/v1/delegations/{sub['grant_id']}/revoke"))[0] == 200

        operator_env(openbao, tmp_path, monkeypatch)
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["status", "--json"]) == 0
        [row] = [r for r in json.loads(capsys.readouterr().out) if r["agent"] == agent]
        shown = [
            (g["grant_id"], [a["sub"] for a in g["chain"]], g["revoked"])
            for g in row["delegations"]
        ]
        assert shown == [
            (top["grant_id"], ["refund-helper"], False),
            (sub["grant_id"], ["refund-helper", "ticket-reader"], True),
        ]
        assert await asyncio.to_thread(main, ["status"]) == 0
        assert f"{agent} > refund-helper > ticket-reader" in capsys.readouterr().out

        trace = [
            "audit",
            "trace",
            "req-delegated-1",
            "--file",
            str(h.audit_path),
            "--format",
            "text",
        ]
        assert await asyncio.to_thread(main, trace) == 0
        lines = capsys.readouterr().out.splitlines()
        # How each grant came to be, the delegated request, and the grant's revocation.
        kinds = [
            (line.split()[2], next(w for w in line.split() if "=" in w and "chain" not in w))
            for line in lines
        ]
        assert kinds == [
            ("delegation", "event=grant"),
            ("delegation", "event=grant"),
            ("decision", "tools[tickets.read=ok]"),
            ("delegation", "event=revoke"),
        ]
        assert all(f"chain={agent} > refund-helper" in line for line in lines)
        assert f"chain={agent} > refund-helper > ticket-reader" in lines[2]
        assert "grant_id=" + top["grant_id"] in lines[0]


async def test_an_expired_grant_gives_back_what_it_did_not_spend(
    openbao: DevServer, tmp_path: Path
) -> None:
    """The child spends 10 of 30; once the grant has expired the 20 are the parent's again,
    and the grant is refused."""
    async with sidecar(openbao, tmp_path) as h:
        status, granted = await delegate(h, {**NARROW, "ttl": "1m"})
        assert status == 201
        for _ in range(2):
            status, _ = await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 5})
            assert status == 200
        desk = h.sidecar._runner.app[DESK]  # type: ignore[union-attr]
        desk.clock = lambda: time.time() + 61  # the grant's minute has passed
        status, listing, _ = await h.raw("GET", "/v1/delegations")
        assert listing["grants"] == []
        [ended] = records(h, type="delegation", event="expire")
        assert ended["budgets"] == {"refunds-usd": 10.0}  # what it spent, in the end
        for amount in (50, 40):
            assert (await h.ask("payments.refund", {"amount_usd": amount}))[0] == 200
        assert (await h.ask("payments.refund", {"amount_usd": 1}))[0] == 403
        status, answer = await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 1})
        assert (status, answer["reason"]) == (400, "grant_invalid")


async def test_a_restarted_sidecar_refuses_old_grants_and_charges_only_real_spending(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Grants live in the sidecar's memory: after a restart the old grant is refused, the
    carve is not held any more, and what the child really spent is still charged."""
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("deleg")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        status, granted = await delegate(h, NARROW)
        for _ in range(2):
            status, _ = await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 5})
            assert status == 200
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        status, answer = await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 1})
        assert (status, answer["reason"]) == (400, "grant_invalid")
        for amount in (50, 40):
            assert (await h.ask("payments.refund", {"amount_usd": amount}))[0] == 200
        assert (await h.ask("payments.refund", {"amount_usd": 1}))[0] == 403


def _form(**changes: str | None) -> dict[str, str]:
    form = {
        "grant_type": EXCHANGE_GRANT_TYPE,
        "subject_token": "GRANT",
        "subject_token_type": GRANT_TOKEN_TYPE,
        "scope": "payments.refund",
        "inputs": json.dumps({"amount_usd": 5}),
        **changes,
    }
    return {k: v for k, v in form.items() if v is not None}


BAD_EXCHANGES = [
    pytest.param(
        _form(grant_type="client_credentials"),
        "unsupported_grant_type",
        "unsupported_grant_type",
        id="another grant type",
    ),
    pytest.param(
        _form(subject_token=None), "invalid_request", "missing_field", id="no subject token"
    ),
    pytest.param(
        _form(subject_token_type="urn:ietf:params:oauth:token-type:jwt"),
        "invalid_request",
        "invalid_field",
        id="another subject token type",
    ),
    pytest.param(
        _form(subject_token="WRONG-SECRET"),
        "invalid_grant",
        "grant_invalid",
        id="the grant id with a wrong secret",
    ),
    pytest.param(
        _form(subject_token="dg_000000000000000000000000.x"),
        "invalid_grant",
        "grant_invalid",
        id="an unknown grant",
    ),
    pytest.param(
        _form(actor_token="x"), "invalid_request", "unknown_field", id="an unknown parameter"
    ),
    pytest.param(
        _form(scope="tickets.write"),
        "invalid_scope",
        "unknown_action",
        id="an action outside the grant",
    ),
    pytest.param(
        _form(inputs="{not json"), "invalid_request", "invalid_inputs", id="inputs not JSON"
    ),
    pytest.param(
        _form(inputs="[1]"), "invalid_request", "invalid_inputs", id="inputs not an object"
    ),
    pytest.param(
        _form(audience="tickets"), "invalid_target", "invalid_target", id="another audience"
    ),
]


@pytest.mark.parametrize(("form", "error", "reason"), BAD_EXCHANGES)
async def test_a_bad_exchange_is_refused_and_changes_nothing(
    openbao: DevServer, tmp_path: Path, form: dict[str, str], error: str, reason: str
) -> None:
    """Each malformed or unauthorised exchange is a 400 with the RFC 6749 error and our
    reason, and nothing of the grant is spent."""
    async with sidecar(openbao, tmp_path) as h:
        status, granted = await delegate(h, NARROW)
        token = granted["grant"]
        subject = form.get("subject_token", "")
        subject = {"GRANT": token, "WRONG-SECRET": granted["grant_id"] + ".wrong"}.get(
            subject, subject
        )
        if "subject_token" in form:
            form = {**form, "subject_token": subject}
        status, answer, _ = await h.raw("POST", "/v1/token", data=form)
        assert (status, answer["error"], answer["reason"]) == (400, error, reason), answer
        assert "GRANT" not in json.dumps(answer)
        assert token not in json.dumps(answer)
        _, listing, _ = await h.raw("GET", "/v1/delegations")
        assert listing["grants"][0]["spent"] == {"refunds-usd": 0.0}
        assert (await exchange(h, token, "payments.refund", {"amount_usd": 5}))[0] == 200


def _multipart_with_a_file() -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("grant_type", EXCHANGE_GRANT_TYPE)
    data.add_field("subject_token", b"GRANT", filename="grant.txt")
    return data


RAW_EXCHANGES = [
    pytest.param(
        b"grant_type=" + EXCHANGE_GRANT_TYPE.encode() + b"&grant_type=client_credentials&scope=x",
        "parameter 'grant_type' is repeated",
        id="a parameter twice (RFC 6749 3.2)",
    ),
    pytest.param(
        _multipart_with_a_file,
        "the body must be application/x-www-form-urlencoded (RFC 6749 3.2)",
        id="multipart with a file part",
    ),
]


@pytest.mark.parametrize(("body", "detail"), RAW_EXCHANGES)
async def test_a_malformed_token_request_answers_in_the_endpoints_error_shape(
    openbao: DevServer, tmp_path: Path, body: Any, detail: str
) -> None:
    """A repeated parameter or a multipart body: 400 with error, error_description and reason, as
    the served document says every 400 of this endpoint is (schemathesis found it answered
    the generic shape, and called a repeated parameter a file part)."""
    async with sidecar(openbao, tmp_path) as h:
        kw: dict[str, Any] = (
            {"data": body()}
            if callable(body)
            else {"data": body, "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
        )
        status, answer, _ = await h.raw("POST", "/v1/token", **kw)
    assert status == 400
    assert answer == {
        "error": "invalid_request",
        "error_description": detail,
        "reason": "invalid_body",
    }


async def test_nothing_is_granted_or_minted_that_is_not_first_recorded(
    openbao: DevServer,
    tmp_path: Path,
    small_disk: Path,  # noqa: F811 - the fixture imported above
) -> None:
    """The audit disk fills: a grant and an exchange are both refused 503 audit_unavailable,
    nothing is carved or spent; once space is back, both work and the budget is exact."""
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("deleg")))
    trail = small_disk / "audit.jsonl"
    async with running_sidecar(openbao, manifest, tmp_path, audit_path=trail) as h:
        status, granted = await delegate(h, NARROW)
        assert status == 201
        filler = _fill(small_disk)
        for _ in range(50):  # the trail's last page may still have room for a few records
            if (await h.ask("tickets.read", {"ticket_id": "CS-1"}))[0] != 200:
                break
        refused_grant = await delegate(h, {**NARROW, "budgets": {"refunds-usd": 10}})
        refused_token = await exchange(h, granted["grant"], "payments.refund", {"amount_usd": 5})
        filler.unlink()
        for _ in range(100):
            if (await h.raw("GET", "/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.1)
        _, listing, _ = await h.raw("GET", "/v1/delegations")
        assert [g["spent"] for g in listing["grants"]] == [{"refunds-usd": 0.0}]
        assert (await delegate(h, {**NARROW, "budgets": {"refunds-usd": 70}}))[0] == 201
    assert (refused_grant[0], refused_grant[1]["error"]) == (503, "audit_unavailable")
    assert (refused_token[0], refused_token[1]["error"]) == (503, "audit_unavailable")


async def test_security_revokes_a_grant_that_the_agent_cannot_bring_back(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`broker revoke --grant`: the grant's tokens (and those of the grant below it) are
    refused by a gateway within a second and by the sidecar, and the agent's own Vault
    identity cannot write the document that holds the revocation."""
    async with sidecar(openbao, tmp_path) as h:
        status, top = await delegate(h, NARROW)
        below = {"sub_agent": "ticket-reader", "actions": {"tickets.read": {}}, "ttl": "1m"}
        status, sub = await delegate(h, {**below, "parent_grant": top["grant"]})
        status, issued = await exchange(h, sub["grant"], "tickets.read", {"ticket_id": "CS-1"})
        assert status == 200, issued
        verifier = gateway(openbao)
        verifier.verify(issued["access_token"], audience="tickets")
        operator_env(openbao, tmp_path, monkeypatch)
        capsys.readouterr()
        args = ["revoke", "--grant", top["grant_id"], "--reason", "helper misbehaved"]
        assert await asyncio.to_thread(main, args) == 0
        assert f"{h.sidecar.manifest.agent} > refund-helper" in capsys.readouterr().out
        took, code = await _refused_within(verifier, issued["access_token"], "tickets", 1.0)
        assert code == "token_revoked"
        assert took < 1.0, took
        for _ in range(50):  # the sidecar's next poll (0.1 s here)
            status, answer = await exchange(h, sub["grant"], "tickets.read", {"ticket_id": "CS-1"})
            if status != 200:
                break
            await asyncio.sleep(0.05)
        assert (status, answer["reason"]) == (400, "grant_revoked")

        agent_vault = hvac.Client(url=openbao.addr, token=h.sidecar.runtime.session.token)
        own = delegations_path(h.sidecar.manifest.agent)
        kv = agent_vault.secrets.kv.v2
        kv.create_or_update_secret(path=own, secret={"revoked": {}}, mount_point=KV_MOUNT)
        with pytest.raises(hvac.exceptions.Forbidden):  # its own document, yes; this one, no
            kv.create_or_update_secret(
                path=REVOKED_PATH, secret={"grants": {}}, mount_point=KV_MOUNT
            )
        took, code = await _refused_within(verifier, issued["access_token"], "tickets", 1.0)
        assert code == "token_revoked"  # still refused after the agent wiped its own document


@pytest.mark.parametrize(
    "grant_id",
    [pytest.param("dg_" + "0" * 24, id="no such grant"), pytest.param("nope", id="not a grant id")],
)
async def test_revoking_an_unknown_grant_is_an_error_that_changes_nothing(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    grant_id: str,
) -> None:
    """An unknown or malformed grant id: a usage error naming it, and no revocation written."""
    operator_env(openbao, tmp_path, monkeypatch)
    before = kv_read(root_client(openbao), "control/revoked")
    code = await asyncio.to_thread(main, ["revoke", "--grant", grant_id])
    assert code != 0
    assert grant_id in capsys.readouterr().err
    assert kv_read(root_client(openbao), "control/revoked") == before


async def test_a_sub_agents_calls_count_against_the_agents_rate_and_concurrency(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Concurrency 2 and 3 ticket reads a minute for the agent: with one credential of its own
    live, its sub-agent gets one slot, not two; calls of both count in one rate window."""
    text = MANIFEST.replace("actions:\n", "concurrency: 2\nactions:\n", 1).replace(
        "ttl: 5m}}\n", "ttl: 5m}}\n    rate: {{limit: 3, per: 1m}}\n", 1
    )
    manifest = write_manifest(tmp_path, text.format(agent=unique_agent("deleg")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        status, granted = await delegate(h, NARROW)
        assert status == 201, granted
        status, own, _ = await h.ask("tickets.read", {"ticket_id": "CS-1"})
        assert status == 200
        status, first = await exchange(h, granted["grant"], "tickets.read", {"ticket_id": "CS-2"})
        assert status == 200
        status, full = await exchange(h, granted["grant"], "tickets.read", {"ticket_id": "CS-3"})
        assert (status, full["reason"]) == (429, "concurrency_limit"), full
        for done in (own["credential"]["credential_id"], first["credential_id"]):
            reported = await h.raw("POST", f"/v1/credentials/{done}/outcome", json={"status": "ok"})
            assert reported[0] == 200  # the sub-agent's slot is the agent's, freed the same way
        status, _ = await exchange(h, granted["grant"], "tickets.read", {"ticket_id": "CS-3"})
        assert status == 200
        # Three calls allowed in this minute (one of the agent's, two of its sub-agent's).
        status, limited, _ = await h.ask("tickets.read", {"ticket_id": "CS-4"})
        assert (status, limited["reason"]) == (429, "rate_limited"), limited
