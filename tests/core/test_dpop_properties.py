"""Properties of the proof checks (Hypothesis): once a genuine proof is used, no one-character
change to it is accepted, and htu normalisation is idempotent."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.dpop import ProofError, ProofRequest, ReplayCache, check_proof, normalize_htu
from broker.dpop import DPoPKey

NOW = 1_800_000_000
URL = "https://orders.example/v1/refunds"
KEY = DPoPKey.generate("ES256", clock=lambda: NOW)
ALPHABET = string.ascii_letters + string.digits + "-_."


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_no_one_character_change_to_a_used_proof_is_accepted(data: st.DataObject) -> None:
    """A change in the header or claims breaks the signature. A change in the signature
    either breaks it or decodes to the same proof, whose jti is already spent."""
    proof = KEY.proof("POST", URL, "tok")
    cache, request = ReplayCache(), ProofRequest("POST", URL, "tok", KEY.thumbprint)
    check_proof(proof, request, now=NOW, replay=cache)
    index = data.draw(st.integers(0, len(proof) - 1))
    char = data.draw(st.sampled_from(ALPHABET).filter(lambda c: c != proof[index]))
    changed = proof[:index] + char + proof[index + 1 :]
    try:
        check_proof(changed, request, now=NOW, replay=cache)
    except ProofError:
        return
    raise AssertionError(f"a changed proof was accepted (position {index}: {char!r})")


URLS = st.builds(
    "{}://{}{}{}".format,
    st.sampled_from(["http", "https", "HTTP", "HtTpS"]),
    st.sampled_from(["h.example", "H.Example", "127.0.0.1", "[::1]"]),
    st.sampled_from(["", ":80", ":443", ":8080"]),
    st.text(alphabet=string.ascii_letters + "/%7e~-._", max_size=20).map(lambda p: "/" + p),
)


@given(URLS)
def test_htu_normalisation_is_idempotent(url: str) -> None:
    """Normalising a normalised URL changes nothing: both sides of a comparison agree."""
    once = normalize_htu(url)
    assert normalize_htu(once) == once
