"""The approval store against a real OpenBao: create, read, list, and check-and-set so two
operators cannot both act on one approval."""

from __future__ import annotations

import secrets
from dataclasses import replace

import pytest

from broker.core.approvals import Approval, ApprovalError, Event, State, decide_as, transition
from broker.core.decision import Raci, inputs_hash
from broker.core.errors import NotFound, PermissionDenied
from broker.dev.devstack import DevServer
from broker.vault.approvals import ApprovalConflict, ApprovalStore
from broker.vault.bootstrap import bootstrap
from broker.vault.session import make_client
from tests.harness import root_client, unique_agent

pytestmark = pytest.mark.integration

APPROVER = "finance-ops@acme.example"


def make(agent: str, **changes: object) -> Approval:
    inputs = {"amount_usd": 120}
    approval = Approval(
        id="apr_" + secrets.token_hex(10),
        agent=agent,
        action="stripe.refund",
        inputs=inputs,
        inputs_hash=inputs_hash(agent, "stripe.refund", inputs),
        workflow=None,
        request_id="req_1",
        reason="needs_human_approval",
        message="",
        raci=Raci(APPROVER, approvers=(APPROVER,)),
        policy_version="p1",
        manifest_hash="sha256:x",
        created_at=1000.0,
        expires_in=10**9,
    )
    return replace(approval, **changes)  # type: ignore[arg-type]


@pytest.fixture
def store(openbao: DevServer) -> ApprovalStore:
    bootstrap(root_client(openbao), [], addr=openbao.addr)
    return ApprovalStore(root_client(openbao), openbao.addr)


def test_create_read_list_find(store: ApprovalStore) -> None:
    """A created approval reads back equal, is listed for its agent, and is found by id alone."""
    agent = unique_agent("apr")
    first, second = make(agent), make(agent, created_at=2000.0)
    store.create(second)
    store.create(first)
    got, version = store.read(agent, first.id) or (None, 0)
    assert (got, version) == (first, 1)
    assert [a.id for a in store.list(agent)] == [first.id, second.id]
    assert agent in store.agents()
    assert store.find(second.id)[0] == second


def test_create_never_overwrites(store: ApprovalStore) -> None:
    """Creating an approval whose id exists is a conflict, and the stored one is unchanged."""
    approval = make(unique_agent("apr"))
    store.create(approval)
    with pytest.raises(ApprovalError):
        store.create(replace(approval, reason="forged"))
    assert store.read(approval.agent, approval.id) == (approval, 1)


def test_missing_approval_is_not_found(store: ApprovalStore) -> None:
    """An unknown id is NotFound, for one agent and across all agents."""
    assert store.read("nobody", "apr_" + "0" * 20) is None
    with pytest.raises(NotFound):
        store.find("apr_" + "0" * 20)


def test_two_operators_cannot_both_act(store: ApprovalStore) -> None:
    """Another operator approves between our read and our write: our deny is decided again
    against the approved state, and refused."""
    approval = make(unique_agent("apr"))
    store.create(approval)
    raced: list[int] = []

    def deny_while_another_approves(seen: Approval) -> Approval:
        if not raced:
            raced.append(1)
            store.update(
                seen.agent,
                seen.id,
                lambda a: decide_as(a, Event.approve, identity=APPROVER, at=2000.0, reason=""),
            )
        return decide_as(seen, Event.deny, identity=APPROVER, at=2001.0, reason="no")

    with pytest.raises(ApprovalError, match="is approved: it cannot be denied"):
        store.update(approval.agent, approval.id, deny_while_another_approves)
    stored, version = store.read(approval.agent, approval.id) or (approval, 0)
    assert (stored.state, version) == (State.approved, 2)


def test_a_write_that_keeps_losing_is_a_conflict(store: ApprovalStore) -> None:
    """When every attempt loses to another writer, update gives up with a conflict."""
    approval = make(unique_agent("apr"))
    store.create(approval)

    def always_raced(seen: Approval) -> Approval:
        store.update(seen.agent, seen.id, lambda a: replace(a, noted=a.noted + 1), attempts=1)
        return replace(seen, reason="mine")

    with pytest.raises(ApprovalConflict, match="someone else acted first"):
        store.update(approval.agent, approval.id, always_raced)


def test_update_applies_the_lifecycle(store: ApprovalStore) -> None:
    """update refuses a transition the table does not allow, leaving the document as it was."""
    approval = make(unique_agent("apr"))
    store.create(approval)
    with pytest.raises(ApprovalError):
        store.update(
            approval.agent,
            approval.id,
            lambda a: transition(a, Event.redeem, at=2000.0, by="sidecar"),
        )
    assert store.read(approval.agent, approval.id) == (approval, 1)


def test_sidecar_token_cannot_touch_another_agents_approvals(
    openbao: DevServer, store: ApprovalStore
) -> None:
    """A token with one agent's sidecar policy is refused on another agent's approvals."""
    mine, theirs = unique_agent("apr"), unique_agent("apr")
    from broker.vault.layout import sidecar_policy
    from broker.vault.policies import sidecar_policy_hcl

    root = root_client(openbao)
    root.sys.create_or_update_policy(sidecar_policy(mine), sidecar_policy_hcl(mine, []))
    token = root.auth.token.create(policies=[sidecar_policy(mine)], ttl="5m")["auth"][
        "client_token"
    ]
    sidecar = ApprovalStore(make_client(openbao.addr, token), openbao.addr)
    sidecar.create(make(mine))
    with pytest.raises(PermissionDenied):
        sidecar.create(make(theirs))
