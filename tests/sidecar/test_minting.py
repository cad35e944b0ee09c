"""The mint deadline: an answer within it is returned; past it the caller gets
BackendUnavailable at once, and a credential that arrives later goes to the late handler
(to be revoked), never to the agent. No Vault: the Vault call is a future the test settles."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from broker.core.errors import BackendUnavailable
from broker.settings import VaultSettings
from broker.sidecar.minting import IssuedCredential, Minter
from broker.sidecar.signing import ActionTokenSigner
from broker.vault.session import VaultSession


def minter(deadline: float) -> Minter:
    session = VaultSession(VaultSettings(addr="http://127.0.0.1:9", token=SecretStr("t")))
    signer = ActionTokenSigner("agent-x", lambda csr, ttl: pytest.fail("no certificate here"))
    return Minter(session, signer, deadline=deadline)


def credential() -> IssuedCredential:
    return IssuedCredential("vault_token", "accessor-1", 0.0, 30, {"token": "s.x"})


async def test_answer_within_the_deadline_is_returned() -> None:
    """A Vault answer in time is the agent's credential; nothing is handed to on_late."""
    late: list[IssuedCredential] = []

    async def on_late(issued: IssuedCredential) -> None:
        late.append(issued)

    async def answers() -> IssuedCredential:
        return credential()

    got = await minter(5.0).within_deadline(answers(), "vault_token mint", on_late)
    assert got.credential_id == "accessor-1"
    assert late == []


async def test_late_answer_is_refused_then_handed_to_the_late_handler() -> None:
    """Past the deadline: BackendUnavailable naming the deadline; when Vault answers later,
    the credential goes to on_late (which revokes it) exactly once."""
    vault: asyncio.Future[IssuedCredential] = asyncio.get_running_loop().create_future()
    late: asyncio.Queue[IssuedCredential] = asyncio.Queue()

    async def on_late(issued: IssuedCredential) -> None:
        await late.put(issued)

    m = minter(0.01)
    with pytest.raises(BackendUnavailable, match=r"within 0\.01 s"):
        await m.within_deadline(vault, "vault_token mint", on_late)
    vault.set_result(credential())
    handed = await asyncio.wait_for(late.get(), 5.0)
    assert handed.credential_id == "accessor-1"
    await m.settle_late(5.0)
    assert late.empty()


async def test_late_failure_hands_nothing_over() -> None:
    """A call that fails after the deadline created nothing: on_late is not called."""
    vault: asyncio.Future[IssuedCredential] = asyncio.get_running_loop().create_future()
    called: list[IssuedCredential] = []

    async def on_late(issued: IssuedCredential) -> None:
        called.append(issued)

    m = minter(0.01)
    with pytest.raises(BackendUnavailable):
        await m.within_deadline(vault, "dynamic mint", on_late)
    vault.set_exception(BackendUnavailable("Vault refused"))
    await asyncio.sleep(0)  # let the done-callback run
    await m.settle_late(1.0)
    assert called == []


async def test_bounded_refuses_at_the_deadline_and_lets_the_call_finish() -> None:
    """bounded(): BackendUnavailable naming what timed out; the shielded call still completes
    (a Vault write in progress is never cut half-way)."""
    from broker.sidecar.minting import bounded

    vault: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with pytest.raises(BackendUnavailable, match="reading the approval"):
        await bounded(vault, 0.01, "reading the approval")
    assert not vault.cancelled()
    vault.set_result("done")
    assert await vault == "done"
