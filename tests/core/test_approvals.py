"""The approval lifecycle (pure): the state table, expiry by the clock, the input binding,
and who may decide."""

from __future__ import annotations

from dataclasses import replace

import pytest

from broker.core.approvals import (
    TRANSITIONS,
    Approval,
    ApprovalError,
    Decided,
    Event,
    NotAnApprover,
    State,
    approved_by,
    check_id,
    decide_as,
    describe_table,
    recipients,
    redeem_refusal,
    transition,
    vouch_problem,
)
from broker.core.decision import Raci, inputs_hash
from broker.core.errors import NotFound
from broker.core.reasons import ReasonCode

T0 = 1_773_842_531.0  # 2026-03-18T14:02:11Z
INPUTS = {"ticket_id": "CS-19422", "amount_usd": 120}
RACI = Raci(
    "finance-ops@acme.example",
    ("billing-lead@acme.example",),
    ("billing-alerts@acme.example",),
    ("finance-ops@acme.example",),
)


def make(**changes: object) -> Approval:
    base = Approval(
        id="apr_" + "0" * 20,
        agent="support-refund-agent",
        action="stripe.refund",
        inputs=INPUTS,
        inputs_hash=inputs_hash("support-refund-agent", "stripe.refund", INPUTS),
        workflow="refund_request",
        request_id="req_8f1c2",
        reason="needs_human_approval_over_100",
        message="Refund requires approval because amount exceeds $100 threshold.",
        raci=RACI,
        policy_version="refund-policy-2026-02",
        manifest_hash="sha256:x",
        created_at=T0,
        expires_in=900,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


ALLOWED = [
    (State.pending, Event.approve, State.approved),
    (State.pending, Event.deny, State.denied),
    (State.pending, Event.expire, State.expired),
    (State.approved, Event.redeem, State.redeemed),
    (State.approved, Event.expire, State.expired),
    (State.redeemed, Event.reopen, State.approved),
]


def test_table_is_exactly_the_documented_lifecycle() -> None:
    """The table holds the six documented transitions and nothing else."""
    assert {(s, e): t for s, e, t in ALLOWED} == dict(TRANSITIONS)
    assert describe_table().count("\n") == len(ALLOWED) + 2


@pytest.mark.parametrize(
    ("state", "event"), [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS]
)
def test_every_other_transition_is_refused(state: State, event: Event) -> None:
    """A (state, event) pair outside the table raises ApprovalError and changes nothing."""
    approval = make(state=state)
    with pytest.raises(ApprovalError):
        transition(approval, event, at=T0 + 1000 if event is Event.expire else T0 + 1, by="x")


def test_pending_expires_at_its_deadline_without_a_write() -> None:
    """A pending approval reads as expired from created_at + expires_in on."""
    approval = make()
    assert approval.state_at(T0 + 899.9) is State.pending
    assert approval.state_at(T0 + 900) is State.expired


def test_approval_opens_a_fresh_redeem_window() -> None:
    """An approval given late may be redeemed for expires_in seconds after it was given."""
    approved = transition(make(), Event.approve, at=T0 + 800, by="finance-ops@acme.example")
    assert approved.state_at(T0 + 1000) is State.approved
    assert approved.state_at(T0 + 1700) is State.expired
    assert approved_by(approved) == "finance-ops@acme.example"


def test_expire_before_deadline_is_refused() -> None:
    """Nobody can mark an approval expired before its deadline."""
    with pytest.raises(ApprovalError):
        transition(make(), Event.expire, at=T0 + 10, by="sidecar")


def test_approve_after_deadline_is_refused() -> None:
    """A lapsed request cannot be approved, even if nobody wrote 'expired' yet."""
    with pytest.raises(ApprovalError, match="expired"):
        decide_as(
            make(), Event.approve, identity="finance-ops@acme.example", at=T0 + 901, reason=""
        )


def test_only_a_listed_approver_may_decide() -> None:
    """Someone not in approval.approvers (even the informed) is refused with NotAnApprover."""
    for who in ("billing-alerts@acme.example", "root", ""):
        with pytest.raises(NotAnApprover):
            decide_as(make(), Event.approve, identity=who, at=T0 + 1, reason="")
    done = decide_as(
        make(), Event.deny, identity="finance-ops@acme.example", at=T0 + 1, reason="no"
    )
    assert done.state is State.denied
    assert done.history[-1].reason == "no"


def test_operators_cannot_redeem_or_expire() -> None:
    """decide_as takes approve or deny only: redeem and expire belong to the sidecar."""
    with pytest.raises(ApprovalError):
        decide_as(make(), Event.redeem, identity="finance-ops@acme.example", at=T0, reason="")


def test_second_decision_is_refused() -> None:
    """Once denied, an approval cannot be approved."""
    denied = transition(make(), Event.deny, at=T0 + 1, by="finance-ops@acme.example")
    with pytest.raises(ApprovalError, match="denied"):
        transition(denied, Event.approve, at=T0 + 2, by="finance-ops@acme.example")


REFUSALS = [
    ("pending", make(), None, None),
    ("denied", make(state=State.denied), None, ReasonCode.approval_denied),
    ("expired", make(state=State.expired), None, ReasonCode.approval_expired),
    ("spent", make(state=State.redeemed), None, ReasonCode.approval_expired),
    ("other amount", make(state=State.approved), {**INPUTS, "amount_usd": 121}, "invalid_inputs"),
    ("extra input", make(state=State.approved), {**INPUTS, "currency": "usd"}, "invalid_inputs"),
    ("same inputs", make(state=State.approved), dict(INPUTS), None),
]


@pytest.mark.parametrize(
    ("name", "approval", "inputs", "expected"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_redeem_refusals(
    name: str, approval: Approval, inputs: dict[str, object] | None, expected: object
) -> None:
    """Each state and input mismatch gives its stable refusal reason (or none)."""
    got = redeem_refusal(approval, T0 + 1, None, inputs)
    assert (got[0] if got else None) == expected


def test_json_round_trip() -> None:
    """An approval survives to_json/from_json unchanged, history included."""
    approval = transition(make(), Event.approve, at=T0 + 5, by="finance-ops@acme.example")
    assert Approval.from_json(approval.to_json()) == approval


def test_ids_that_could_name_another_path_are_refused() -> None:
    """Only apr_ plus 20 hex digits is an id: no slashes, dots or other agents' paths."""
    assert check_id("apr_" + "a" * 20)
    for bad in ("../control/global", "apr_" + "a" * 19, "apr_" + "A" * 20, "apr_x/../y"):
        with pytest.raises(NotFound):
            check_id(bad)


def test_recipients_are_accountable_consulted_informed_once_each() -> None:
    """Notifications go to A, C and I, in that order, without duplicates."""
    assert recipients(RACI) == [
        "finance-ops@acme.example",
        "billing-lead@acme.example",
        "billing-alerts@acme.example",
    ]


# -- the approver's own decision record backs an approval ---------------------------------------

APPROVER = "finance-ops@acme.example"
APPROVED = transition(make(), Event.approve, at=T0 + 60, by=APPROVER)
GENUINE = Decided.of(make(), APPROVER, Event.approve, T0 + 60, "")
LISTED = (APPROVER,)

UNBACKED = [
    ("no approve step", make(), LISTED, GENUINE, "nobody is not an approver"),
    ("approver not listed now", APPROVED, ("risk@acme.example",), GENUINE, "is not an approver"),
    ("no decision record", APPROVED, LISTED, None, "recorded no decision"),
    ("a denial", APPROVED, LISTED, replace(GENUINE, event=Event.deny), "not this approve"),
    ("another approval's record", APPROVED, LISTED, replace(GENUINE, approval_id="apr_" + "1" * 20),
     "not this approve"),
    ("another agent's record", APPROVED, LISTED, replace(GENUINE, agent="other-agent"),
     "not this approve"),
    ("another action's record", APPROVED, LISTED, replace(GENUINE, action="stripe.payout"),
     "not this approve"),
    ("a record by someone else", APPROVED, LISTED, replace(GENUINE, approver="mallory@x.example"),
     "not this approve"),
    ("inputs changed, hash kept", replace(APPROVED, inputs={**INPUTS, "amount_usd": 499}), LISTED,
     GENUINE, "other inputs"),
    ("inputs and hash changed",
     replace(APPROVED, inputs={**INPUTS, "amount_usd": 499}, inputs_hash=inputs_hash(
         "support-refund-agent", "stripe.refund", {**INPUTS, "amount_usd": 499})),
     LISTED, GENUINE, "other inputs"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "approval", "approvers", "decided", "why"), UNBACKED, ids=[u[0] for u in UNBACKED]
)
def test_unbacked_approval_is_not_honoured(
    label: str,
    approval: Approval,
    approvers: tuple[str, ...],
    decided: Decided | None,
    why: str,
) -> None:
    """An approval counts only with its listed approver's own record of exactly this request."""
    del label
    problem = vouch_problem(approval, approvers, decided)
    assert problem is not None
    assert why in problem


def test_backed_approval_is_honoured() -> None:
    """The approver's record of exactly this approval, action and inputs backs it."""
    assert vouch_problem(APPROVED, LISTED, GENUINE) is None


def test_decision_record_round_trips() -> None:
    """What the approver writes to Vault reads back as the same record."""
    assert Decided.from_json(GENUINE.to_json()) == GENUINE


def test_deny_step_is_backed_by_a_deny_record() -> None:
    """A deny step counts only with the approver's own deny record; an approve record is not one."""
    denied = transition(make(), Event.deny, at=T0 + 60, by=APPROVER, reason="no")
    step = denied.history[-1]
    record = Decided.of(make(), APPROVER, Event.deny, T0 + 60, "no")
    assert vouch_problem(denied, LISTED, record, step) is None
    assert "recorded no decision" in (vouch_problem(denied, LISTED, None, step) or "")
    assert "not this deny" in (vouch_problem(denied, LISTED, GENUINE, step) or "")
