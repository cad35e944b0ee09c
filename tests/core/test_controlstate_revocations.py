"""Control state as the verifier reads it: per-action revocation (``revoke --agent A --action
X``) refuses that action's tokens, and only those; the documents decode as written."""

from __future__ import annotations

import time

import pytest

from broker.core.claims import ActionClaims
from broker.core.controlstate import ControlState
from broker.core.errors import VerificationError
from broker.verify import Verifier
from tests.tokenfactory import ACTION, AGENT, AUDIENCE, FakeCA, Identity, claims, forge

NOW = 1_767_225_600
OTHER_ACTION = "orders.read"


def token_claims(action: str = ACTION, issued_at: int = NOW, jti: str = "jti-1") -> ActionClaims:
    return ActionClaims.from_payload(claims(issued_at, action=action, jti=jti))


PER_ACTION = [
    pytest.param({ACTION: NOW + 1.0}, ACTION, True, id="action revoked after the token"),
    pytest.param({ACTION: float(NOW)}, ACTION, True, id="action revoked in the token's second"),
    pytest.param({ACTION: NOW - 1.0}, ACTION, False, id="token issued after the revocation"),
    pytest.param({OTHER_ACTION: NOW + 1.0}, ACTION, False, id="another action revoked"),
    pytest.param({ACTION: NOW + 1.0}, OTHER_ACTION, False, id="the other action's token"),
    pytest.param({}, ACTION, False, id="nothing revoked"),
]


@pytest.mark.parametrize(("per_action", "action", "revoked"), PER_ACTION)
def test_per_action_revocation(per_action: dict[str, float], action: str, revoked: bool) -> None:
    """A token of the revoked action issued up to the revocation is refused; others are not."""
    state = ControlState(AGENT, revoked_before_action=per_action)
    reason = state.token_revoked(token_claims(action))
    assert (reason is not None) is revoked
    if revoked:
        assert action in reason


def test_per_action_revocation_is_read_from_the_agent_document() -> None:
    """``revoked_before_action`` in control/agents/<agent> becomes the per-action map."""
    state = ControlState.from_docs(
        AGENT, None, {"revoked_before_action": {ACTION: NOW, OTHER_ACTION: 17}}
    )
    assert state.revoked_before_action == {ACTION: float(NOW), OTHER_ACTION: 17.0}
    assert state.token_revoked(token_claims()) is not None
    assert state.revoked_before == 0.0
    assert not state.killed


DOCS = [
    pytest.param({"killed_all": True, "reason": "all stop"}, {}, "disabled", id="global kill"),
    pytest.param({}, {"killed": True, "reason": "runaway"}, "disabled", id="agent kill"),
    pytest.param({"revoked_before": NOW}, {}, "before", id="global revoked_before"),
    pytest.param({}, {"revoked_before": NOW}, "before", id="agent revoked_before"),
    pytest.param({"min_generation": 4}, {}, "generation", id="key generation"),
]


@pytest.mark.parametrize(("global_doc", "agent_doc", "why"), DOCS)
def test_control_documents_revoke_as_written(
    global_doc: dict[str, object], agent_doc: dict[str, object], why: str
) -> None:
    """Each way the control documents revoke refuses a token issued before it, with its reason."""
    state = ControlState.from_docs(AGENT, global_doc, agent_doc)
    reason = state.token_revoked(token_claims())
    assert reason is not None
    assert why in reason


def test_kill_reason_comes_from_the_document_that_killed() -> None:
    """A global kill's reason wins over the agent's own; an agent kill keeps its own reason."""
    both = ControlState.from_docs(
        AGENT, {"killed_all": True, "reason": "everyone"}, {"reason": "me"}
    )
    alone = ControlState.from_docs(AGENT, {"reason": "everyone"}, {"killed": True, "reason": "me"})
    assert (both.killed, both.kill_reason) == (True, "everyone")
    assert (alone.killed, alone.kill_reason) == (True, "me")


def test_missing_documents_revoke_nothing() -> None:
    """No control documents at all means nothing is revoked (and signing generation 1)."""
    state = ControlState.from_docs(AGENT, None, None, None)
    assert state.token_revoked(token_claims()) is None
    assert (state.signing_generation, state.min_generation) == (1, 0)


def test_revoked_jti_list_refuses_only_that_token() -> None:
    """control/revoked lists credential ids: that token is refused, another is not."""
    state = ControlState.from_docs(AGENT, None, None, {"jtis": {"jti-1": NOW + 3600}})
    assert state.token_revoked(token_claims(jti="jti-1")) == "token jti-1 was revoked"
    assert state.token_revoked(token_claims(jti="jti-2")) is None


# -- through the verifier ------------------------------------------------------------------


def test_verifier_refuses_a_token_of_a_revoked_action_and_accepts_the_others() -> None:
    """Right after a per-action revocation, the verifier refuses that action's token only."""
    now = int(time.time())
    ca = FakeCA(clock=lambda: now)
    agent = Identity.certified(ca, AGENT, now - 3600, now + 86400)
    state = ControlState(AGENT, revoked_before_action={ACTION: float(now)})
    verifier = Verifier([ca.pem], revocations=state, clock=lambda: float(now))

    revoked = forge(agent.header(), claims(now), agent.sign)
    with pytest.raises(VerificationError) as refused:
        verifier.verify(revoked, audience=AUDIENCE)
    assert refused.value.code == "token_revoked"
    other = forge(agent.header(), claims(now, action=OTHER_ACTION), agent.sign)
    assert verifier.verify(other, audience=AUDIENCE).action == OTHER_ACTION
    later = forge(agent.header(), claims(now + 1), agent.sign)
    verifier_later = Verifier([ca.pem], revocations=state, clock=lambda: float(now + 1))
    assert verifier_later.verify(later, audience=AUDIENCE).issued_at == now + 1


def test_documents_decode_with_their_defaults() -> None:
    """The agent, the signing generation, and a kill without a reason (empty, not "None")."""
    globally = ControlState.from_docs(AGENT, {"killed_all": True, "signing_generation": 4}, None)
    assert (globally.agent, globally.signing_generation) == (AGENT, 4)
    assert (globally.killed, globally.kill_reason) == (True, "")
    alone = ControlState.from_docs(AGENT, None, {"killed": True})
    assert (alone.killed, alone.kill_reason) == (True, "")


@pytest.mark.parametrize("issued_at", [1, 2, NOW])
def test_an_action_never_revoked_refuses_no_token(issued_at: int) -> None:
    """Without a per-action entry for its action, no token is refused for its action, however
    early it was issued (only the agent-wide bound, 0 when unset, refuses ``iat`` 0)."""
    state = ControlState(AGENT, revoked_before_action={OTHER_ACTION: NOW + 10.0})
    assert state.token_revoked(token_claims(issued_at=issued_at)) is None
