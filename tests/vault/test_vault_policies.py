"""Least privilege in Vault itself, against a live OpenBao: what each shipped policy allows and
refuses, operation by operation; child tokens capped at the manifest's TTL, use count and
policies whatever the sidecar's login asks; certificates only in the agent's exact spelling,
and a token in another spelling refused by the verifier while the kill flag still holds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from broker.cli import main
from broker.core.claims import ActionClaims
from broker.core.controlstate import agent_path
from broker.core.errors import ConfigError, VerificationError
from broker.dev.devstack import DevServer
from broker.dev.stack import approle_files
from broker.ops.control import Control
from broker.settings import VaultSettings
from broker.sidecar.signing import ActionTokenSigner, SignedCert
from broker.vault.bootstrap import AgentGrant, TokenAction, bootstrap
from broker.vault.control import VaultRevocations
from broker.vault.kv import kv_read
from broker.vault.layout import (
    APPROLE_MOUNT,
    PLATFORM_EDITOR_POLICY,
    SECURITY_OPERATOR_POLICY,
    VERIFIER_POLICY,
    action_token_role,
    approle_role,
    pki_role,
)
from broker.vault.pki import fetch_ca_pem
from broker.vault.session import make_client
from broker.verify import Verifier
from tests.harness import approver_token, root_client, unique_agent

pytestmark = pytest.mark.integration

APPROVER = "finance-ops@acme.example"
REFUND = "stripe.refund"
LOOKUP = "stripe.lookup"


@dataclass
class World:
    addr: str
    agent: str
    other: str
    root: hvac.Client
    sidecar: hvac.Client  # the agent's own AppRole login: what a thief of its secret id holds
    clients: dict[str, hvac.Client]

    def csr(self, name: str) -> str:
        key = Ed25519PrivateKey.generate()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, None)
        return request.public_bytes(serialization.Encoding.PEM).decode()


def _token(root: hvac.Client, policy: str, who: str) -> str:
    created = root.auth.token.create(policies=[policy], meta={"operator": who}, ttl="1h")
    return str(created["auth"]["client_token"])


@pytest.fixture(scope="module")
def world(openbao: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = root_client(openbao)
    agent, other = unique_agent("least"), unique_agent("other")
    grants = [
        AgentGrant(
            agent,
            token_policies=frozenset({"stripe-refund", "stripe-lookup"}),
            token_actions=(
                TokenAction(REFUND, frozenset({"stripe-refund"}), 30, 1),
                TokenAction(LOOKUP, frozenset({"stripe-lookup"}), 60, 3),
            ),
            approvers=frozenset({APPROVER}),
        ),
        AgentGrant(
            other,
            token_policies=frozenset({"other-app"}),
            token_actions=(TokenAction("other.act", frozenset({"other-app"}), 30, 1),),
        ),
    ]
    bootstrap(root, grants, demo=True, addr=openbao.addr)
    role_file, secret_file = approle_files(root, agent, tmp_path_factory.mktemp("approle"))
    sidecar = make_client(openbao.addr, None)
    sidecar.auth.approle.login(
        role_id=role_file.read_text().strip(),
        secret_id=secret_file.read_text().strip(),
        mount_point=APPROLE_MOUNT,
    )
    tokens = {
        "operator": _token(root, SECURITY_OPERATOR_POLICY, "sec@acme.example"),
        "editor": _token(root, PLATFORM_EDITOR_POLICY, "alice@acme.example"),
        "verifier": _token(root, VERIFIER_POLICY, "gateway"),
        "approver": approver_token(openbao, APPROVER, ttl="1h"),
    }
    clients = {who: make_client(openbao.addr, token) for who, token in tokens.items()}
    clients["sidecar"] = sidecar
    yield World(openbao.addr, agent, other, root, sidecar, clients)
    for client in (*clients.values(), root):
        client.adapter.close()


def passes_acl(client: hvac.Client, method: str, path: str, data: dict[str, Any]) -> bool:
    """True when Vault's ACL let the request through (whatever the backend answered next)."""
    try:
        client.adapter.request(method, f"/v1/{path}", json=data or None)
    except hvac.exceptions.Forbidden:
        return False
    except hvac.exceptions.VaultError:
        return True  # past the ACL: a 400/404/500 from the backend itself
    return True


KV = "broker-kv/data"
KV_DOC = {"data": {"note": "policy table"}}
# (who, operation, method, path, body, allowed). {a}: the table's agent, {b}: another agent,
# {fin}: the listed approver, {csr}: a CSR, {cn}: the agent's exact name in a body.
TABLE: list[tuple[str, str, str, str, dict[str, Any], bool]] = [
    # The sidecar: mint for itself within its manifest, read control state, nothing else.
    ("sidecar", "certificate for its own name", "POST", "broker-pki/sign/agent-{a}",
     {"csr": "{csr}", "common_name": "{a}", "ttl": "5m", "format": "pem"}, True),
    ("sidecar", "certificate with alt names", "POST", "broker-pki/sign/agent-{a}",
     {"csr": "{csr}", "common_name": "{a}", "alt_names": "{b}"}, False),
    ("sidecar", "certificate from another agent's role", "POST", "broker-pki/sign/agent-{b}",
     {"csr": "{csr}", "common_name": "{b}"}, False),
    ("sidecar", "certificate through issue", "POST", "broker-pki/issue/agent-{a}",
     {"common_name": "{a}"}, False),
    ("sidecar", "child token through its action's role", "POST",
     "auth/token/create/broker-{a}.stripe.refund", {"policies": ["stripe-refund"]}, True),
    ("sidecar", "child token without a role", "POST", "auth/token/create",
     {"policies": ["stripe-refund"]}, False),
    ("sidecar", "child token through another agent's role", "POST",
     "auth/token/create/broker-{b}.other.act", {}, False),
    ("sidecar", "read its kill flag", "GET", f"{KV}/control/agents/{{a}}", {}, True),
    ("sidecar", "revive itself", "POST", f"{KV}/control/agents/{{a}}", KV_DOC, False),
    ("sidecar", "write its own approvals", "POST", f"{KV}/approvals/{{a}}/apr_x", KV_DOC, True),
    ("sidecar", "write another agent's approvals", "POST", f"{KV}/approvals/{{b}}/apr_x",
     KV_DOC, False),
    ("sidecar", "read decisions on its approvals", "GET", f"{KV}/decisions/{{fin}}/{{a}}/apr_x",
     {}, True),
    ("sidecar", "write an approver's decision", "POST", f"{KV}/decisions/{{fin}}/{{a}}/apr_x",
     KV_DOC, False),
    ("sidecar", "publish its own manifest", "POST", f"{KV}/manifests/{{a}}", KV_DOC, False),
    ("sidecar", "read its AppRole role id", "GET", "auth/approle/role/broker-{a}/role-id", {},
     False),
    ("sidecar", "mint itself a secret id", "POST", "auth/approle/role/broker-{a}/secret-id", {},
     False),
    # The security operator: runbooks (kill, revoke, rotate); reads everything else.
    ("operator", "kill an agent", "POST", f"{KV}/control/agents/{{a}}", KV_DOC, True),
    ("operator", "revoke a token by accessor", "POST", "auth/token/revoke-accessor",
     {"accessor": "nonexistent"}, True),
    ("operator", "revoke a certificate", "POST", "broker-pki/revoke", {"serial_number": "00"},
     True),
    ("operator", "rotate an agent's secret id", "POST",
     "auth/approle/role/broker-{a}/secret-id", {}, True),
    ("operator", "read an agent's role id", "GET", "auth/approle/role/broker-{a}/role-id", {},
     False),
    ("operator", "rewrite an approval", "POST", f"{KV}/approvals/{{a}}/apr_x", KV_DOC, False),
    ("operator", "read approvals", "GET", f"{KV}/approvals/{{a}}/apr_x", {}, True),
    ("operator", "forge an approver's decision", "POST", f"{KV}/decisions/{{fin}}/{{a}}/apr_x",
     KV_DOC, False),
    ("operator", "rewrite a published audit head", "POST", f"{KV}/audit/{{a}}/head", KV_DOC,
     False),
    ("operator", "read a published audit head", "GET", f"{KV}/audit/{{a}}/head", {}, True),
    ("operator", "sign an audit checkpoint", "POST", "broker-transit/sign/audit-checkpoint",
     {"input": "aGVhZA=="}, False),
    ("operator", "publish a manifest", "POST", f"{KV}/manifests/{{a}}", KV_DOC, False),
    ("operator", "delete an approval's history", "DELETE",
     "broker-kv/metadata/approvals/{a}/apr_x", {}, False),
    ("operator", "create tokens", "POST", "auth/token/create", {}, False),
    ("operator", "change a policy", "POST", "sys/policies/acl/broker-verifier",
     {"policy": ""}, False),
    # The platform editor: publish manifests; read control state and heartbeats.
    ("editor", "publish a manifest", "POST", f"{KV}/manifests/{{a}}", KV_DOC, True),
    ("editor", "read a heartbeat", "GET", f"{KV}/heartbeat/{{a}}", {}, True),
    ("editor", "kill an agent", "POST", f"{KV}/control/agents/{{a}}", KV_DOC, False),
    ("editor", "bump the control version", "POST", f"{KV}/control/version", KV_DOC, True),
    ("editor", "revoke everything", "POST", f"{KV}/control/global", KV_DOC, False),
    ("editor", "write an audit head", "POST", f"{KV}/audit/platform/head", KV_DOC, False),
    ("editor", "rewrite an approval", "POST", f"{KV}/approvals/{{a}}/apr_x", KV_DOC, False),
    ("editor", "revoke a token", "POST", "auth/token/revoke-accessor", {"accessor": "x"},
     False),
    # The verifier (gateways): read the control state, nothing else.
    ("verifier", "read a kill flag", "GET", f"{KV}/control/agents/{{a}}", {}, True),
    ("verifier", "write a kill flag", "POST", f"{KV}/control/agents/{{a}}", KV_DOC, False),
    ("verifier", "read approvals", "GET", f"{KV}/approvals/{{a}}/apr_x", {}, False),
    ("verifier", "read a manifest", "GET", f"{KV}/manifests/{{a}}", {}, True),
    # An approver: its own decisions, once each; approvals readable; nothing else.
    ("approver", "record its own decision", "POST", f"{KV}/decisions/{{fin}}/{{a}}/apr_t",
     KV_DOC, True),
    ("approver", "record another approver's decision", "POST",
     f"{KV}/decisions/mallory@acme.example/{{a}}/apr_t", KV_DOC, False),
    ("approver", "read approvals", "GET", f"{KV}/approvals/{{a}}/apr_x", {}, True),
    ("approver", "kill an agent", "POST", f"{KV}/control/agents/{{a}}", KV_DOC, False),
    ("approver", "mint a child token", "POST", "auth/token/create/broker-{a}.stripe.refund", {},
     False),
]  # fmt: skip


def _fill(value: Any, world: World, csr: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, world, csr) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, world, csr) for v in value]
    if isinstance(value, str):
        return value.format(a=world.agent, b=world.other, fin=APPROVER, csr=csr)
    return value


@pytest.mark.parametrize(
    ("who", "operation", "method", "path", "body", "allowed"),
    TABLE,
    ids=[f"{row[0]}: {row[1]}" for row in TABLE],
)
def test_policy_table(
    world: World,
    who: str,
    operation: str,
    method: str,
    path: str,
    body: dict[str, Any],
    allowed: bool,
) -> None:
    """Each shipped policy allows exactly the operations its runbooks need, checked live."""
    del operation
    csr = world.csr(world.agent)
    got = passes_acl(world.clients[who], method, _fill(path, world, csr), _fill(body, world, csr))
    assert got is allowed


def test_an_approver_decision_is_final(world: World) -> None:
    """An approver creates its decision once; rewriting it is refused by Vault."""
    path = f"{KV}/decisions/{APPROVER}/{world.agent}/apr_final"
    approver = world.clients["approver"]
    assert passes_acl(approver, "POST", path, KV_DOC)
    assert not passes_acl(approver, "POST", path, {"data": {"note": "changed my mind"}})


# -- child tokens: Vault caps them at the manifest's values -----------------------------------

ASKS = [
    ("the manifest's own values", {"ttl": "30s", "num_uses": 1}),
    ("an hour with unlimited uses", {"ttl": "1h", "num_uses": 0}),
    ("an hour with a two-hour explicit maximum", {"ttl": "1h", "explicit_max_ttl": "2h"}),
    ("a batch token for an hour", {"ttl": "1h", "type": "batch"}),
    ("a renewable token", {"ttl": "1h", "renewable": True}),
    ("five uses", {"ttl": "10m", "num_uses": 5}),
    ("a periodic token", {"period": "1h"}),
]


@pytest.mark.parametrize(("label", "ask"), ASKS, ids=[a[0] for a in ASKS])
def test_child_token_is_capped_at_the_manifest(
    world: World, label: str, ask: dict[str, Any]
) -> None:
    """Whatever the agent's own login asks, Vault grants 30 s, one use, stripe-refund only."""
    del label
    try:
        created = world.sidecar.auth.token.create(
            role_name=action_token_role(world.agent, REFUND), policies=["stripe-refund"], **ask
        )
    except hvac.exceptions.VaultError:
        return  # refused outright is as good as capped
    info = world.root.auth.token.lookup(created["auth"]["client_token"])["data"]
    assert info["creation_ttl"] <= 30
    assert info["ttl"] <= 30
    assert info["num_uses"] == 1
    assert (info["type"], info["renewable"]) == ("service", False)
    assert info["policies"] == ["stripe-refund"]
    assert not info.get("period")


def test_the_other_action_gets_its_own_limits(world: World) -> None:
    """Each action's role carries that action's manifest values (60 s, three uses)."""
    created = world.sidecar.auth.token.create(
        role_name=action_token_role(world.agent, LOOKUP), ttl="1h", num_uses=0
    )
    info = world.root.auth.token.lookup(created["auth"]["client_token"])["data"]
    assert (info["creation_ttl"], info["num_uses"], info["policies"]) == (60, 3, ["stripe-lookup"])


REFUSED_TOKENS = [
    ("the root policy", REFUND, ["root"]),
    ("another action's policy", REFUND, ["stripe-lookup"]),
    ("the default policy", REFUND, ["stripe-refund", "default"]),
    ("a policy of another agent", REFUND, ["other-app"]),
]


@pytest.mark.parametrize(
    ("label", "action", "policies"), REFUSED_TOKENS, ids=[r[0] for r in REFUSED_TOKENS]
)
def test_child_token_with_other_policies_is_refused(
    world: World, label: str, action: str, policies: list[str]
) -> None:
    """An action's role grants that action's policies and nothing else."""
    del label
    with pytest.raises((hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)):
        world.sidecar.auth.token.create(
            role_name=action_token_role(world.agent, action), policies=policies
        )


# -- names: one spelling per agent --------------------------------------------------------------


def _spellings(agent: str) -> list[str]:
    return [agent.upper(), agent.title(), agent[0].upper() + agent[1:]]


@pytest.mark.parametrize("spelling", [0, 1, 2], ids=["UPPER", "Title", "Capitalised"])
def test_pki_refuses_another_spelling_of_the_agent(world: World, spelling: int) -> None:
    """The agent's login cannot get a certificate for its name in another case."""
    name = _spellings(world.agent)[spelling]
    with pytest.raises(hvac.exceptions.Forbidden):
        world.sidecar.write_data(
            f"broker-pki/sign/{pki_role(world.agent)}",
            data={"csr": world.csr(name), "common_name": name, "ttl": "5m", "format": "pem"},
        )


def test_pki_ignores_the_name_in_the_csr(world: World) -> None:
    """A CSR naming another spelling still yields a certificate for the exact agent id only."""
    name = world.agent.upper()
    signed = world.sidecar.write_data(
        f"broker-pki/sign/{pki_role(world.agent)}",
        data={"csr": world.csr(name), "common_name": world.agent, "ttl": "5m", "format": "pem"},
    )["data"]
    cert = x509.load_pem_x509_certificate(signed["certificate"].encode())
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [
        world.agent
    ]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [world.agent]


def test_a_token_in_another_spelling_is_refused_and_the_kill_holds(
    world: World, openbao: DevServer, tmp_path: Path
) -> None:
    """A certificate for RESEARCH-AGENT (as a looser Vault once issued): the verifier refuses
    the token, and the kill flag of research-agent is found under that spelling too."""
    upper = world.agent.upper()

    def loose_issue(csr: str, ttl: str, alg: str = "EdDSA") -> SignedCert:
        data = world.root.write_data(  # root, as the role alone once allowed
            f"broker-pki/sign/{pki_role(world.agent, alg)}",
            data={"csr": csr, "common_name": upper, "ttl": ttl, "format": "pem"},
        )["data"]
        return SignedCert(certificate_pem=data["certificate"], serial=data["serial_number"])

    signer = ActionTokenSigner(upper, loose_issue)
    signer.rotate(generation=1)
    now = int(time.time())
    token = signer.mint(
        now, 120, audience="stripe-gateway", action=REFUND, accountable=APPROVER,
        policy_version="v1", inputs_hash="sha256:" + "0" * 64, manifest_hash="sha256:" + "0" * 64,
    ).token  # fmt: skip
    operator = Control(world.clients["operator"], world.addr)
    operator.kill(world.agent, "case test", wait=0)
    try:
        revocations = VaultRevocations(
            VaultSettings(addr=openbao.addr, token=SecretStr(world.clients["verifier"].token))
        )
        verifier = Verifier([fetch_ca_pem(openbao.addr)], revocations=revocations)
        with pytest.raises(VerificationError) as refused:
            verifier.verify(token, audience="stripe-gateway")
        assert refused.value.code == "untrusted_key"
        # Even a verifier that skipped the spelling check finds the kill under this spelling.
        claims = ActionClaims.from_payload(jwt.decode(token, options={"verify_signature": False}))
        assert claims.agent == upper
        assert revocations.token_revoked(claims) == f"agent {upper} is disabled"
    finally:
        operator.revive(world.agent, "case test done")


def test_operator_cannot_read_role_ids_but_the_admin_can(world: World) -> None:
    """Onboarding (the admin's bootstrap) hands out the role id; the operator only rotates."""
    role = approle_role(world.agent)
    with pytest.raises(hvac.exceptions.Forbidden):
        world.clients["operator"].auth.approle.read_role_id(role, mount_point=APPROLE_MOUNT)
    assert world.root.auth.approle.read_role_id(role, mount_point=APPROLE_MOUNT)["data"]["role_id"]


COMMANDS = [
    ["kill", "--agent", "{U}", "--wait", "0"],
    ["revive", "--agent", "{U}", "--reason", "spelling"],
    ["revoke", "--agent", "{U}"],
    ["rotate", "agent-secret", "--agent", "{U}", "--secret-id-file", "/nonexistent/s"],
    ["approvals", "list", "--agent", "{U}"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_commands_refuse_another_spelling(
    world: World,
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator command names an agent by its exact id: another spelling changes nothing."""
    monkeypatch.setenv("VAULT_ADDR", world.addr)
    monkeypatch.setenv("VAULT_TOKEN", world.clients["operator"].token)
    before = kv_read(world.root, agent_path(world.agent))
    with pytest.raises(SystemExit) as refused:
        main([a.replace("{U}", world.agent.upper()) for a in argv])
    assert refused.value.code == 2
    assert "is not an agent id" in capsys.readouterr().err
    assert kv_read(world.root, agent_path(world.agent)) == before


@pytest.mark.parametrize(
    "approver", ["ops@acme.example/*", "*@acme.example", "a b@acme.example", "{x}@acme.example"]
)
def test_bootstrap_refuses_an_approver_name_that_would_widen_a_path(
    openbao: DevServer, approver: str
) -> None:
    """An approver name with '/', '*', braces or spaces is refused before anything is written."""
    agent = unique_agent("unsafe")
    root = root_client(openbao)
    with pytest.raises(ConfigError, match="cannot be a Vault identity"):
        bootstrap(root, [AgentGrant(agent, approvers=frozenset({approver}))], addr=openbao.addr)
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.sys.read_policy(f"broker-sidecar-{agent}")
