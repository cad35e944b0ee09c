"""A live sidecar under faults: Vault frozen under load, the audit disk full, Vault absent at
start-up, a stalled event loop, the CA replaced. Each must fail closed in bounded time,
say so in /readyz, and recover without a restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import hvac
import pytest

from broker.audit.file import chain_files
from broker.audit.records import ChainVerifier
from broker.core.errors import VerificationError
from broker.dev.devstack import DevServer
from broker.sidecar.probe import probe
from broker.vault.pki import fetch_ca_pem
from broker.verify import Verifier
from tests.harness import (
    REPO,
    Harness,
    forward,
    free_port,
    root_client,
    running_sidecar,
    unique_agent,
    write_manifest,
)

pytestmark = pytest.mark.integration

UNCAPPED = """\
agent: {agent}
policy_version: faults-1
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
    credential: {{kind: vault_token, policies: [stripe-refund], ttl: 60s}}
    inputs:
      ticket_id: {{type: string}}
      amount_usd: {{type: number}}
    approval:
      when: {{amount_usd: {{gt: 100}}}}
      approvers: [finance-ops@acme.example]
      reason: needs_human_approval_over_100
"""


def _records(path: Path) -> list[dict[str, Any]]:
    """Every record of the trail, across its sealed segments too (a load test rotates it)."""
    lines = [line for f in chain_files(path) for line in f.read_text().splitlines()]
    return [json.loads(line) for line in lines if line.strip()]


def live_child_tokens(client: hvac.Client, agent: str) -> dict[str, dict[str, Any]]:
    """Every live Vault token minted for ``agent``: accessor -> metadata, counted in Vault."""
    found: dict[str, dict[str, Any]] = {}
    for accessor in client.list("auth/token/accessors")["data"]["keys"]:
        try:
            data = client.auth.token.lookup_accessor(accessor)["data"]
        except hvac.exceptions.InvalidRequest:
            continue  # revoked or expired between the list and the lookup
        meta = data.get("meta") or {}
        if meta.get("agent") == agent:
            found[accessor] = meta
    return found


async def _load(
    h: Harness, stop: asyncio.Event, out: list[tuple[float, int]], usd: float = 1
) -> None:
    """Mints in a loop (or, over $100, approval requests stored in Vault)."""
    while not stop.is_set():
        started = time.monotonic()
        status, _, _ = await h.ask("stripe.refund", {"ticket_id": "CS-1", "amount_usd": usd})
        out.append((time.monotonic() - started, status))


async def test_vault_frozen_under_load_bounded_answers_and_no_unrecorded_credential(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Vault SIGSTOPped under vault_token load (and approval requests, stored in Vault): no
    answer takes over 2.5 s, and every child token alive in Vault afterwards was handed out
    with a record (late ones are revoked)."""
    agent = unique_agent("frozen")
    manifest = write_manifest(tmp_path, UNCAPPED.format(agent=agent))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        stop, results = asyncio.Event(), []
        workers = [asyncio.create_task(_load(h, stop, results)) for _ in range(16)]
        workers += [asyncio.create_task(_load(h, stop, results, 500)) for _ in range(4)]
        await asyncio.sleep(1.0)
        openbao.pause()
        try:
            await asyncio.sleep(4.0)
        finally:
            openbao.resume()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*workers)
        await h.sidecar.service.minter.settle_late(30.0)  # type: ignore[union-attr]
        records = _records(h.audit_path)
    slowest = max(seconds for seconds, _ in results)
    statuses = {status for _, status in results}
    assert slowest < 2.5, f"an answer took {slowest:.2f} s with Vault frozen"
    assert {200, 202, 503} <= statuses
    handed_out = {
        r["vault_id"] for r in records if r.get("type") == "decision" and r.get("vault_id")
    }
    late = [r for r in records if r.get("type") == "late_credential"]
    live = live_child_tokens(root_client(openbao), agent)
    unrecorded = set(live) - handed_out
    assert not unrecorded, f"{len(unrecorded)} live tokens in Vault without a record"
    assert late, "no request was in flight when Vault froze: the test proved nothing"
    assert all(r["revoked"] for r in late)
    assert not set(live) & {r["vault_id"] for r in late}
    abandoned = {r["abandoned_credential_id"] for r in records if "abandoned_credential_id" in r}
    assert {r["credential_id"] for r in late} <= abandoned


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s")
        await asyncio.sleep(0.1)


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs for the audit trail: a disk that really fills up (needs root)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


async def test_audit_disk_full_then_freed_readiness_and_minting_recover(
    openbao: DevServer, tmp_path: Path, small_disk: Path
) -> None:
    """The audit disk fills: mints are refused 503 audit_unavailable and /readyz is 503 naming
    the trail; once space is freed, /readyz is 200 and minting resumes, with no restart, and
    the trail still verifies end to end with a record of the outage."""
    manifest = write_manifest(tmp_path, UNCAPPED.format(agent=unique_agent("diskfull")))
    trail = small_disk / "audit.jsonl"
    async with running_sidecar(openbao, manifest, tmp_path, audit_path=trail) as h:
        assert (await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"}))[0] == 200
        filler = _fill(small_disk)
        for _ in range(50):  # the trail's last page may still have room for a few records
            refused = await h.ask("zendesk.get_ticket", {"ticket_id": "CS-2"})
            if refused[0] != 200:
                break
        refused_token = await h.ask("stripe.refund", {"ticket_id": "CS-2", "amount_usd": 1})
        not_ready = await h.raw("GET", "/readyz")
        alive = await h.raw("GET", "/healthz")
        port = int(h.url.rpartition(":")[2])
        probes = [
            await asyncio.to_thread(probe, ("127.0.0.1", port), path)
            for path in ("/readyz", "/healthz")
        ]
        filler.unlink()

        async def ready() -> bool:
            return (await h.raw("GET", "/readyz"))[0] == 200

        await _until(ready, 10.0, "/readyz 200 after the disk was freed")
        again = await h.ask("zendesk.get_ticket", {"ticket_id": "CS-3"})
    assert (refused[0], refused[1].get("error")) == (503, "audit_unavailable")
    assert (refused_token[0], refused_token[1].get("error")) == (503, "audit_unavailable")
    assert not_ready[0] == 503
    assert "ENOSPC" in not_ready[1]["problems"]["audit"]
    assert alive[0] == 200
    assert probes == [False, True]  # `broker probe` (the image's health check) says not ready
    assert again[0] == 200
    verifier = ChainVerifier()
    problems = [
        p for line in trail.read_bytes().splitlines(keepends=True) if (p := verifier.feed(line))
    ]
    assert problems == []
    types = [r.get("type") for r in _records(trail)]
    assert "audit_recovered" in types


async def test_start_with_vault_down_stays_up_then_serves_once_vault_answers(
    openbao: DevServer, tmp_path: Path
) -> None:
    """A sidecar started while nothing answers at its Vault address stays up, /readyz 503
    naming Vault and mints refused 503; once Vault answers there, it serves, unrestarted."""
    manifest = write_manifest(tmp_path, UNCAPPED.format(agent=unique_agent("coldstart")))
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    async with running_sidecar(openbao, manifest, tmp_path, vault_addr=addr) as h:
        not_ready = await h.raw("GET", "/readyz")
        refused = await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"})
        async with forward(port, openbao.addr):

            async def ready() -> bool:
                return (await h.raw("GET", "/readyz"))[0] == 200

            await _until(ready, 15.0, "/readyz 200 once Vault answered")
            minted = await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"})
            token = await h.ask("stripe.refund", {"ticket_id": "CS-1", "amount_usd": 1})
    assert not_ready[0] == 503
    assert "vault" in not_ready[1]["problems"]
    assert (refused[0], refused[1]["reason"]) == (503, "backend_unavailable")
    assert minted[0] == 200
    assert token[0] == 200


def test_image_health_check_probes_readiness() -> None:
    """The Dockerfile's health check is `broker probe` on /readyz, not liveness."""
    dockerfile = (REPO / "Dockerfile").read_text()
    check = dockerfile[dockerfile.index("HEALTHCHECK") :].split("\n\n")[0]
    assert '"broker", "probe"' in check
    assert '"/readyz"' in check
    assert "/healthz" not in check


def _post_from_thread(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - a loopback test URL
        f"{url}/v1/credentials",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback test URL
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_poll_delayed_by_paused_event_loop_is_no_spurious_refusal(
    openbao: DevServer, tmp_path: Path
) -> None:
    """The event loop stalls 2.5 s (a paused process, CPU starvation) while a request waits:
    the control state looks stale only because the poll was late, so the sidecar polls at
    once and mints instead of a spurious 503."""
    manifest = write_manifest(tmp_path, UNCAPPED.format(agent=unique_agent("stall")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        assert (await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"}))[0] == 200
        body = {"action": "zendesk.get_ticket", "inputs": {"ticket_id": "CS-2"}}
        loop = asyncio.get_running_loop()
        loop.call_soon(time.sleep, 2.5)  # the whole loop stops: no poll, no handler
        asked = asyncio.create_task(asyncio.to_thread(_post_from_thread, h.url, body))
        status, answer = await asked
        stale_refusals = h.sidecar.runtime.stale_refusals
    assert (status, answer.get("reason")) == (200, None)
    assert stale_refusals == 0


async def test_control_poll_stopped_refuses_with_control_state_stale(
    openbao: DevServer, tmp_path: Path
) -> None:
    """With Vault healthy but no poll answered for longer than the bound (the poll loop is
    stopped here), mints are refused 503 control_state_stale and /readyz names it."""
    manifest = write_manifest(tmp_path, UNCAPPED.format(agent=unique_agent("stale")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        runtime = h.sidecar.runtime
        assert runtime._task is not None
        runtime._task.cancel()
        await asyncio.sleep(1.5)  # real time passes for the monotonic staleness bound
        refused = await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"})
        ready = await h.raw("GET", "/readyz")
    assert (refused[0], refused[1]["reason"]) == (503, "control_state_stale")
    assert "old" in refused[1]["detail"]
    assert ready[0] == 503
    assert set(ready[1]["problems"]) == {"control_state"}


async def test_idle_and_half_sent_connections_cannot_hold_the_sidecar(
    openbao: DevServer, tmp_path: Path
) -> None:
    """200 idle sockets, half stuck mid-headers, against a cap of 100: a valid mint still
    succeeds (its latency is measured by `broker bench idle`), the sidecar holds no more than the cap, and after the idle timeout
    every one of those sockets has been closed by the sidecar."""
    manifest = write_manifest(tmp_path, UNCAPPED.format(agent=unique_agent("idle")))
    async with running_sidecar(
        openbao, manifest, tmp_path, idle_timeout=1.0, max_connections=100
    ) as h:
        port = int(h.url.rpartition(":")[2])
        idle = []
        for n in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if n % 2:
                writer.write(b"GET /v1/scope HTTP/1.1\r\nHost: sidecar\r\n")  # never finished
            idle.append((reader, writer))
        await asyncio.sleep(0.2)
        status = (await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"}))[0]
        held = len(h.sidecar._runner.server.connections)  # type: ignore[union-attr]
        closed = await asyncio.gather(
            *(asyncio.wait_for(reader.read(), 5.0) for reader, _ in idle), return_exceptions=True
        )
        for _, writer in idle:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in idle), return_exceptions=True)
    assert status == 200
    assert held <= 100
    assert all(isinstance(c, bytes) and not c.strip() for c in closed), "a socket stayed open"


async def test_ca_replaced_under_a_running_sidecar_key_is_certified_again(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new root CA becomes Vault's published one while the sidecar runs: the sidecar
    notices its certificate no longer chains, certifies its key again, and its tokens
    verify under the new CA; none minted after that is signed under the old one."""
    # The CA is checked every 5 s; the socket drops a keep-alive connection idle for 5 s,
    # which the harness's client would then reuse. A 1 s check keeps the wait shorter.
    monkeypatch.setattr("broker.sidecar.keyupkeep.CA_CHECK_EVERY", 1.0)
    manifest = write_manifest(tmp_path, UNCAPPED.format(agent=unique_agent("newca")))
    client = root_client(openbao)
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        old_ca = fetch_ca_pem(openbao.addr)
        assert (await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"}))[0] == 200
        rotated = client.write_data(
            "broker-pki/root/rotate/internal",
            data={"common_name": "broker test CA 2", "key_type": "ed25519", "ttl": "87600h"},
        )
        client.write_data("broker-pki/root/replace", data={"default": rotated["data"]["issuer_id"]})
        new_ca = fetch_ca_pem(openbao.addr)

        async def recertified() -> bool:
            return h.sidecar.runtime.recertified >= 1

        await _until(recertified, 10.0, "the key certified again under the new CA")
        status, body, _ = await h.ask("zendesk.get_ticket", {"ticket_id": "CS-2"})
        ready = await h.raw("GET", "/readyz")
    assert new_ca != old_ca
    assert status == 200
    token = body["credential"]["token"]
    claims = Verifier([new_ca]).verify(token, audience="zendesk-gateway")
    assert claims.action == "zendesk.get_ticket"
    with pytest.raises(VerificationError):
        Verifier([old_ca]).verify(token, audience="zendesk-gateway")
    assert ready[0] == 200
