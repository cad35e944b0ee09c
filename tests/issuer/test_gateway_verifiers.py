"""Gateways that know only the issuer URL verify action tokens with off-the-shelf libraries:
pyjwt's PyJWKClient and Node's jose (createRemoteJWKSet + jwtVerify), for EdDSA and ES256.
Genuine tokens pass; forged, tampered, expired, wrong-audience, alg-none and unpublished-kid
tokens are refused; Node recomputes the input binding with a JCS library and matches ours.

Everything is real: OpenBao's PKI certifies the keys, the signer publishes them with a token
under the sidecar's own policy, and ``broker issuer`` runs as its own process with a token
under the ``broker-verifier`` policy."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import jwt
import pytest

from broker.core.canonical import inputs_digest
from broker.core.controlstate import GLOBAL_PATH
from broker.core.jwk import new_private_key, sign_raw
from broker.dev.devstack import DevServer
from broker.dev.issuerproc import issuer_token
from broker.sidecar.signing import ActionTokenSigner, PublishedKey
from broker.vault.bootstrap import AgentGrant, bootstrap
from broker.vault.jwks import publish_keys
from broker.vault.kv import kv_read
from broker.vault.layout import sidecar_policy
from broker.vault.pki import sign_csr
from broker.vault.session import make_client
from tests.gateways import issuer_process, node_verifier, run_node
from tests.tokenfactory import b64url, segment, unb64url

pytestmark = pytest.mark.integration

AGENT = "gateway-agent"
AUDIENCE = "https://orders.example.com/api"  # an RFC 8707 resource URI
ACTION = "orders.refund"
INPUTS = {"order_id": "o-1", "amount_usd": 40}
ALGS = ["EdDSA", "ES256"]


@dataclass
class Gateway:
    url: str
    signer: ActionTokenSigner
    unpublished: ActionTokenSigner  # certified by Vault, never published
    client: hvac.Client
    addr: str

    def mint(self, alg: str, **overrides: Any) -> str:
        return mint(self.signer, alg, **overrides)


def mint(
    signer: ActionTokenSigner,
    alg: str,
    *,
    now: float | None = None,
    ttl: int = 120,
    audience: str = AUDIENCE,
    inputs: dict[str, Any] | None = None,
) -> str:
    return signer.mint(
        time.time() if now is None else now,
        ttl,
        alg=alg,
        audience=audience,
        action=ACTION,
        accountable="alice@example.com",
        policy_version="v7",
        inputs_hash=inputs_digest(AGENT, ACTION, INPUTS if inputs is None else inputs),
        manifest_hash="sha256:" + "0" * 64,
    ).token


def _signer(client: hvac.Client, addr: str, issuer: str, *, publish: bool) -> ActionTokenSigner:
    def publish_to_vault(keys: list[PublishedKey]) -> None:
        publish_keys(client, AGENT, [k.to_json() for k in keys], time.time(), addr)

    return ActionTokenSigner(
        AGENT,
        lambda csr, ttl, alg: sign_csr(client, AGENT, csr, ttl, addr, alg=alg),
        issuer=issuer,
        publish=publish_to_vault if publish else None,
        prepublish=1.0,  # above the issuer's 0.2 s refresh; production waits PREPUBLISH
    )


@pytest.fixture(scope="module")
def gateway(openbao: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = make_client(openbao.addr, openbao.root_token)
    bootstrap(root, [AgentGrant(AGENT)], addr=openbao.addr)
    control = kv_read(root, GLOBAL_PATH) or {}
    generation = max(
        int(control.get("signing_generation", 1)), int(control.get("min_generation", 0))
    )
    sidecar_token = root.auth.token.create(
        policies=[sidecar_policy(AGENT)], ttl="1h", no_default_policy=True
    )["auth"]["client_token"]
    sidecar = make_client(openbao.addr, sidecar_token)
    log = tmp_path_factory.mktemp("issuer") / "issuer.log"
    with issuer_process(openbao.addr, issuer_token(root, openbao.addr), log) as issuer:
        signer = _signer(sidecar, openbao.addr, issuer.url, publish=True)
        signer.rotate(generation)
        unpublished = _signer(sidecar, openbao.addr, issuer.url, publish=False)
        unpublished.rotate(generation)
        time.sleep(0.3)  # the issuer's refresh interval: what a sidecar's keys wait at least
        yield Gateway(issuer.url, signer, unpublished, root, openbao.addr)
    sidecar.adapter.close()
    root.adapter.close()


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback test issuer
        doc: dict[str, Any] = json.load(resp)
    return doc


def pyjwt_verify(issuer: str, token: str, audience: str = AUDIENCE) -> dict[str, Any]:
    """What a Python gateway writes, given only the issuer URL."""
    meta = _get_json(f"{issuer}/.well-known/openid-configuration")
    key = jwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["EdDSA", "ES256"],
        audience=audience,
        issuer=meta["issuer"],
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )
    return claims


# -- hostile tokens, written from genuine ones -------------------------------------------------


def _forged_signature(gw: Gateway, alg: str) -> str:
    head, body, _ = gw.mint(alg).split(".")
    return f"{head}.{body}.{b64url(sign_raw(new_private_key(alg), f'{head}.{body}'.encode()))}"


def _tampered_claims(gw: Gateway, alg: str) -> str:
    head, body, sig = gw.mint(alg, audience="https://other.example.com").split(".")
    payload = json.loads(unb64url(body)) | {"aud": AUDIENCE}
    return f"{head}.{segment(payload)}.{sig}"


def _alg_none(gw: Gateway, alg: str) -> str:
    head, body, _ = gw.mint(alg).split(".")
    return f"{segment(json.loads(unb64url(head)) | {'alg': 'none'})}.{body}."


HOSTILE = {
    "forged signature": (_forged_signature, jwt.InvalidSignatureError, "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
    "tampered audience": (_tampered_claims, jwt.InvalidSignatureError, "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
    "expired": (lambda gw, alg: gw.mint(alg, now=time.time() - 600, ttl=60), jwt.ExpiredSignatureError, "ERR_JWT_EXPIRED"),
    "wrong audience": (lambda gw, alg: gw.mint(alg, audience="https://other.example.com"), jwt.InvalidAudienceError, "ERR_JWT_CLAIM_VALIDATION_FAILED"),
    "kid never published": (lambda gw, alg: mint(gw.unpublished, alg), jwt.PyJWKClientError, "ERR_JWKS_NO_MATCHING_KEY"),
    "alg none": (_alg_none, jwt.InvalidAlgorithmError, "ERR_JOSE_ALG_NOT_ALLOWED"),
}  # fmt: skip


# -- pyjwt ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_pyjwt_accepts_a_genuine_token(gateway: Gateway, alg: str) -> None:
    """PyJWKClient finds the key by kid in the issuer's JWKS; the RFC 9068 claims are there."""
    claims = pyjwt_verify(gateway.url, gateway.mint(alg))
    assert (claims["iss"], claims["sub"], claims["client_id"]) == (gateway.url, AGENT, AGENT)
    assert (claims["aud"], claims["action"]) == (AUDIENCE, ACTION)
    assert claims["ibh"] == inputs_digest(AGENT, ACTION, INPUTS)


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_pyjwt_refuses(gateway: Gateway, case: str, alg: str) -> None:
    """Each hostile token is refused by pyjwt with the error that names its flaw."""
    make, error, _ = HOSTILE[case]
    with pytest.raises(error):
        pyjwt_verify(gateway.url, make(gateway, alg))


# -- Node jose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_results(gateway: Gateway) -> dict[tuple[str, str], dict[str, Any]]:
    """One Node run for every case: genuine and hostile tokens of both algorithms."""
    cases: list[tuple[tuple[str, str], dict[str, Any]]] = []
    for alg in ALGS:
        cases.append(((alg, "genuine"), {"token": gateway.mint(alg), "audience": AUDIENCE}))
        for name, (make, _, _) in HOSTILE.items():
            cases.append(((alg, name), {"token": make(gateway, alg), "audience": AUDIENCE}))
    results = run_node(gateway.url, [c for _, c in cases])
    return {key: result for (key, _), result in zip(cases, results, strict=True)}


@pytest.mark.parametrize("alg", ALGS)
def test_jose_accepts_a_genuine_token(
    node_results: dict[tuple[str, str], dict[str, Any]], gateway: Gateway, alg: str
) -> None:
    """jose's remote JWKS and jwtVerify (typ at+jwt, issuer, audience) accept our token."""
    result = node_results[(alg, "genuine")]
    assert result["ok"], result
    assert (result["claims"]["iss"], result["claims"]["sub"]) == (gateway.url, AGENT)


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_jose_refuses(
    node_results: dict[tuple[str, str], dict[str, Any]], case: str, alg: str
) -> None:
    """Each hostile token is refused by jose with the code that names its flaw."""
    result = node_results[(alg, case)]
    assert not result["ok"]
    assert result["code"] == HOSTILE[case][2], result


# -- the input binding, recomputed in JavaScript -----------------------------------------------

BINDINGS = [
    ("100 as 1e2", '{"amount": 100}', '{"amount": 1e2}'),
    ("100.0 as 100", '{"amount": 100.0}', '{"amount": 100}'),
    ("0.1 as 1e-1", '{"amount": 0.1}', '{"amount": 1e-1}'),
    ("non-ASCII, raw vs escaped", '{"note": "Zoë → 東京"}', '{"note": "Zo\\u00eb \\u2192 \\u6771\\u4eac"}'),
    ("key order by UTF-16", '{"z": 1, "é": 2, "😀": 3, "\ue000": 4}', '{"\ue000": 4, "😀": 3, "é": 2, "z": 1}'),
    ("U+2028 and the largest safe integer", '{"s": "a\\u2028b", "n": 9007199254740991}', '{"n": 9007199254740991, "s": "a\u2028b"}'),
    ("float with exponent", '{"x": 1.5e-7, "y": 1e21}', '{"y": 1000000000000000000000, "x": 0.00000015}'),
]  # fmt: skip


def test_jose_recomputes_the_input_binding(gateway: Gateway) -> None:
    """Node computes sha256(JCS({agent, action, inputs})) from the call's JSON text as the
    caller wrote it, and gets our ibh, for every spelling; other inputs do not match."""
    cases = []
    for _, ours, theirs in BINDINGS:
        token = gateway.mint("ES256", inputs=json.loads(ours))
        cases.append({"token": token, "audience": AUDIENCE, "inputs_json": theirs})
    other = gateway.mint("EdDSA", inputs={"amount": 100})
    cases.append({"token": other, "audience": AUDIENCE, "inputs_json": '{"amount": 101}'})
    results = run_node(gateway.url, cases)
    for (name, ours, _), result in zip(BINDINGS, results, strict=False):
        assert result["ok"], result
        assert result["binding_ok"], (name, result["binding"])
        assert result["binding"] == inputs_digest(AGENT, ACTION, json.loads(ours)), name
    assert results[-1]["ok"]
    assert results[-1]["binding_ok"] is False


# -- rotation ----------------------------------------------------------------------------------


def _rotate_under_load(
    gateway: Gateway, signer: ActionTokenSigner, cooldown: float = 0.5
) -> tuple[list[str], set[str]]:
    """A worker mints and verifies through one PyJWKClient without pause while ``signer``
    renews its keys twice; returns the refusals and the kids seen."""
    refused: list[str] = []
    kids: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        # Time is scaled down: prepublish 1 s against a 0.5 s refetch cooldown and the issuer's
        # 0.2 s refresh; production's PREPUBLISH (60 s) is above the libraries' 30 s defaults.
        client = jwt.PyJWKClient(f"{gateway.url}/.well-known/jwks.json", cooldown_duration=cooldown)
        n = 0
        while not stop.is_set():
            alg = ALGS[n % 2]
            n += 1
            token = mint(signer, alg)
            kids.add(jwt.get_unverified_header(token)["kid"])
            try:
                key = client.get_signing_key_from_jwt(token)
                jwt.decode(token, key, algorithms=ALGS, audience=AUDIENCE, issuer=gateway.url)
            except jwt.PyJWTError as exc:
                refused.append(f"{alg}: {exc}")

    worker = threading.Thread(target=load)
    worker.start()
    try:
        for _ in range(2):
            time.sleep(0.5)
            signer.rotate(signer.generation, time.time())
            time.sleep(1.5)  # past prepublish: the new keys sign
    finally:
        stop.set()
        worker.join(30)
    return refused, kids


def test_no_genuine_token_refused_during_rotation(gateway: Gateway) -> None:
    """Under load, two key renewals: every genuine token verifies through PyJWKClient, and
    all three key sets of both algorithms signed some of them."""
    refused, kids = _rotate_under_load(gateway, gateway.signer)
    assert refused == []
    assert len(kids) == 6


def test_without_prepublication_a_jwks_verifier_refuses(gateway: Gateway) -> None:
    """The control: keys that sign the moment they are published are refused by a client
    with pyjwt's default 30 s refetch cooldown, so the test above can fail."""
    eager = _signer(gateway.client, gateway.addr, gateway.url, publish=True)
    eager._prepublish = 0.0
    eager.rotate(gateway.signer.generation)
    time.sleep(0.3)
    refused, _ = _rotate_under_load(gateway, eager, cooldown=30)
    assert refused
    assert all("Unable to find a signing key" in r for r in refused)


def test_unknown_issuer_paths_are_clear_404s(gateway: Gateway) -> None:
    """The live issuer answers an unknown path with a JSON 404 naming the discovery path."""
    with pytest.raises(urllib.error.HTTPError) as info:
        _get_json(f"{gateway.url}/.well-known/jwks")
    assert info.value.code == 404
    body = json.loads(info.value.read())
    assert body["error"] == "not_found"
    assert "openid-configuration" in body["detail"]


# -- the README's snippets, run as written -------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet(language: str, after: str) -> str:
    text = README.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start : text.index("```", start)]


def _for_test(code: str, gateway: Gateway) -> str:
    return code.replace("https://issuer.acme.example", gateway.url).replace(
        "https://orders.example.com/api", AUDIENCE
    )


def test_readme_pyjwt_snippet_verifies_and_binds(gateway: Gateway) -> None:
    """The README's pyjwt snippet accepts our token with its inputs and refuses other inputs."""
    scope: dict[str, Any] = {}
    exec(_for_test(_snippet("python", "Python, with pyjwt"), gateway), scope)  # noqa: S102 - our README
    token = gateway.mint("ES256", inputs={"note": "Zoë", "amount": 100})
    assert scope["check"](token, {"note": "Zoë", "amount": 1e2})["sub"] == AGENT
    with pytest.raises(PermissionError, match="other inputs"):
        scope["check"](token, {"note": "Zoe", "amount": 100})


def test_readme_node_snippet_verifies_and_binds(gateway: Gateway) -> None:
    """The README's Node snippet accepts our token with its inputs and refuses other inputs."""
    directory = node_verifier()
    script = directory / "readme_check.mjs"
    driver = """
const [token, good, bad] = process.argv.slice(2);
const ok = (await check(token, good)).sub;
let refused = "";
try { await check(token, bad); } catch (err) { refused = err.message; }
console.log(JSON.stringify({ ok, refused }));
"""
    script.write_text(_for_test(_snippet("js", "Node, with `jose`"), gateway) + driver)
    token = gateway.mint("EdDSA", inputs={"note": "東京", "amount": 100})
    result = subprocess.run(
        ["node", str(script), token, '{"amount": 1e2, "note": "東京"}', '{"amount": 101, "note": "東京"}'],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": AGENT, "refused": "the token is for other inputs"}
