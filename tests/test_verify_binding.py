"""Token hygiene and the binding of a token to its agent's manifest (issue 13).

A genuine agent certificate proves who signed, never what for: each hostile token below is
signed by a real, correctly certified agent key and is refused because of what it says or
how it is spelled. The live tests reproduce the review's cross-agent token against OpenBao,
through the Python API and through ``broker verify``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest

from broker.core.errors import BackendUnavailable, ManifestError, VerificationError
from broker.core.manifest import Manifest
from broker.dev.devstack import DevServer
from broker.scopes.loader import manifest_from_text
from broker.sidecar.signing import ActionTokenSigner
from broker.vault.bootstrap import AgentGrant, bootstrap
from broker.vault.layout import VERIFIER_POLICY
from broker.vault.manifests import PublishedManifest, write_manifest
from broker.vault.pki import fetch_ca_pem, sign_csr
from broker.vault.session import make_client
from broker.verify import MAX_LIFETIME, MAX_TOKEN_BYTES, Verifier
from broker.verifyscope import ManifestScopes, PublishedScopes, vault_fetch
from tests.harness import REPO, unique_agent
from tests.tokenfactory import (
    ACTION,
    AGENT,
    AUDIENCE,
    OTHER_AGENT,
    FakeCA,
    Identity,
    claims,
    forge,
)

MANIFEST = f"""
agent: {AGENT}
policy_version: v7
system_owner: platform@example.com
risk_owner: risk@example.com
actions:
  {ACTION}:
    accountable: alice@example.com
    credential: {{kind: jwt, audience: {AUDIENCE}, ttl: 60s}}
    inputs:
      order_id: {{type: string}}
      amount_usd: {{type: number}}
  orders.lookup:
    accountable: alice@example.com
    credential: {{kind: jwt, audience: lookup-api, ttl: 30s}}
  orders.db:
    accountable: alice@example.com
    credential: {{kind: vault_token, policies: [orders], ttl: 30s}}
"""


def _manifest(text: str = MANIFEST, agent: str = AGENT) -> Manifest:
    return manifest_from_text(text.replace(f"agent: {AGENT}", f"agent: {agent}"), "test")


@dataclass(frozen=True)
class World:
    now: int
    ca: FakeCA
    agent: Identity

    def verifier(self, **kwargs: Any) -> Verifier:
        kwargs.setdefault("clock", lambda: float(self.now))
        return Verifier([self.ca.pem], **kwargs)

    def token(self, **overrides: Any) -> str:
        return forge(self.agent.header(), claims(self.now, **overrides), self.agent.sign)


@pytest.fixture
def world() -> World:
    now = int(time.time())
    ca = FakeCA(clock=lambda: now)
    return World(now, ca, Identity.certified(ca, AGENT, now - 3600, now + 86400))


def refused(verifier: Verifier, token: str, code: str, audience: str = AUDIENCE) -> None:
    with pytest.raises(VerificationError) as info:
        verifier.verify(token, audience=audience)
    assert info.value.code == code, info.value.detail


# --- spelling and size, refused before parsing ------------------------------------------


def _respell(token: str, how: Callable[[list[str]], list[str]]) -> str:
    return ".".join(how(token.split(".")))


def _flip_stray_bits(part: str) -> str:
    """The same bytes with the unused low bits of the last character set: decoders that
    ignore them accept a second spelling of the same token."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(part[-1])
    return part[:-1] + alphabet[last ^ 1]


SPELLINGS: list[tuple[str, Callable[[str], str], str]] = [
    ("'==' appended to a genuine token", lambda t: t + "==", "token_malformed"),
    ("'=' padding on the header", lambda t: _respell(t, lambda p: [p[0] + "=", *p[1:]]),
     "token_malformed"),
    ("standard base64 alphabet", lambda t: t[:-1] + "+", "token_malformed"),
    ("stray bits in the signature's last character",
     lambda t: _respell(t, lambda p: [p[0], p[1], _flip_stray_bits(p[2])]), "token_malformed"),
    ("a fourth segment", lambda t: t + ".AAAA", "token_malformed"),
    ("whitespace inside", lambda t: t[:10] + " " + t[10:], "token_malformed"),
    ("one byte over the size limit", lambda t: t + "A" * (MAX_TOKEN_BYTES + 1 - len(t)),
     "token_too_large"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "respell", "code"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_non_canonical_or_oversized_token_is_refused(
    world: World, name: str, respell: Callable[[str], str], code: str
) -> None:
    """A genuine token spelled any other way, or longer than the limit, is refused."""
    token = world.token()
    world.verifier().verify(token, audience=AUDIENCE)  # the genuine spelling verifies
    hostile = respell(token)
    assert hostile != token
    refused(world.verifier(), hostile, code)


def test_ten_megabyte_token_is_refused_unread(world: World) -> None:
    """A 10 MB token signed by a real agent key is refused by its size, not parsed: even with
    a broken signature and header the code is token_too_large."""
    huge = world.token(pad="x" * (10 * 1024 * 1024))
    refused(world.verifier(), huge, "token_too_large")
    refused(world.verifier(), "!" * (10 * 1024 * 1024), "token_too_large")


# --- lifetime -------------------------------------------------------------------------------


def test_lifetime_beyond_the_broker_maximum_is_refused(world: World) -> None:
    """Without manifests, exp in 2100 (a certificate-long lifetime) is refused; the maximum
    itself is accepted."""
    refused(world.verifier(), world.token(exp=4102444800), "lifetime_too_long")
    world.verifier().verify(world.token(exp=world.now + MAX_LIFETIME), audience=AUDIENCE)
    refused(world.verifier(), world.token(exp=world.now + MAX_LIFETIME + 1), "lifetime_too_long")


def test_lifetime_beyond_the_manifest_ttl_is_refused(world: World) -> None:
    """With manifests, exp - iat may be at most the action's TTL (60 s here)."""
    verifier = world.verifier(manifests=ManifestScopes([_manifest()]))
    verifier.verify(world.token(ttl=60), audience=AUDIENCE)
    refused(verifier, world.token(ttl=61), "lifetime_too_long")


# --- the manifest binding -------------------------------------------------------------------

BINDING: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "action not in the agent's manifest",
        {"action": "tickets.read"},
        AUDIENCE,
        "outside_manifest",
    ),
    ("another action's audience", {"aud": "lookup-api"}, "lookup-api", "outside_manifest"),
    ("a vault_token action as a jwt", {"action": "orders.db"}, AUDIENCE, "outside_manifest"),
    ("an agent with no manifest", {"sub": OTHER_AGENT}, AUDIENCE, "outside_manifest"),
]


@pytest.mark.parametrize(
    ("name", "change", "audience", "code"), BINDING, ids=[b[0] for b in BINDING]
)
def test_token_outside_its_agents_manifest_is_refused(
    world: World, name: str, change: dict[str, Any], audience: str, code: str
) -> None:
    """Signed under a genuine certificate for its ``sub``, a token that claims an action or
    audience the agent's manifest does not give it is refused."""
    sub = change.get("sub", AGENT)
    signer = Identity.certified(world.ca, sub, world.now - 60, world.now + 600)
    token = forge(signer.header(), claims(world.now, agent=sub, **change), signer.sign)
    verifier = world.verifier(manifests=ManifestScopes([_manifest()]))
    refused(verifier, token, code, audience=audience)
    # The same token without the binding: the old, looser verifier took it.
    world.verifier().verify(token, audience=audience)


def test_gateway_allowlist_refuses_other_agents(world: World) -> None:
    """``accept_agents`` takes the listed agents' tokens only; an empty list is an error."""
    world.verifier(accept_agents=[AGENT]).verify(world.token(), audience=AUDIENCE)
    refused(world.verifier(accept_agents=[OTHER_AGENT]), world.token(), "agent_not_accepted")
    with pytest.raises(ValueError, match="empty"):
        world.verifier(accept_agents=[])


# --- published manifests ---------------------------------------------------------------------


def test_published_scopes_refresh_and_fail_closed() -> None:
    """Cached for ``refresh`` s on the injected clock; an invalid new version keeps the last
    good one; an unreadable Vault with nothing cached refuses (manifest_unavailable)."""
    now = [0.0]
    answers: list[Any] = [_manifest(), ManifestError("bad yaml"), BackendUnavailable("down")]
    calls: list[str] = []

    def fetch(agent: str) -> Manifest | None:
        calls.append(agent)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    scopes = PublishedScopes(fetch, refresh=30, clock=lambda: now[0])
    assert scopes.scope_of(AGENT, ACTION) is not None
    now[0] = 10
    assert (scopes.scope_of(AGENT, ACTION) is not None, len(calls)) == (True, 1)
    now[0] = 31
    # An invalid new version: the last good one stays in force.
    assert (scopes.scope_of(AGENT, ACTION) is not None, len(calls)) == (True, 2)
    with pytest.raises(VerificationError) as info:
        scopes.scope_of(OTHER_AGENT, ACTION)
    assert info.value.code == "manifest_unavailable"


# --- live: the review's cross-agent token ---------------------------------------------------

RESEARCH = (REPO / "scopes" / "research-agent.yaml").read_text()
SUPPORT = (REPO / "scopes" / "support-refund-agent.yaml").read_text()


@dataclass(frozen=True)
class Live:
    addr: str
    root: hvac.Client
    research: str
    support: str
    verifier_token: str

    def signer(self, agent: str) -> ActionTokenSigner:
        """What an attacker holding the agent's AppRole login can do: have Vault certify a
        key of their own under the agent's PKI role."""
        signer = ActionTokenSigner(
            agent,
            lambda csr, ttl, alg="EdDSA": sign_csr(self.root, agent, csr, ttl, self.addr, alg=alg),
        )
        signer.rotate(generation=1)
        return signer

    def token(self, agent: str, audience: str, action: str, ttl: int = 60) -> str:
        return (
            self.signer(agent)
            .mint(
                int(time.time()),
                ttl,
                audience=audience,
                action=action,
                accountable="x@example.com",
                policy_version="p",
                inputs_hash="sha256:" + "0" * 64,
                manifest_hash="sha256:" + "0" * 64,
            )
            .token
        )

    def verifier(self, **kwargs: Any) -> Verifier:
        client = make_client(self.addr, self.verifier_token)
        return Verifier(
            [fetch_ca_pem(self.addr)],
            manifests=PublishedScopes(vault_fetch(client, self.addr)),
            **kwargs,
        )


def _publish(client: hvac.Client, agent: str, text: str, name: str) -> None:
    yaml = text.replace(f"agent: {name}", f"agent: {agent}")
    manifest = manifest_from_text(yaml, agent)
    published = PublishedManifest(
        agent, 0, yaml, manifest.content_hash, manifest.policy_version, "test", time.time()
    )
    write_manifest(client, published)


@pytest.fixture(scope="module")
def live(openbao: DevServer) -> Iterator[Live]:
    root = make_client(openbao.addr, openbao.root_token)
    research, support = unique_agent("research"), unique_agent("support")
    bootstrap(root, [AgentGrant(research), AgentGrant(support)], addr=openbao.addr)
    _publish(root, research, RESEARCH, "research-agent")
    _publish(root, support, SUPPORT, "support-refund-agent")
    token = root.auth.token.create(policies=[VERIFIER_POLICY], ttl="1h")["auth"]["client_token"]
    yield Live(openbao.addr, root, research, support, token)
    root.adapter.close()


@pytest.mark.integration
def test_cross_agent_token_is_refused_by_the_python_api(live: Live) -> None:
    """research-agent's genuine certificate, aud=zendesk-gateway, act=zendesk.get_ticket:
    refused against the published manifests; its own llm.complete token verifies."""
    hostile = live.token(live.research, "zendesk-gateway", "zendesk.get_ticket")
    refused(live.verifier(), hostile, "outside_manifest", audience="zendesk-gateway")
    genuine = live.token(live.research, "llm-gateway", "llm.complete", ttl=120)
    assert live.verifier().verify(genuine, audience="llm-gateway").agent == live.research
    refused(
        live.verifier(accept_agents=[live.support]),
        genuine,
        "agent_not_accepted",
        audience="llm-gateway",
    )


def _cli(live: Live, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(VAULT_ADDR=live.addr, VAULT_TOKEN=live.verifier_token)
    broker = str(Path(sys.executable).parent / "broker")
    return subprocess.run(
        [broker, "verify", *argv],
        check=False,
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.integration
def test_cross_agent_token_is_refused_by_the_cli(live: Live, tmp_path: Path) -> None:
    """``broker verify`` with the shipped broker-verifier policy reads the published manifest
    and refuses the cross-agent token, from stdin and from --token-file alike."""
    hostile = live.token(live.research, "zendesk-gateway", "zendesk.get_ticket")
    done = _cli(live, "-", "--audience", "zendesk-gateway", stdin=hostile)
    assert (done.returncode, "outside_manifest" in done.stderr) == (1, True), done.stderr
    path = tmp_path / "token"
    path.write_text(hostile + "\n")
    done = _cli(live, "--token-file", str(path), "--audience", "zendesk-gateway")
    assert (done.returncode, "outside_manifest" in done.stderr) == (1, True), done.stderr


@pytest.mark.integration
def test_cli_reads_a_genuine_token_from_stdin_and_applies_the_allowlist(live: Live) -> None:
    """A genuine token on stdin verifies; ``--agent`` naming another agent refuses it; a
    token with '==' appended is refused."""
    genuine = live.token(live.research, "llm-gateway", "llm.complete", ttl=120)
    done = _cli(live, "--no-binding", "--audience", "llm-gateway", stdin=genuine)
    assert (done.returncode, live.research in done.stdout) == (0, True), done.stderr
    done = _cli(
        live, "--no-binding", "--audience", "llm-gateway", "--agent", live.support, stdin=genuine
    )
    assert (done.returncode, "agent_not_accepted" in done.stderr) == (1, True), done.stderr
    done = _cli(live, "--no-binding", "--audience", "llm-gateway", stdin=genuine + "==")
    assert (done.returncode, "token_malformed" in done.stderr) == (1, True), done.stderr
