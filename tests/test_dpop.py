"""The agent's DPoP key (``broker.dpop``): the proofs it makes are the ones the checks expect,
for both algorithms, and no key material leaks into a repr."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.core.dpop import ProofRequest, ReplayCache, check_proof, thumbprint, token_hash
from broker.dpop import DPoPKey

NOW = 1_800_000_000
URL = "https://orders.example/v1/refunds"


@pytest.mark.parametrize(("alg", "kty"), [("ES256", "EC"), ("EdDSA", "OKP")])
def test_proof_names_the_request_and_embeds_only_the_public_key(alg: str, kty: str) -> None:
    """A proof: typ dpop+jwt, the key's alg, the public jwk (no "d"), htm, htu, iat, a jti, ath."""
    key = DPoPKey.generate(alg, clock=lambda: NOW)
    proof = key.proof("post", URL + "?page=2#top", "the-token")
    header = jwt.get_unverified_header(proof)
    claims = jwt.decode(proof, options={"verify_signature": False})
    assert (header["typ"], header["alg"], header["jwk"]["kty"]) == ("dpop+jwt", alg, kty)
    assert "d" not in header["jwk"]
    assert (claims["htm"], claims["htu"], claims["iat"]) == ("POST", URL, NOW)
    assert claims["ath"] == token_hash("the-token")
    assert key.thumbprint == thumbprint(key.public_jwk)
    request = ProofRequest("POST", URL, "the-token", key.thumbprint)
    assert check_proof(proof, request, now=NOW, replay=ReplayCache()) == key.thumbprint


def test_each_proof_has_its_own_id() -> None:
    """Two proofs for the same request differ in jti, so neither is a replay of the other."""
    key = DPoPKey.generate("EdDSA")
    ids = {
        jwt.decode(key.proof("GET", URL), options={"verify_signature": False})["jti"]
        for _ in range(50)
    }
    assert len(ids) == 50


def test_headers_present_a_bound_token() -> None:
    """``headers`` gives the DPoP authorization scheme and a fresh proof for that request."""
    key = DPoPKey.generate("ES256")
    headers = key.headers("GET", URL, "tok")
    assert headers["Authorization"] == "DPoP tok"
    request = ProofRequest("GET", URL, "tok", key.thumbprint)
    assert check_proof(headers["DPoP"], request, now=time.time(), replay=ReplayCache())


@pytest.mark.parametrize(
    "make",
    [lambda: DPoPKey(ec.generate_private_key(ec.SECP384R1())), lambda: DPoPKey.generate("HS256")],
)
def test_only_p256_and_ed25519_keys_make_proofs(make: object) -> None:
    """A P-384 key or an HMAC algorithm is refused when the key is made, not at the gateway."""
    with pytest.raises(ValueError, match=r"ES256|Ed25519"):
        make()  # type: ignore[operator]


def test_key_repr_holds_no_key_material() -> None:
    """The repr names the algorithm and thumbprint, never the private scalar."""
    private = ec.generate_private_key(ec.SECP256R1())
    text = repr(DPoPKey(private))
    assert text.startswith("DPoPKey(ES256, jkt=")
    assert str(private.private_numbers().private_value) not in text
