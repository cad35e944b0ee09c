"""Redacted inputs cannot be recovered from anything stored: not from the trail, not from
the approval document in Vault, not by hashing guesses (issue 13).

The review recovered a redacted ``ticket_id`` in 1-2 s by hashing candidates against the plain
SHA-256 every record carried. Here every stored hash is compared with the plain hash of every
candidate, the true value included, and the clear value is looked for in the raw bytes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.audit.records import canonical
from broker.audit.redaction import (
    MAX_REFUSED_FIELDS,
    MAX_REFUSED_VALUE,
    bound_inputs,
    seal,
    stored_inputs,
    unseal,
)
from broker.cli import main
from broker.core.decision import inputs_hash
from broker.dev.devstack import DevServer
from broker.vault.layout import KV_MOUNT
from tests.harness import approver_token, root_client, running_sidecar, unique_agent, write_manifest

KEY = b"k" * 32
SECRET_TICKET = "CS-48213"
CANDIDATES = [f"CS-{n}" for n in range(48200, 48230)]  # a guesser's list, the truth among them


def plain_hashes(agent: str, action: str, inputs: dict[str, Any]) -> set[str]:
    """What the old trail stored: the plain hash of all inputs, for every candidate."""
    return {inputs_hash(agent, action, {**inputs, "ticket_id": c}) for c in CANDIDATES}


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


# --- the pure part ---------------------------------------------------------------------------


def test_stored_hash_is_over_the_redacted_form_and_matches_no_guess() -> None:
    """The stored hash is the hash of exactly the stored inputs, never a candidate's plain hash."""
    inputs = {"ticket_id": SECRET_TICKET, "usd": 120}
    shown, digest = stored_inputs("a", "pay.out", inputs, ["ticket_id"], KEY)
    assert shown["ticket_id"].startswith("hmac-sha256:")
    assert digest == inputs_hash("a", "pay.out", shown)
    assert digest not in plain_hashes("a", "pay.out", inputs)
    assert SECRET_TICKET not in json.dumps(shown)


def test_without_redacted_fields_the_hash_is_the_plain_binding() -> None:
    """Nothing redacted: the stored hash is the token's binding, as before."""
    inputs = {"ticket_id": SECRET_TICKET}
    assert stored_inputs("a", "x", inputs, [], KEY) == (inputs, inputs_hash("a", "x", inputs))


def test_sealed_values_open_only_with_the_key_and_their_approval() -> None:
    """A sealed value opens with its key and approval id; another key, another approval id
    or a flipped byte is refused."""
    sealed = seal({"ticket_id": SECRET_TICKET, "usd": 1}, ["ticket_id"], KEY, "apr_1")
    assert set(sealed) == {"ticket_id"}
    assert SECRET_TICKET not in sealed["ticket_id"]
    assert unseal(sealed, KEY, "apr_1") == {"ticket_id": SECRET_TICKET}
    flipped = sealed["ticket_id"][:-3] + ("A" if sealed["ticket_id"][-3] != "A" else "B") + "=="
    for key, context, value in [
        (b"other" * 8, "apr_1", sealed["ticket_id"]),
        (KEY, "apr_2", sealed["ticket_id"]),
        (KEY, "apr_1", flipped),
        (KEY, "apr_1", SECRET_TICKET),
    ]:
        with pytest.raises(ValueError, match="ticket_id"):
            unseal({"ticket_id": value}, key, context)


# --- live: a sidecar, its trail and its approval documents in OpenBao ----------------------

APPROVER = "finance-ops@acme.example"
MANIFEST = """\
agent: {agent}
policy_version: redaction-test-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  pay.out:
    accountable: finance-ops@acme.example
    credential: {{kind: jwt, audience: payments, ttl: 60s}}
    inputs:
      ticket_id: {{type: string, pattern: '^CS-[0-9]+$'}}
      usd: {{type: number, min: 0, max: 500}}
    approval:
      when: {{usd: {{gt: 100}}}}
      approvers: [finance-ops@acme.example]
      reason: needs_human_approval_over_100
    redact: [ticket_id]
"""
INPUTS = {"ticket_id": SECRET_TICKET, "usd": 120}


def raw_doc(openbao: DevServer, agent: str, approval_id: str) -> dict[str, Any]:
    """The approval document exactly as stored in KV, read with the root token."""
    read = root_client(openbao).secrets.kv.v2.read_secret_version(
        path=f"approvals/{agent}/{approval_id}", mount_point=KV_MOUNT, raise_on_deleted_version=True
    )
    return dict(read["data"]["data"])


async def approve(openbao: DevServer, monkeypatch: pytest.MonkeyPatch, approval_id: str) -> int:
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("VAULT_TOKEN", approver_token(openbao, APPROVER))
    monkeypatch.delenv("BROKER_OPERATOR_AUDIT", raising=False)
    return await asyncio.to_thread(main, ["approvals", "approve", approval_id, "--reason", "ok"])


def assert_unrecoverable(stored: Any, raw: str, agent: str) -> None:
    """Neither the clear value nor any candidate's plain hash is anywhere in ``stored``."""
    assert SECRET_TICKET not in raw
    guesses = plain_hashes(agent, "pay.out", INPUTS)
    found = set(strings_in(stored))
    assert not found & guesses, "a stored hash confirms a guessed ticket id"


@pytest.mark.integration
async def test_redacted_value_is_unrecoverable_from_trail_and_approval_doc(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ask, approve, redeem (no inputs given: the sealed value mints): then neither the trail
    nor the approval document holds the ticket id or a hash that confirms a guess of it."""
    agent = unique_agent("redact")
    path = write_manifest(tmp_path, MANIFEST.format(agent=agent))
    async with running_sidecar(openbao, path, tmp_path) as h:
        status, body, _ = await h.ask("pay.out", INPUTS, request_id="r1")
        assert status == 202, body
        approval_id = body["approval_id"]
        assert await approve(openbao, monkeypatch, approval_id) == 0
        status, body, _ = await h.raw("POST", f"/v1/approvals/{approval_id}/redeem", json={})
        assert status == 200, body
        doc = raw_doc(openbao, agent, approval_id)
        trail = h.audit_path.read_text()
    records = [json.loads(line) for line in trail.splitlines()]
    assert {r.get("approval_id") for r in records} >= {approval_id}
    assert_unrecoverable(records, trail, agent)
    assert_unrecoverable(doc, json.dumps(doc), agent)
    assert doc["inputs"]["ticket_id"].startswith("hmac-sha256:")


@pytest.mark.integration
async def test_a_sealed_value_moved_from_another_approval_is_refused(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator copying approval A's sealed ticket id into approval B (same key, another
    approval) gets B's redeem refused as a document that no longer matches its binding
    (approval_denied), with a record of it."""
    agent = unique_agent("redact")
    path = write_manifest(tmp_path, MANIFEST.format(agent=agent))
    async with running_sidecar(openbao, path, tmp_path) as h:
        ids = []
        for ticket in ("CS-1", "CS-2"):
            status, body, _ = await h.ask("pay.out", {**INPUTS, "ticket_id": ticket})
            assert status == 202, body
            ids.append(body["approval_id"])
            assert await approve(openbao, monkeypatch, body["approval_id"]) == 0
        first = raw_doc(openbao, agent, ids[0])
        second = raw_doc(openbao, agent, ids[1])
        second["extra"]["sealed_inputs"] = first["extra"]["sealed_inputs"]
        root_client(openbao).secrets.kv.v2.create_or_update_secret(
            path=f"approvals/{agent}/{ids[1]}", secret=second, mount_point=KV_MOUNT
        )
        status, body, _ = await h.raw("POST", f"/v1/approvals/{ids[1]}/redeem", json={})
        assert (status, body.get("reason")) == (403, "approval_denied"), body
        refusals = [
            json.loads(line)
            for line in h.audit_path.read_text().splitlines()
            if f'"approval_id":"{ids[1]}"' in line and '"reason":"approval_denied"' in line
        ]
        assert refusals, "the refused redeem was not recorded"


# --- refused requests: bounded inputs ------------------------------------------------------

CLIPPED: list[tuple[str, dict[str, Any], int]] = [
    ("one 60 KB value", {"junk": "x" * 60_000}, 1),
    ("one 60 KB name", {"n" * 60_000: 1}, 1),
    ("64 fields of 900 B", {f"f{i:02}": "y" * 900 for i in range(64)}, 64),
    ("a 60 KB list", {"junk": list(range(12_000))}, 1),
]


@pytest.mark.parametrize(("name", "inputs", "fields"), CLIPPED, ids=[c[0] for c in CLIPPED])
def test_refused_inputs_are_bounded_and_summarised(
    name: str, inputs: dict[str, Any], fields: int
) -> None:
    """Past the limit: at most 16 fields, each name and value cut, and the size and SHA-256
    of the whole kept, so the record stays small and the junk is still identifiable."""
    kept, summary = bound_inputs(inputs)
    whole = canonical(inputs)
    assert summary == {
        "bytes": len(whole),
        "fields": fields,
        "fields_kept": min(fields, MAX_REFUSED_FIELDS),
        "sha256": hashlib.sha256(whole).hexdigest(),
    }
    assert len(canonical(kept)) <= MAX_REFUSED_FIELDS * (2 * MAX_REFUSED_VALUE + 8)


def test_small_refused_inputs_are_recorded_as_given() -> None:
    """Under the limit nothing is cut and no summary is added."""
    inputs = {"ticket_id": "DROP TABLE", "usd": 5}
    assert bound_inputs(inputs) == (inputs, None)


@pytest.mark.integration
async def test_a_flood_of_large_refused_requests_grows_the_trail_by_little(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Fifty 60 KB requests refused as invalid_inputs add at most ~3 KB each to the trail
    (before: each wrote its 60 KB), and each record says what was cut."""
    agent = unique_agent("flood")
    path = write_manifest(tmp_path, MANIFEST.format(agent=agent))
    async with running_sidecar(openbao, path, tmp_path) as h:
        before = h.audit_path.stat().st_size
        for _ in range(50):
            status, body, _ = await h.ask("pay.out", {"junk": "x" * 60_000})
            assert (status, body.get("reason")) == (403, "invalid_inputs"), body
        grown = h.audit_path.stat().st_size - before
        last = json.loads(h.audit_path.read_text().splitlines()[-1])
    assert grown / 50 < 3_000, f"{grown / 50:.0f} B per refused request"
    assert last["inputs_clipped"]["bytes"] > 60_000
