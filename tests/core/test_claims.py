"""Action-token claims as typed values: what ``from_payload`` and ``StatusRef.from_claim``
refuse, with the error each raises (the verifier maps all of them to ``token_invalid``)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.core.claims import ActionClaims, StatusRef
from tests.tokenfactory import AGENT, claims

NOW = 1_767_225_600
URI = "https://issuer.example/statuslists/agent-a/1"
NO_LIST = "status must hold status_list with uri and idx"


def test_client_id_must_name_the_agent() -> None:
    """A payload whose client_id is not its sub is refused, saying which claims disagree."""
    with pytest.raises(ValueError, match=r"^client_id") as refused:
        ActionClaims.from_payload(claims(NOW, client_id="agent-b"))
    assert str(refused.value) == "client_id must name the agent, as sub does"
    assert ActionClaims.from_payload(claims(NOW)).agent == AGENT


def test_status_claim_round_trips() -> None:
    """A status reference reads back from the claim it writes."""
    ref = StatusRef(uri=URI, index=7)
    assert ref.to_claim() == {"status_list": {"idx": 7, "uri": URI}}
    assert StatusRef.from_claim(ref.to_claim()) == ref
    assert ActionClaims.from_payload(claims(NOW, status=ref.to_claim())).status == ref


BAD_STATUS: list[tuple[str, Any, type[Exception], str]] = [
    ("a string", "revoked", ValueError, NO_LIST),
    ("a list", [{"status_list": {"idx": 1, "uri": URI}}], ValueError, NO_LIST),
    ("no status_list", {}, ValueError, NO_LIST),
    ("status_list not a mapping", {"status_list": URI}, ValueError, NO_LIST),
    ("no uri", {"status_list": {"idx": 1}}, ValueError, NO_LIST),
    ("uri not a string", {"status_list": {"idx": 1, "uri": 5}}, ValueError, NO_LIST),
    ("no idx", {"status_list": {"uri": URI}}, TypeError, "expected an integer claim"),
    ("idx a string", {"status_list": {"idx": "1", "uri": URI}}, TypeError,
     "expected an integer claim"),
    ("idx a boolean", {"status_list": {"idx": True, "uri": URI}}, TypeError,
     "expected an integer claim"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("claim", "error", "message"), [b[1:] for b in BAD_STATUS], ids=[b[0] for b in BAD_STATUS]
)
def test_malformed_status_claims_are_refused(
    claim: Any, error: type[Exception], message: str
) -> None:
    """Each malformed status claim raises ValueError or TypeError with a message saying what
    is expected, never a stray AttributeError (which would escape the verifier's mapping to
    token_invalid) or KeyError."""
    with pytest.raises(error) as refused:
        StatusRef.from_claim(claim)
    assert type(refused.value) is error
    assert str(refused.value) == message


def test_generation_must_be_an_integer() -> None:
    """``gen`` is an integer, never a string or a boolean."""
    for gen in ("3", True, 3.0):
        with pytest.raises(TypeError, match=r"^expected an integer claim$"):
            ActionClaims.from_payload(claims(NOW, gen=gen))
