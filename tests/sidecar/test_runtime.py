"""The runtime's view of its own health, on injected clocks: when control state is stale,
what /readyz names, and that a stale refusal is logged (no Vault needed: nothing polls)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from broker.core.errors import BackendUnavailable, ConfigError
from broker.settings import VaultSettings
from broker.sidecar.nodewire import Confirmation
from broker.sidecar.runtime import STALE_AFTER, Runtime


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def runtime(mono: Clock) -> Runtime:
    settings = VaultSettings(addr="http://127.0.0.1:9", token=SecretStr("t"))
    return Runtime("agent-x", settings, clock=Clock(1_700_000_000.0), monotonic=mono)


@pytest.mark.parametrize(
    ("vault_ok", "read_ago", "expected"),
    [
        (False, 0.0, {"vault"}),
        (True, 0.0, set()),
        (True, STALE_AFTER - 0.01, set()),
        (True, STALE_AFTER, {"control_state"}),
        (True, 30.0, {"control_state"}),
    ],
)
def test_problems_name_vault_and_stale_control_state(
    vault_ok: bool, read_ago: float, expected: set[str]
) -> None:
    """Staleness is the monotonic age of the last read sent; Vault down is named apart."""
    mono = Clock()
    rt = runtime(mono)
    rt.vault_ok, rt.control_read_at = vault_ok, mono.now - read_ago
    problems = rt.problems()
    problems.pop("certificate")  # no key is certified in these tests
    assert set(problems) == expected
    assert rt.available() is (expected == set())


def test_no_certificate_is_a_problem() -> None:
    """Until a key is certified, readiness says so."""
    rt = runtime(Clock())
    assert rt.problems()["certificate"] == "no certified signing key yet"


async def test_stale_state_waits_for_a_poll_then_refuses_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No poll answers within the wait: the refusal is counted and logged with the age."""
    mono = Clock()
    rt = runtime(mono)
    rt.vault_ok, rt.control_read_at = True, mono.now - 5.0
    with caplog.at_level(logging.WARNING, logger="broker.sidecar.runtime"):
        await rt.refresh_now(wait=0.01)
    assert rt.stale_refusals == 1
    assert "control state is 5.00 s old" in caplog.text
    assert "control state is 5.00 s old" in rt.stale_detail()


def test_start_without_any_vault_credentials_fails_at_once() -> None:
    """Missing credentials are a settings mistake: start-up refuses, it does not wait."""
    rt = Runtime("agent-x", VaultSettings(addr="http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="no Vault credentials"):
        rt.session.check_credentials()


class FakeControlKV:
    """KV versions of the control documents, as the poller reads them; counts the reads."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {"control/version": 1}  # written by bootstrap
        self.docs: dict[str, dict[str, object]] = {}
        self.reads: list[str] = []

    async def kv_read_versioned(self, path: str) -> tuple[dict[str, object] | None, int]:
        self.reads.append(path)
        return self.docs.get(path), self.versions.get(path, 0)

    async def kv_version(self, path: str) -> tuple[int, str]:
        self.reads.append(path)
        version = self.versions.get(path, 0)
        return version, f"written-{version}" if version else ""

    def write(self, path: str, doc: dict[str, object]) -> None:
        self.docs[path] = doc
        self.versions[path] = self.versions.get(path, 0) + 1
        self.versions["control/version"] = self.versions.get("control/version", 0) + 1


@pytest.mark.parametrize(
    ("step", "full_read"),
    [
        ("nothing", False),
        ("bumped write", True),
        ("full read due", True),
        ("raw write, not due", False),
    ],
)
async def test_an_idle_poll_reads_the_documents_only_when_the_version_moved_or_a_full_read_is_due(
    step: str, full_read: bool
) -> None:
    """One read of control/version per idle poll; the documents when it moved, or when the
    last full read is full_read_every old (a raw write without the bump is read then)."""
    mono = Clock()
    rt = runtime(mono)
    kv = FakeControlKV()
    rt._poller = kv  # type: ignore[assignment]
    await rt._read_control()  # the first poll reads everything
    assert rt.full_reads == 1
    kv.reads.clear()
    mono.now += 1.0
    if step == "bumped write":
        kv.write("control/agents/agent-x", {"killed": True})
    elif step == "full read due":
        mono.now += rt.full_read_every
    elif step == "raw write, not due":
        kv.docs["control/agents/agent-x"] = {"killed": True}
    await rt._read_control()
    assert rt.full_reads == (2 if full_read else 1)
    assert len(kv.reads) == (4 if full_read else 1)
    assert rt.control.killed is (step == "bumped write")


async def test_a_missing_version_document_fails_closed() -> None:
    """A standby answers 404 for every KV read: that never reads as "nothing revoked"."""
    rt = runtime(Clock())
    kv = FakeControlKV()
    kv.versions.clear()
    rt._poller = kv  # type: ignore[assignment]
    with pytest.raises(BackendUnavailable, match="standby"):
        await rt._read_control()
    assert rt.full_reads == 0


@pytest.mark.parametrize(
    ("agent_says", "reads", "mismatch"),
    [
        ("the write of our last full read", 0, False),
        # The periodic full read: the documents, not the version the agent just confirmed.
        ("the write of our last full read, a full read due", 3, False),
        ("the same number, another write", 1, True),  # an agent of another Vault
        ("a version that moved", 4, False),  # read by the sidecar itself, then the documents
    ],
)
async def test_the_node_agents_word_counts_only_for_the_write_the_sidecar_read_itself(
    agent_says: str, reads: int, mismatch: bool
) -> None:
    """The agent may say "unchanged since your last full read" (no read); any other version
    is read by the sidecar itself before anything is based on it."""
    mono = Clock()
    rt = runtime(mono)
    kv = FakeControlKV()
    rt._poller = kv  # type: ignore[assignment]
    await rt._read_control()
    kv.reads.clear()
    rt.use_node_agent(Path("/nonexistent/node.sock"))
    assert rt.node is not None
    stamp = {"the same number, another write": "elsewhere"}.get(agent_says, "written-1")
    if agent_says.endswith("a full read due"):
        mono.now += rt.full_read_every
        kv.docs["control/agents/agent-x"] = {"killed": True}  # a raw write: no bump
    if agent_says == "a version that moved":
        kv.write("control/agents/agent-x", {"killed": True})
        stamp = "written-2"
    rt.node.latest, rt.node.problem = (
        Confirmation(kv.versions["control/version"], mono.now, stamp),
        "",
    )
    await rt._read_control()
    assert len(kv.reads) == reads
    assert rt.agent_mismatch is mismatch
    assert rt.control.killed is agent_says.endswith(("a version that moved", "a full read due"))
