"""TLS to Vault as Vault's tools configure it: against a real ``bao server -dev -dev-tls``,
with VAULT_CACERT (or BAO_CACERT) the sidecar and the operator commands work; without it
they fail saying which certificate and which variable, and the sidecar stays up, not ready."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from broker.core.errors import BackendUnavailable, ConfigError
from broker.dev.devstack import DevServer, start_dev_server
from broker.settings import VaultTLS, tls_from_env
from broker.vault.asyncapi import AsyncVault
from broker.vault.session import make_client
from tests.harness import REPO, SCOPES, running_sidecar

pytestmark = pytest.mark.integration
REFUND = SCOPES / "support-refund-agent.yaml"


@pytest.fixture(scope="module")
def tls_bao() -> Iterator[DevServer]:
    """An OpenBao dev server speaking TLS with a CA of its own (not in the system store)."""
    server = start_dev_server(tls=True)
    try:
        yield server
    finally:
        server.stop()


def _broker(bao: DevServer, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    clean |= {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, **env}
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *argv],
        capture_output=True, text=True, env=clean, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("variable", ["VAULT_CACERT", "BAO_CACERT"])
def test_operator_commands_work_with_the_ca(tls_bao: DevServer, variable: str) -> None:
    """bootstrap, scopes publish and scopes published speak TLS with the CA from either name."""
    assert tls_bao.ca_cert is not None
    ca = {variable: str(tls_bao.ca_cert)}
    for argv in (
        ("bootstrap", "--demo-policies", str(REFUND)),
        ("scopes", "publish", str(REFUND)),
        ("scopes", "published", "support-refund-agent"),
    ):
        done = _broker(tls_bao, *argv, **ca)
        assert done.returncode == 0, (argv, done.stderr)


@pytest.mark.parametrize(
    "argv",
    [
        ("bootstrap", str(REFUND)),
        ("scopes", "published", "support-refund-agent"),
        ("revoke", "--agent", "support-refund-agent"),
    ],
)
def test_operator_commands_without_the_ca_name_the_problem(
    tls_bao: DevServer, argv: tuple[str, ...]
) -> None:
    """Without the CA: a non-zero exit naming the certificate problem and VAULT_CACERT."""
    done = _broker(tls_bao, *argv)
    assert done.returncode != 0
    assert "certificate" in done.stderr, done.stderr
    assert "VAULT_CACERT" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


async def test_sidecar_mints_over_tls_with_the_ca(
    tls_bao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With VAULT_CACERT the sidecar logs in, loads and mints through hvac and aiohttp."""
    monkeypatch.setenv("VAULT_CACERT", str(tls_bao.ca_cert))
    async with running_sidecar(tls_bao, REFUND, tmp_path) as h:
        status, body, _ = await h.ask("stripe.refund", {"ticket_id": "CS-1", "amount_usd": 5})
        assert status == 200, body
        ready, _, _ = await h.raw("GET", "/readyz")
        assert ready == 200


async def test_sidecar_without_the_ca_stays_up_not_ready(
    tls_bao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sidecar that cannot verify Vault listens anyway: /healthz 200, /readyz 503 naming
    the certificate problem and VAULT_CACERT, mints refused as backend_unavailable."""
    monkeypatch.setenv("VAULT_CACERT", str(tls_bao.ca_cert))  # the harness bootstraps with it
    async with running_sidecar(tls_bao, REFUND, tmp_path, vault_tls=VaultTLS()) as h:
        assert (await h.raw("GET", "/healthz"))[0] == 200
        status, body, _ = await h.raw("GET", "/readyz")
        assert status == 503
        assert "certificate" in body["problems"]["vault"]
        assert "VAULT_CACERT" in body["problems"]["vault"]
        status, body, _ = await h.ask("stripe.refund", {"ticket_id": "CS-1", "amount_usd": 5})
        assert status == 503, body
        assert "backend_unavailable" in str(body), body


async def test_async_client_trusts_the_ca_and_names_the_problem_without(
    tls_bao: DevServer,
) -> None:
    """The aiohttp path: with the CA it reads; without it the error names the cure."""
    good = AsyncVault(
        tls_bao.addr, lambda: tls_bao.root_token, tls=VaultTLS(cacert=tls_bao.ca_cert)
    )
    bad = AsyncVault(tls_bao.addr, lambda: tls_bao.root_token, tls=VaultTLS())
    try:
        assert (await good.get("sys/mounts", "mounts"))["secret/"]["type"] == "kv"
        with pytest.raises(BackendUnavailable, match=r"certificate.*VAULT_CACERT"):
            await bad.get("sys/mounts", "mounts")
    finally:
        await good.close()
        await bad.close()


def test_skip_verify_works_on_loopback_only(tls_bao: DevServer) -> None:
    """VAULT_SKIP_VERIFY against a loopback dev server connects (warned); elsewhere refused."""
    tls = tls_from_env({"VAULT_SKIP_VERIFY": "true"}, tls_bao.addr)
    client = make_client(tls_bao.addr, tls_bao.root_token, tls=tls)
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
        assert client.sys.read_health_status(method="GET")["initialized"]
    with pytest.raises(ConfigError, match="VAULT_SKIP_VERIFY"):
        tls_from_env({"VAULT_SKIP_VERIFY": "1"}, "https://vault.example:8200")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"VAULT_CACERT": "/nonexistent/ca.pem"}, "VAULT_CACERT"),
        ({"BAO_CAPATH": "/nonexistent/dir"}, "VAULT_CAPATH"),
        ({"VAULT_CLIENT_CERT": "/etc/hostname"}, "go together"),
        ({"BAO_SKIP_VERIFY": "true"}, "VAULT_SKIP_VERIFY"),
    ],
)
def test_tls_settings_refusals(env: dict[str, str], needle: str) -> None:
    """A missing CA file or dir, half a client pair, or skip-verify off loopback: refused."""
    with pytest.raises(ConfigError, match=needle):
        tls_from_env(env, "https://vault.internal:8200")


def test_tls_settings_read_like_vaults_cli(tmp_path: Path) -> None:
    """VAULT_* wins over BAO_*; the namespace loses its slashes."""
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_text("a")
    b.write_text("b")
    env = {"VAULT_CACERT": str(a), "BAO_CACERT": str(b), "BAO_NAMESPACE": "/team-a/"}
    assert tls_from_env(env, "https://v:8200") == VaultTLS(cacert=a, namespace="team-a")


async def test_namespace_reaches_hvac_and_the_async_client(
    openbao: DevServer, tmp_path: Path
) -> None:
    """VAULT_NAMESPACE: both clients address the namespace, not the root (OpenBao namespaces)."""
    root = make_client(openbao.addr, openbao.root_token, tls=VaultTLS())
    ns = f"team-{tmp_path.name[-6:].replace('_', '-')}"
    root.adapter.post(f"/v1/sys/namespaces/{ns}")
    scoped = VaultTLS(namespace=ns)
    inside = make_client(openbao.addr, openbao.root_token, tls=scoped)
    inside.sys.enable_secrets_engine("kv", path="nskv", options={"version": "2"})
    inside.secrets.kv.v2.create_or_update_secret("probe", {"where": ns}, mount_point="nskv")
    assert "nskv/" not in root.sys.list_mounted_secrets_engines()["data"]
    reader = AsyncVault(openbao.addr, lambda: openbao.root_token, tls=scoped)
    try:
        found = await reader.get("nskv/data/probe", "namespace read")
    finally:
        await reader.close()
    assert found["data"]["data"] == {"where": ns}


def _up(bao: DevServer, state: Path, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    argv = [
        sys.executable, "-m", "broker.cli", "up", "--vault-addr", bao.addr, "--no-postgres",
        "--state-dir", str(state), str(SCOPES / "outreach-agent.yaml"),
    ]  # fmt: skip
    return subprocess.Popen(
        argv, cwd=REPO, env=clean | {"VAULT_TOKEN": bao.root_token, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_up_against_a_tls_vault_with_the_ca_mints(tls_bao: DevServer, tmp_path: Path) -> None:
    """`broker up --vault-addr https://...` with VAULT_CACERT: bootstraps, and its sidecar mints."""
    proc = _up(tls_bao, tmp_path, VAULT_CACERT=str(tls_bao.ca_cert))
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("stops everything" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        body = '{"action": "email.send", "inputs": {"to": "ann@partner.example", "subject": "hi", "body": "hello"}}'
        answer = subprocess.run(
            ["curl", "-s", "--unix-socket", str(tmp_path / "outreach-agent.sock"),
             "http://sidecar/v1/credentials", "-H", "content-type: application/json", "-d", body],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        assert '"outcome":"allow"' in answer.stdout.replace(" ", ""), answer.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_up_against_a_tls_vault_without_the_ca_names_the_problem(
    tls_bao: DevServer, tmp_path: Path
) -> None:
    """Without the CA, `broker up --vault-addr` exits non-zero naming the certificate and
    the variable to set, with no traceback."""
    proc = _up(tls_bao, tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "certificate" in out, out
    assert "VAULT_CACERT" in out, out
    assert "Traceback" not in out
