"""The verifier and DPoP-bound tokens (RFC 9449): a bound token is good only with a fresh
proof by its key for this very request; the thief who copied the token has no such proof.

Unit tests with the in-process CA of ``tests.tokenfactory``; the live tests against the
real OpenBao and sidecar are in ``tests/sidecar/test_dpop_live.py``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from broker.core.dpop import PROOF_MAX_AGE, ReplayCache, token_hash
from broker.core.errors import VerificationError
from broker.dpop import DPoPKey
from broker.verify import ActionScope, DPoPProof, Verifier
from tests.tokenfactory import ACTION, AGENT, AUDIENCE, FakeCA, Identity, claims, forge

URL = "https://orders.example/v1/refunds"


class World:
    def __init__(self) -> None:
        self.now = int(time.time())
        self.ca = FakeCA(clock=lambda: self.now)
        self.agent = Identity.certified(self.ca, AGENT, self.now - 3600, self.now + 86400)
        self.key = DPoPKey.generate("ES256", clock=lambda: self.now)
        self.thief = DPoPKey.generate("EdDSA", clock=lambda: self.now)

    def verifier(self, **kwargs: Any) -> Verifier:
        return Verifier([self.ca.pem], clock=lambda: float(self.now), **kwargs)

    def token(self, jkt: str | None = "agent") -> str:
        """A token of agent-a, bound to the agent's DPoP key (or to ``jkt``, or unbound)."""
        bound = self.key.thumbprint if jkt == "agent" else jkt
        payload = claims(self.now, cnf={"jkt": bound} if bound else None)
        return forge(self.agent.header(), payload, self.agent.sign)


@pytest.fixture
def world() -> World:
    return World()


def _refused(verifier: Verifier, token: str, code: str, dpop: DPoPProof | None) -> None:
    with pytest.raises(VerificationError) as info:
        verifier.verify(token, audience=AUDIENCE, dpop=dpop)
    assert info.value.code == code, info.value.detail


def test_bound_token_with_its_proof_verifies(world: World) -> None:
    """The agent presents its bound token with a proof for the request: accepted, and the
    claims name the key it is bound to."""
    token = world.token()
    proof = DPoPProof(world.key.proof("POST", URL, token), "POST", URL)
    got = world.verifier().verify(token, audience=AUDIENCE, action=ACTION, dpop=proof)
    assert got.key_thumbprint == world.key.thumbprint


def test_stolen_token_without_the_key_is_refused(world: World) -> None:
    """A bound token copied from a log, presented as a bearer token: refused."""
    _refused(world.verifier(), world.token(), "dpop_required", None)


def test_stolen_token_with_the_thiefs_own_proof_is_refused(world: World) -> None:
    """The thief signs a perfect proof with their own key: not the key the token names."""
    token = world.token()
    proof = DPoPProof(world.thief.proof("POST", URL, token), "POST", URL)
    _refused(world.verifier(), token, "dpop_key_mismatch", proof)


def test_replayed_proof_is_refused(world: World) -> None:
    """A proof captured with its token works once; replayed on the same request, refused."""
    verifier, token = world.verifier(), world.token()
    proof = DPoPProof(world.key.proof("POST", URL, token), "POST", URL)
    verifier.verify(token, audience=AUDIENCE, dpop=proof)
    _refused(verifier, token, "dpop_replayed", proof)


def test_verifiers_sharing_a_cache_refuse_a_replay_across_them(world: World) -> None:
    """Two gateway workers with one replay cache: a proof spent at one is refused at the other."""
    cache = ReplayCache()
    first, second = world.verifier(replay=cache), world.verifier(replay=cache)
    token = world.token()
    proof = DPoPProof(world.key.proof("POST", URL, token), "POST", URL)
    first.verify(token, audience=AUDIENCE, dpop=proof)
    _refused(second, token, "dpop_replayed", proof)


# (name, code, how the presentation is made from the world and the token)
PRESENTATIONS: list[tuple[str, str, Any]] = [
    ("proof for another URL", "dpop_wrong_url",
     lambda w, t: DPoPProof(w.key.proof("POST", URL + "/x", t), "POST", URL)),
    ("proof for another host", "dpop_wrong_url",
     lambda w, t: DPoPProof(w.key.proof("POST", "https://evil.example/v1/refunds", t), "POST", URL)),
    ("proof for another method", "dpop_wrong_method",
     lambda w, t: DPoPProof(w.key.proof("GET", URL, t), "POST", URL)),
    ("wrong ath: proof made for another token", "dpop_wrong_ath",
     lambda w, t: DPoPProof(w.key.proof("POST", URL, t + "A"), "POST", URL)),
    ("proof with no ath", "dpop_wrong_ath",
     lambda w, t: DPoPProof(w.key.proof("POST", URL), "POST", URL)),
    ("stale iat", "dpop_stale",
     lambda w, t: DPoPProof(_aged(w, -PROOF_MAX_AGE - 10).proof("POST", URL, t), "POST", URL)),
    ("iat from the future", "dpop_stale",
     lambda w, t: DPoPProof(_aged(w, 60).proof("POST", URL, t), "POST", URL)),
    ("wrong key", "dpop_key_mismatch",
     lambda w, t: DPoPProof(w.thief.proof("POST", URL, t), "POST", URL)),
    ("alg none", "dpop_algorithm_refused",
     lambda w, t: DPoPProof(_unsigned(w, t), "POST", URL)),
    ("typ at+jwt (the token itself as its proof)", "dpop_wrong_type",
     lambda w, t: DPoPProof(t, "POST", URL)),
]  # fmt: skip


def _aged(world: World, seconds: int) -> DPoPKey:
    """The agent's key with a clock ``seconds`` away from the verifier's."""
    return DPoPKey(world.key._private, clock=lambda: world.now + seconds)


def _unsigned(world: World, token: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": world.key.public_jwk}
    body = {"jti": "j1", "htm": "POST", "htu": URL, "iat": world.now, "ath": token_hash(token)}
    return forge(header, body, None)


@pytest.mark.parametrize(("name", "code", "make"), PRESENTATIONS, ids=[p[0] for p in PRESENTATIONS])
def test_bound_token_with_a_bad_proof_is_refused(
    world: World, name: str, code: str, make: Any
) -> None:
    """Each wrong presentation of a bound token is refused with the failed check's code."""
    token = world.token()
    _refused(world.verifier(), token, code, make(world, token))


def test_proof_with_an_unbound_token_is_refused(world: World) -> None:
    """A DPoP presentation of a bearer token: the token is bound to nothing, so refused."""
    token = world.token(jkt=None)
    proof = DPoPProof(world.key.proof("POST", URL, token), "POST", URL)
    _refused(world.verifier(), token, "token_not_bound", proof)


def test_unbound_token_for_an_action_that_requires_dpop_is_refused(world: World) -> None:
    """The manifest says dpop: required: a gateway refuses an unbound token for that action."""

    class Scopes:
        def scope_of(self, agent: str, action: str) -> ActionScope | None:
            return ActionScope(AUDIENCE, 60, dpop=True)

    verifier = world.verifier(manifests=Scopes())
    _refused(verifier, world.token(jkt=None), "token_not_bound", None)
    token = world.token()
    proof = DPoPProof(world.key.proof("POST", URL, token), "POST", URL)
    assert verifier.verify(token, audience=AUDIENCE, dpop=proof).key_thumbprint


@pytest.mark.parametrize("cnf", [{"jkt": ""}, {"jwk": {}}, "abc", {"jkt": 7}])
def test_malformed_cnf_is_refused(world: World, cnf: Any) -> None:
    """A cnf claim without a thumbprint string is a malformed token, never an unbound one."""
    payload = claims(world.now, cnf=cnf)
    token = forge(world.agent.header(), payload, world.agent.sign)
    _refused(world.verifier(), token, "token_invalid", None)
