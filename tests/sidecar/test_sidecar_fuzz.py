"""Whatever an agent sends, the sidecar answers with a stable 4xx or a decision, never a 500
and never a stack trace. Hypothesis generates the bodies; the sidecar is a real process."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.dev.devstack import DevServer
from tests.harness import REPO, SCOPES, process_env

pytestmark = pytest.mark.integration

MANIFEST = SCOPES / "support-refund-agent.yaml"


@pytest.fixture(scope="module")
def sidecar_port(openbao: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("fuzz")
    env = process_env(openbao, MANIFEST, tmp, demo=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "sidecar",
            "--manifest",
            str(MANIFEST),
            "--listen",
            f"127.0.0.1:{port}",
            "--audit",
            str(tmp / "audit.jsonl"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while _post(port, "/readyz", None, method="GET")[0] != 200:
            assert time.monotonic() < deadline, "sidecar not ready"
            time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _post(port: int, path: str, body: bytes | None, method: str = "POST") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


# The edges get their own weight: NaN and infinities, huge integers, control characters.
edges = st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400, "\x00", "\n{}"])
scalars = edges | st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
actions = st.sampled_from(
    ["zendesk.get_ticket", "stripe.refund", "deploy.production", ""]
) | st.text(max_size=30)
# Well-formed requests with hostile values reach the decision core: where bugs hide.
well_formed = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["zendesk.get_ticket", "stripe.refund", "deploy.production"]),
        "inputs": st.dictionaries(
            st.sampled_from(["ticket_id", "amount_usd", "currency", "x"]), scalars, max_size=4
        ),
    },
    optional={
        "workflow": st.from_regex(r"\A[a-z_]{1,12}\Z"),
        "request_id": st.from_regex(r"\Areq_[0-9a-f]{1,8}\Z"),
    },
)
bodies = st.fixed_dictionaries(
    {"action": actions | actions | json_values},
    optional={
        "inputs": st.dictionaries(
            st.sampled_from(["ticket_id", "amount_usd", "x"]) | st.text(max_size=8),
            json_values,
            max_size=4,
        )
        | json_values,
        "workflow": json_values,
        "request_id": json_values,
        "agent": json_values,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=well_formed | bodies)
def test_any_json_body_gets_a_decision_or_a_stable_4xx(
    sidecar_port: int, body: dict[str, object]
) -> None:
    """Generated request bodies never produce a 5xx (Vault is up) or a traceback."""
    raw = json.dumps(body, allow_nan=True).encode()
    status, answer = _post(sidecar_port, "/v1/credentials", raw)
    assert status in {200, 202, 400, 403, 413, 429}, (status, answer[:300])
    doc = json.loads(answer)
    assert ("error" in doc) == (status in {400, 413})
    assert b"Traceback" not in answer


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200))
def test_any_bytes_get_a_stable_4xx(sidecar_port: int, raw: bytes) -> None:
    """Arbitrary bytes as a body are a 400 with a code, not a crash."""
    status, answer = _post(sidecar_port, "/v1/credentials", raw)
    assert status in {200, 202, 400, 403, 429}, (status, answer[:300])
    assert b"Traceback" not in answer


other_paths = st.sampled_from(
    [
        "/v1/credentials/{id}/outcome",
        "/v1/approvals/{id}/redeem",
        "/v1/approvals/{id}/redeem?wait=x",
    ]
)
ids = st.sampled_from(["apr_" + "0" * 20, "x", "..", "%2e%2e", "a" * 300]) | st.text(
    alphabet="abcdef0123456789_", max_size=24
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=other_paths, ident=ids, body=json_values)
def test_outcome_and_redeem_bodies_get_stable_answers(
    sidecar_port: int, path: str, ident: str, body: object
) -> None:
    """Outcome reports and redeems with any id and any JSON body never produce a 5xx."""
    raw = json.dumps(body, allow_nan=True).encode()
    status, answer = _post(sidecar_port, path.format(id=ident or "none"), raw)
    assert 200 <= status < 500, (status, answer[:300])
    assert b"Traceback" not in answer
