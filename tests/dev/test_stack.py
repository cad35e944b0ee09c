"""`broker up`, as a newcomer runs it: a real stack that mints through OpenBao, stops on
SIGTERM leaving no process behind, and says clearly what is wrong with bad input."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from broker.dev.devstack import DevServer
from tests.harness import REPO

pytestmark = pytest.mark.integration

BROKER = [sys.executable, "-m", "broker.cli"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (bao and postgres run in sessions of their own, so
    they are found through their parent, not their process group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_mints_through_openbao_and_sigterm_leaves_nothing_behind(tmp_path: Path) -> None:
    """The printed curl returns a credential minted through OpenBao; SIGTERM stops every process."""
    proc = subprocess.Popen(
        [*BROKER, "up", "--state-dir", str(tmp_path / "state")],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "broker up exited early:\n" + "".join(lines)
            lines.append(line)
            if "stops everything" in line:
                break
        output = "".join(lines)
        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        assert "export VAULT_ADDR=http://127.0.0.1:" in output
        assert "export VAULT_TOKEN=" in output
        family = _descendants(proc.pid)
        names = {Path(f"/proc/{p}/exe").resolve().name for p in family if _alive(p)}
        assert {"bao", "postgres"} <= names
        if shutil.which("curl"):
            answer = json.loads(
                subprocess.run(shlex.split(curl), capture_output=True, text=True, check=True).stdout
            )
            assert answer["outcome"] == "allow"
            assert answer["credential"]["kind"] == "jwt"
            _verify_at_issuer(output, answer["credential"]["token"])
            _runs_from_vault(output, curl)
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "stopped." in rest
    left = [p for p in family if _alive(p)]
    assert left == [], f"processes left behind: {left}"


def _runs_from_vault(output: str, curl: str) -> None:
    """The example manifests were published to the dev Vault and the sidecar enforces the
    published version (``--manifest vault:<agent>``), so ``scopes publish`` changes it."""
    assert "created  manifest vault:support-refund-agent" in output
    sock = re.search(r"--unix-socket (\S+)", curl)
    assert sock
    ready = subprocess.run(
        ["curl", "-s", "--unix-socket", sock[1], "http://sidecar/readyz"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    manifest = json.loads(ready.stdout)["manifest"]
    assert manifest["source"] == "vault:support-refund-agent"
    assert manifest["published_by"] == "broker up"


def _verify_at_issuer(output: str, token: str) -> None:
    """The printed issuer URL is the token's iss, and its JWKS verifies the token."""
    match = re.search(r"^Issuer: +(http://127\.0\.0\.1:\d+)", output, re.MULTILINE)
    assert match, output
    issuer = match[1]
    key = jwt.PyJWKClient(f"{issuer}/.well-known/jwks.json").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key, algorithms=["EdDSA", "ES256"], options={"verify_aud": False})
    assert claims["iss"] == issuer


def test_up_with_an_unreachable_vault_says_so_and_exits_non_zero() -> None:
    """`broker up --vault-addr http://127.0.0.1:1` names the address and fails."""
    env = _env() | {"VAULT_TOKEN": "anything"}
    done = subprocess.run(
        [*BROKER, "up", "--vault-addr", "http://127.0.0.1:1"],
        cwd=REPO,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "unreachable at http://127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("agent: [unclosed\n", "malformed YAML"),
        (
            "agent: x-agent\npolicy_version: v1\nsystem_owner: a@b.example\nrisk_owner: r@b.example\n"
            "actions:\n  a.b:\n    credential: {kind: jwt, audience: x, ttl: 60s}\n",
            "accountable",
        ),
    ],
    ids=["malformed YAML", "no accountable human"],
)
def test_up_names_a_bad_manifest_file(tmp_path: Path, content: str, expected: str) -> None:
    """A malformed or invalid scopes file is named in the error, before anything starts."""
    bad = tmp_path / "bad-agent.yaml"
    bad.write_text(content)
    done = subprocess.run(
        [*BROKER, "up", str(bad)],
        check=False,
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert str(bad) in done.stderr
    assert expected in done.stderr


def test_up_with_a_missing_scopes_path_names_it(tmp_path: Path) -> None:
    """A path that does not exist is named."""
    missing = tmp_path / "nope"
    done = subprocess.run(
        [*BROKER, "up", str(missing)],
        cwd=REPO,
        check=False,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert str(missing) in done.stderr


def test_bootstrap_twice_changes_nothing_the_second_time(openbao: DevServer) -> None:
    """`broker bootstrap` reports what it made; run again, everything is already present."""
    env = _env() | {"VAULT_ADDR": openbao.addr, "VAULT_TOKEN": openbao.root_token}
    runs = [
        subprocess.run(
            [*BROKER, "bootstrap", "scopes"],
            cwd=REPO,
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    second = runs[1].stdout.splitlines()
    assert second
    assert all(line.split()[0] == "present" for line in second), runs[1].stdout
    assert "policy broker-sidecar-support-refund-agent" in runs[1].stdout


def test_up_with_an_existing_vault_runs_sidecars_against_it(
    openbao: DevServer, tmp_path: Path
) -> None:
    """`broker up --vault-addr` starts no OpenBao of its own and its sidecar mints through the given one."""
    env = _env() | {"VAULT_TOKEN": openbao.root_token}
    proc = subprocess.Popen(
        [
            *BROKER,
            "up",
            "--vault-addr",
            openbao.addr,
            "--no-postgres",
            "--state-dir",
            str(tmp_path),
            str(REPO / "scopes" / "outreach-agent.yaml"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        while not any("stops everything" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        output = "".join(lines)
        family = _descendants(proc.pid)
        names = {Path(f"/proc/{p}/exe").resolve().name for p in family if _alive(p)}
        assert "bao" not in names
        assert f"Vault/OpenBao: {openbao.addr}" in output
        assert "export VAULT_TOKEN" not in output  # the operator has their own token already
        sock = tmp_path / "outreach-agent.sock"
        body = (
            '{"action": "email.send", "inputs": '
            '{"to": "ann@partner.example", "subject": "hi", "body": "hello"}}'
        )
        answer = subprocess.run(
            [
                "curl",
                "-s",
                "--unix-socket",
                str(sock),
                "http://sidecar/v1/credentials",
                "-H",
                "content-type: application/json",
                "-d",
                body,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert json.loads(answer.stdout)["outcome"] == "allow", answer.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_dev_server_root_token_is_not_in_its_argv(openbao: DevServer) -> None:
    """The dev server gets its root token from the environment: `ps` shows no token."""
    argv = Path(f"/proc/{openbao.pid}/cmdline").read_bytes().decode()
    assert openbao.root_token not in argv
    assert "-dev-root-token-id" not in argv


def _post_unix(sock: Path, body: str) -> dict[str, object]:
    """POST /v1/credentials over a unix socket (HTTP/1.0: the answer ends at close)."""
    import socket as socketlib

    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(
            (
                "POST /v1/credentials HTTP/1.0\r\nHost: sidecar\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    answer: dict[str, object] = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return answer


def test_up_with_replicas_runs_n_sidecars_sharing_one_budget(
    openbao: DevServer, tmp_path: Path
) -> None:
    """`broker up --replicas 2`: two sidecars for the agent, each with its own socket and
    trail, and a budget of 3 calls is 3 for both together, not 3 each."""
    manifest = tmp_path / "duo.yaml"
    agent = f"duo-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    manifest.write_text(
        f"agent: {agent}\npolicy_version: duo-1\nsystem_owner: p@acme.example\n"
        "risk_owner: r@acme.example\nbudgets:\n  calls: {limit: 3, per: 1d, unit: calls}\n"
        "actions:\n  read.thing:\n    accountable: o@acme.example\n"
        "    credential: {kind: jwt, audience: things, ttl: 60s}\n    cost: {calls: 1}\n"
    )
    env = _env() | {"VAULT_TOKEN": openbao.root_token}
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [*BROKER, "up", "--vault-addr", openbao.addr, "--no-postgres", "--replicas", "2",
         "--state-dir", str(state), str(manifest)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("stops everything" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        socks = [state / f"{agent}-r{i}.sock" for i in range(2)]
        assert all(f"unix:{s}" in "".join(lines) for s in socks)
        body = '{"action": "read.thing"}'
        outcomes = [_post_unix(socks[i % 2], body).get("outcome") for i in range(6)]
        assert outcomes.count("allow") == 3, outcomes
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    trails = [state / "audit" / f"{agent}-r{i}.jsonl" for i in range(2)]
    assert all(t.exists() for t in trails)


@pytest.mark.parametrize("bad", ["0", "17", "two"])
def test_up_refuses_a_replica_count_out_of_range(bad: str) -> None:
    """`broker up --replicas` takes 1-16 and names the flag otherwise, starting nothing."""
    run = subprocess.run(
        [*BROKER, "up", "--replicas", bad],
        check=False,
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "--replicas must be a whole number 1-16" in run.stderr
