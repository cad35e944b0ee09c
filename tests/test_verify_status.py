"""broker.verify honours the token status list when given a status reader: a set bit is
``token_revoked``, a token without a status claim is ``status_missing``, and the reader's
own refusals (unreachable list, index out of range) pass through with their codes."""

from __future__ import annotations

import pytest

from broker.core.claims import StatusRef
from broker.core.errors import VerificationError
from broker.sidecar.signing import ActionTokenSigner
from broker.verify import Verifier
from tests.tokenfactory import AGENT, AUDIENCE, FakeCA

NOW = 1_900_000_000.0
ISSUER = "http://127.0.0.1:8400"
CLAIMS = {
    "audience": AUDIENCE,
    "action": "orders.refund",
    "accountable": "alice@example.com",
    "policy_version": "v7",
    "inputs_hash": "sha256:" + "1" * 64,
    "manifest_hash": "sha256:" + "0" * 64,
}


class Status:
    def __init__(self, revoked: set[int], error: str | None = None) -> None:
        self.revoked_indices = revoked
        self.error = error
        self.seen: list[StatusRef] = []

    def revoked(self, ref: StatusRef) -> bool:
        self.seen.append(ref)
        if self.error:
            raise VerificationError("list trouble", code=self.error)
        return ref.index in self.revoked_indices


def _setup(issuer: str = ISSUER) -> tuple[FakeCA, ActionTokenSigner]:
    ca = FakeCA(clock=lambda: NOW)
    signer = ActionTokenSigner(AGENT, ca.issue, issuer=issuer)
    signer.rotate(1)
    return ca, signer


def _verifier(ca: FakeCA, status: Status, issuer: str = ISSUER) -> Verifier:
    return Verifier([ca.pem], issuer=issuer, status=status, clock=lambda: NOW)


def test_tokens_carry_a_status_claim_at_the_issuer() -> None:
    """With an issuer URL, each token names its list under /statuslists/ and its own index."""
    ca, signer = _setup()
    status = Status(set())
    verifier = _verifier(ca, status)
    for _ in range(3):
        verifier.verify(signer.mint(NOW, 60, **CLAIMS).token, audience=AUDIENCE)
    assert [r.index for r in status.seen] == [0, 1, 2]
    assert all(r.uri.startswith(f"{ISSUER}/statuslists/{AGENT}/") for r in status.seen)


def test_a_set_bit_is_token_revoked() -> None:
    """The second token's bit is set: it is refused, the first is not."""
    ca, signer = _setup()
    first, second = (signer.mint(NOW, 60, **CLAIMS).token for _ in range(2))
    verifier = _verifier(ca, Status({1}))
    verifier.verify(first, audience=AUDIENCE)
    with pytest.raises(VerificationError) as info:
        verifier.verify(second, audience=AUDIENCE)
    assert info.value.code == "token_revoked"


def test_token_without_status_is_refused_when_status_is_required() -> None:
    """A verifier that checks status refuses a token that names no list."""
    ca, signer = _setup(issuer="urn:agent-credential-broker")
    with pytest.raises(VerificationError) as info:
        _verifier(ca, Status(set()), issuer="urn:agent-credential-broker").verify(
            signer.mint(NOW, 60, **CLAIMS).token, audience=AUDIENCE
        )
    assert info.value.code == "status_missing"


@pytest.mark.parametrize("code", ["status_index_out_of_range", "status_unavailable"])
def test_reader_refusals_pass_through(code: str) -> None:
    """When the list cannot answer, the verifier refuses with the reader's code."""
    ca, signer = _setup()
    with pytest.raises(VerificationError) as info:
        _verifier(ca, Status(set(), error=code)).verify(
            signer.mint(NOW, 60, **CLAIMS).token, audience=AUDIENCE
        )
    assert info.value.code == code
