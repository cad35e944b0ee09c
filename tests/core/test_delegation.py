"""The RFC 8693 actor chain of delegated tokens, and revocation of a grant and all below it
as the verifier sees it (pure: forged tokens, control state in memory)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from broker.core.claims import ActionClaims
from broker.core.controlstate import ControlState, delegations_path
from broker.core.delegation import Actor, actor_claim, actors_of
from broker.core.errors import ControlStateInvalid, VerificationError
from broker.verify import Verifier
from tests.tokenfactory import AGENT, AUDIENCE, FakeCA, Identity, claims, forge

ROOT_GRANT, CHILD_GRANT = "dg_" + "a" * 24, "dg_" + "b" * 24
CHAIN = (Actor("planner", ROOT_GRANT), Actor("summariser", CHILD_GRANT))


def test_the_act_claim_nests_the_current_actor_outermost() -> None:
    """RFC 8693 section 4.1: the current actor is the top-level act, earlier ones nest."""
    assert actor_claim(CHAIN) == {
        "sub": "summariser",
        "grant": CHILD_GRANT,
        "act": {"sub": "planner", "grant": ROOT_GRANT},
    }
    assert actors_of(actor_claim(CHAIN)) == CHAIN
    assert actors_of(None) == ()


def _deep(levels: int) -> dict[str, Any]:
    return actor_claim(tuple(Actor(f"sub-{i}", f"dg_{i}") for i in range(levels)))


MALFORMED_ACT = [
    pytest.param("planner", id="a string, not an object"),
    pytest.param({"sub": "planner"}, id="no grant"),
    pytest.param({"sub": 7, "grant": ROOT_GRANT}, id="sub not a string"),
    pytest.param({"sub": "a", "grant": ROOT_GRANT, "act": ["x"]}, id="nested act not an object"),
    pytest.param(_deep(9), id="deeper than 8"),
]


@pytest.mark.parametrize("act", MALFORMED_ACT)
def test_a_malformed_act_claim_is_refused(act: Any) -> None:
    """An act claim that is not a chain of {sub, grant} objects, at most 8 deep, is refused."""
    with pytest.raises(ValueError, match="act"):
        actors_of(act)


def test_a_token_without_act_has_no_actors() -> None:
    """Tokens the agent minted for itself carry no act claim and no actors."""
    assert ActionClaims.from_payload(claims(1000)).actors == ()


@pytest.mark.parametrize(
    ("revoked", "refused"),
    [
        ({ROOT_GRANT}, True),  # the parent grant: everything below it goes
        ({CHILD_GRANT}, True),
        ({"dg_" + "c" * 24}, False),  # another grant
        (set(), False),
    ],
)
def test_a_revoked_grant_refuses_every_token_whose_chain_names_it(
    revoked: set[str], refused: bool
) -> None:
    """A token minted two levels down is refused once any grant of its chain is revoked."""
    token = ActionClaims.from_payload({**claims(1000), "act": actor_claim(CHAIN)})
    state = ControlState(AGENT, revoked_grants=frozenset(revoked))
    reason = state.token_revoked(token)
    assert (reason is not None) is refused
    if refused:
        assert "delegated grant" in str(reason)


def test_revoked_grants_are_read_from_the_agents_delegations_document() -> None:
    """delegations/<agent> ``revoked`` (grant id to expiry) is what the verifier reads."""
    doc = {"revoked": {ROOT_GRANT: 2000.0}}
    state = ControlState.from_docs(AGENT, None, None, None, doc)
    assert state.revoked_grants == {ROOT_GRANT}
    with pytest.raises(ControlStateInvalid, match=delegations_path(AGENT)):
        ControlState.from_docs(AGENT, None, None, None, {"revoked": {ROOT_GRANT: "later"}})


def test_securitys_grant_revocations_are_read_from_control_revoked() -> None:
    """``broker revoke --grant`` writes control/revoked ``grants``; both sources count."""
    state = ControlState.from_docs(
        AGENT, None, None, {"grants": {ROOT_GRANT: 2000.0}}, {"revoked": {CHILD_GRANT: 2000.0}}
    )
    assert state.revoked_grants == {ROOT_GRANT, CHILD_GRANT}


def test_the_verifier_refuses_a_delegated_token_once_its_parent_grant_is_revoked() -> None:
    """End to end through the verifier: accepted with its chain, refused after revocation."""
    now = int(time.time())
    ca = FakeCA(clock=lambda: now)
    agent = Identity.certified(ca, AGENT, now - 3600, now + 86400)
    token = forge(agent.header(), {**claims(now), "act": actor_claim(CHAIN)}, agent.sign)
    live = Verifier([ca.pem], revocations=ControlState(AGENT), clock=lambda: float(now))
    assert live.verify(token, audience=AUDIENCE).actors == CHAIN
    state = ControlState(AGENT, revoked_grants=frozenset({ROOT_GRANT}))
    verifier = Verifier([ca.pem], revocations=state, clock=lambda: float(now))
    with pytest.raises(VerificationError) as refused:
        verifier.verify(token, audience=AUDIENCE)
    assert refused.value.code == "token_revoked"
    bad = forge(agent.header(), {**claims(now), "act": {"sub": "x"}}, agent.sign)
    with pytest.raises(VerificationError) as malformed:
        live.verify(bad, audience=AUDIENCE)
    assert malformed.value.code == "token_invalid"
