"""The JWT/service-account login against a real OpenBao. The test plays the cluster's
issuer: it serves a JWKS on loopback and signs tokens shaped as projected service-account
tokens (issuer, audience, ``system:serviceaccount:<ns>:<name>`` subject, the
``kubernetes.io`` claims). The sidecar logs in with one, re-reads the file when it rotates,
and a token for another service account or namespace is refused by Vault itself."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.core.errors import BackendUnavailable, ConfigError
from broker.dev.devstack import DevServer
from broker.dev.stack import grant_for
from broker.scopes.loader import load_manifest
from broker.settings import VaultSettings, VaultTLS, vault_from_env
from broker.sidecar.main import Sidecar, SidecarConfig
from broker.sidecar.nodeagent import NodeAgent
from broker.vault.bootstrap import bootstrap
from broker.vault.layout import NODE_AGENT_ROLE
from broker.vault.session import VaultSession, make_client
from broker.vault.workload import WorkloadBinding, configure_workload_login, jwt_role_name
from tests.harness import SCOPES, root_client, unique_agent, write_manifest
from tests.ops.test_runbook_drills import security_operator

pytestmark = pytest.mark.integration
ISSUER = "https://kubernetes.default.svc.cluster.local"
REFUND = SCOPES / "support-refund-agent.yaml"
AGENT = "support-refund-agent"
BINDING = WorkloadBinding(AGENT, "agents", "refund-bot")


class Cluster:
    """The cluster's token issuer: a signing key, its JWKS served over loopback HTTP."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})
        body = self.jwks.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/openid/v1/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(
        self,
        namespace: str = "agents",
        account: str = "refund-bot",
        aud: str = "vault",
        ttl: int = 600,
        key: rsa.RSAPrivateKey | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": [aud],
            "sub": f"system:serviceaccount:{namespace}:{account}",
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
                "pod": {"name": f"{account}-0", "uid": str(uuid.uuid4())},
            },
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture(scope="module")
def cluster(openbao: DevServer) -> Iterator[Cluster]:
    """The issuer, and OpenBao configured to trust it with the refund agent's role bound."""
    issuer = Cluster()
    client = root_client(openbao)
    bootstrap(client, [grant_for(load_manifest(REFUND))], demo=True, addr=openbao.addr)
    configure_workload_login(client, [BINDING], mount="k8s-jwt", jwks_url=issuer.url, issuer=ISSUER)
    yield issuer
    issuer.server.shutdown()
    issuer.server.server_close()


def _settings(openbao: DevServer, token_file: Path) -> VaultSettings:
    env = {
        "VAULT_ADDR": openbao.addr,
        "BROKER_VAULT_AUTH": "jwt",
        "BROKER_VAULT_ROLE": jwt_role_name(AGENT),
        "BROKER_VAULT_JWT_FILE": str(token_file),
        "BROKER_VAULT_AUTH_MOUNT": "k8s-jwt",
    }
    return vault_from_env(env)


async def test_sidecar_logs_in_with_its_service_account_and_mints(
    openbao: DevServer, cluster: Cluster, tmp_path: Path
) -> None:
    """A sidecar configured for jwt login (no AppRole files at all) logs in and mints."""
    token_file = tmp_path / "vault-token"
    token_file.write_text(cluster.token())
    config = SidecarConfig(
        manifest_path=REFUND,
        vault=_settings(openbao, token_file),
        listen="127.0.0.1:0",
        audit_path=tmp_path / "audit.jsonl",
    )
    sidecar = Sidecar(config)
    url = await sidecar.start()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"action": "stripe.refund", "inputs": {"ticket_id": "CS-3", "amount_usd": 5}}
            async with http.post(f"{url}/v1/credentials", json=body) as resp:
                answer = await resp.json()
        assert resp.status == 200, answer
        assert answer["credential"]["kind"] == "vault_token"
        assert f"broker-sidecar-{AGENT}" in sidecar.runtime.session.policies
    finally:
        await sidecar.stop()


def test_login_rereads_a_rotated_token_file(
    openbao: DevServer, cluster: Cluster, tmp_path: Path
) -> None:
    """Each login reads the file afresh: a rotated-in foreign token is refused, the next
    rotation (a good token again) logs in with a new Vault token."""
    token_file = tmp_path / "vault-token"
    token_file.write_text(cluster.token())
    session = VaultSession(_settings(openbao, token_file))
    session.login()
    first = session.token
    token_file.write_text(cluster.token(account="someone-else"))
    with pytest.raises(BackendUnavailable):
        session.login()
    token_file.write_text(cluster.token())
    session.login()
    assert session.token != first
    assert session.client.auth.token.lookup_self()["data"]["meta"]["role"] == jwt_role_name(AGENT)


@pytest.mark.parametrize(
    ("why", "claims"),
    [
        ("another service account", {"account": "other-bot"}),
        ("another namespace", {"namespace": "other-team"}),
        ("another audience", {"aud": "kubernetes"}),
        ("expired", {"ttl": -120}),
        ("signed by another key", {"key": "other"}),
    ],
)
def test_vault_refuses_other_workloads(
    openbao: DevServer, cluster: Cluster, tmp_path: Path, why: str, claims: dict[str, Any]
) -> None:
    """Vault refuses a token of another service account, namespace, audience, an expired
    one, or one not signed by the cluster."""
    if claims.get("key") == "other":
        claims = {"key": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    token_file = tmp_path / "vault-token"
    token_file.write_text(cluster.token(**claims))
    session = VaultSession(_settings(openbao, token_file))
    with pytest.raises(BackendUnavailable):
        session.login()
    assert session.accessor == "", why


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BROKER_VAULT_AUTH": "jwt"}, "BROKER_VAULT_ROLE"),
        ({"BROKER_VAULT_AUTH": "oidc", "BROKER_VAULT_ROLE": "r"}, "approle, jwt or kubernetes"),
    ],
)
def test_workload_settings_refusals(env: dict[str, str], needle: str) -> None:
    """An unknown login method, or jwt without a role: refused at start, naming the variable."""
    with pytest.raises(ConfigError, match=needle):
        vault_from_env({"VAULT_ADDR": "http://127.0.0.1:8200", **env})


def test_kubernetes_defaults_to_the_service_account_token_path() -> None:
    """BROKER_VAULT_AUTH=kubernetes reads the pod's default token, at the kubernetes mount."""
    s = vault_from_env(
        {"VAULT_ADDR": "http://x:1", "BROKER_VAULT_AUTH": "kubernetes", "BROKER_VAULT_ROLE": "r"}
    )
    assert (s.auth, s.jwt_mount, str(s.jwt_file)) == (
        "kubernetes",
        "kubernetes",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    )


@pytest.mark.parametrize("text", ["agent", "agent=ns", "agent=/sa", "=ns/sa", "a=ns/sa/x"])
def test_binding_refusals(text: str) -> None:
    """--service-account must be AGENT=NAMESPACE/SERVICE_ACCOUNT."""
    with pytest.raises(ConfigError, match="AGENT=NAMESPACE/SERVICE_ACCOUNT"):
        WorkloadBinding.parse(text)


def test_bootstrap_cli_binds_the_service_account(openbao: DevServer, tmp_path: Path) -> None:
    """`broker bootstrap --service-account` creates the jwt role bound to that namespace/name
    with the sidecar's policy (``--node-agent-service-account``: the node agents' role with
    theirs); a second run changes nothing."""
    from cryptography.hazmat.primitives import serialization

    pem = tmp_path / "cluster.pem"
    pem.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    argv = [
        sys.executable, "-m", "broker.cli", "bootstrap", str(REFUND),
        "--service-account", f"{AGENT}=agents/refund-bot", "--jwt-public-key", str(pem),
        "--jwt-mount", "cli-jwt", "--jwt-issuer", ISSUER,
        "--node-agent-service-account", "broker-system/broker-node-agent",
    ]  # fmt: skip
    env = {**os.environ, "VAULT_ADDR": openbao.addr, "VAULT_TOKEN": openbao.root_token}
    first = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0, first.stderr
    assert "created  jwt role" in first.stdout
    role = root_client(openbao).read(f"auth/cli-jwt/role/{jwt_role_name(AGENT)}")["data"]
    assert role["bound_subject"] == "system:serviceaccount:agents:refund-bot"
    assert role["token_policies"] == [f"broker-sidecar-{AGENT}"]
    node = root_client(openbao).read(f"auth/cli-jwt/role/{NODE_AGENT_ROLE}")["data"]
    assert node["bound_subject"] == "system:serviceaccount:broker-system:broker-node-agent"
    assert node["token_policies"] == ["broker-node-agent"]
    again = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert "present  jwt role" in again.stdout, again.stdout + again.stderr


KILLABLE = """\
agent: {agent}
policy_version: kill-1
system_owner: platform@acme.example
risk_owner: security@acme.example
actions:
  tickets.read:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: tickets, ttl: 5m}}
"""


def test_kill_stops_the_service_account_login_and_revive_restores_it(
    openbao: DevServer, cluster: Cluster, tmp_path: Path
) -> None:
    """`broker kill` run by a security operator makes Vault itself refuse the agent's
    service-account login (the AppRole secret ids are not all a pod logs in with);
    `broker revive` lets the same token log in again, and the role's binding is unchanged."""
    agent = unique_agent("jwt-kill")
    manifest = write_manifest(tmp_path, KILLABLE.format(agent=agent))
    client = root_client(openbao)
    bootstrap(client, [grant_for(load_manifest(manifest))], addr=openbao.addr)
    binding = WorkloadBinding(agent, "agents", "kill-bot")
    configure_workload_login(
        client, [binding], mount="k8s-jwt", jwks_url=cluster.url, issuer=ISSUER
    )
    token_file = tmp_path / "vault-token"
    token_file.write_text(cluster.token(account="kill-bot"))
    settings = vault_from_env(
        {
            "VAULT_ADDR": openbao.addr,
            "BROKER_VAULT_AUTH": "jwt",
            "BROKER_VAULT_ROLE": jwt_role_name(agent),
            "BROKER_VAULT_JWT_FILE": str(token_file),
            "BROKER_VAULT_AUTH_MOUNT": "k8s-jwt",
        }
    )
    VaultSession(settings).login()  # logs in before the kill
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": security_operator(openbao),
    }

    def broker(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker.cli", *argv, "--audit-log", str(tmp_path / "op.jsonl")],
            capture_output=True, text=True, env=env, check=False, timeout=60,
        )  # fmt: skip

    killed = broker("kill", "--agent", agent, "--wait", "0")
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert "jwt logins with auth/k8s-jwt/role/" in killed.stdout, killed.stdout
    with pytest.raises(BackendUnavailable):
        VaultSession(settings).login()
    revived = broker(
        "revive", "--agent", agent, "--reason", "drill over",
        "--secret-id-file", str(tmp_path / "secret-id"),
    )  # fmt: skip
    assert revived.returncode == 0, revived.stdout + revived.stderr
    session = VaultSession(settings)
    session.login()
    assert session.client.auth.token.lookup_self()["data"]["meta"]["role"] == jwt_role_name(agent)
    role = client.read(f"auth/k8s-jwt/role/{jwt_role_name(agent)}")["data"]
    assert role["bound_subject"] == binding.subject
    assert role["bound_claims"] in ({}, None)


def test_an_operator_cannot_rebind_the_service_account_login(
    openbao: DevServer, cluster: Cluster
) -> None:
    """The operator's policy lets it touch only the bound claims of an agent's jwt role: Vault
    refuses it rebinding the role to another service account."""
    operator = make_client(openbao.addr, security_operator(openbao), tls=VaultTLS())
    with pytest.raises(hvac.exceptions.Forbidden):
        operator.write_data(
            f"auth/k8s-jwt/role/{jwt_role_name(AGENT)}",
            data={"role_type": "jwt", "bound_subject": "system:serviceaccount:evil:bot"},
        )


NODE_BINDING = "broker-system/broker-node-agent"


@pytest.mark.parametrize("text", ["broker-system", "/sa", "ns/", "ns/sa/x", "a=ns/sa"])
def test_node_agent_binding_refusals(text: str) -> None:
    """--node-agent-service-account must be NAMESPACE/SERVICE_ACCOUNT."""
    with pytest.raises(ConfigError, match="NAMESPACE/SERVICE_ACCOUNT"):
        WorkloadBinding.node_agent(text)


async def test_the_node_agent_logs_in_with_its_daemonsets_service_account(
    openbao: DevServer, cluster: Cluster, tmp_path: Path
) -> None:
    """The DaemonSet's projected token logs the node agent in at its own jwt role, whose token
    reads control/version and may not even look itself up; another account's token, e.g. an
    agent's, is refused for that role."""
    binding = WorkloadBinding.node_agent(NODE_BINDING)
    configure_workload_login(
        root_client(openbao), [binding], mount="k8s-jwt", jwks_url=cluster.url, issuer=ISSUER
    )
    token_file = tmp_path / "vault-token"
    token_file.write_text(cluster.token(namespace="broker-system", account="broker-node-agent"))
    env = {
        "VAULT_ADDR": openbao.addr,
        "BROKER_VAULT_AUTH": "jwt",
        "BROKER_VAULT_ROLE": NODE_AGENT_ROLE,
        "BROKER_VAULT_JWT_FILE": str(token_file),
        "BROKER_VAULT_AUTH_MOUNT": "k8s-jwt",
    }
    sock = Path(tempfile.mkdtemp(prefix="na-")) / "node.sock"
    agent = NodeAgent(vault_from_env(env), sock, interval=0.1)
    await agent.start()
    try:
        for _ in range(100):
            if agent.latest is not None:
                break
            await asyncio.sleep(0.05)
        confirmed, token = agent.latest, agent.session.token
    finally:
        await agent.stop()
        shutil.rmtree(sock.parent, ignore_errors=True)
    assert confirmed is not None, agent.problem
    with pytest.raises(hvac.exceptions.Forbidden):
        make_client(openbao.addr, token).auth.token.lookup_self()
    token_file.write_text(cluster.token())  # the refund agent's own service account
    with pytest.raises(BackendUnavailable):
        VaultSession(vault_from_env(env)).login()
