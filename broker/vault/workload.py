"""Workload identity: a sidecar logs in with its pod's projected service-account token.

Vault's ``jwt`` auth method checks the token's signature against the cluster's keys (a JWKS
URL, e.g. the API server's ``/openid/v1/jwks``, or PEM public keys), its issuer and audience;
the per-agent role binds the subject ``system:serviceaccount:<namespace>:<name>``, so a token
of another service account or namespace is refused by Vault itself. The role is named as the
AppRole one and carries the same sidecar policy and TTLs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hvac

from broker.core.errors import ConfigError
from broker.vault._errors import translate_errors
from broker.vault.bootstrap import (
    SIDECAR_TOKEN_MAX_TTL,
    SIDECAR_TOKEN_TTL,
    Bootstrap,
    Step,
    jwt_mounts,
)
from broker.vault.layout import (
    NODE_AGENT_POLICY,
    NODE_AGENT_ROLE,
    SECURITY_OPERATOR_POLICY,
    approle_role,
    sidecar_policy,
)
from broker.vault.policies import security_operator_hcl

DEFAULT_AUDIENCE = "vault"
# Kubernetes names: a namespace is a DNS label, a service account a DNS subdomain.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ACCOUNT = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _names(namespace: str, account: str) -> bool:
    return bool(_NAMESPACE.fullmatch(namespace) and _ACCOUNT.fullmatch(account))


@dataclass(frozen=True)
class WorkloadBinding:
    """One agent's sidecar runs as this Kubernetes service account in this namespace."""

    agent: str
    namespace: str
    service_account: str

    @classmethod
    def parse(cls, text: str) -> WorkloadBinding:
        """``AGENT=NAMESPACE/SERVICE_ACCOUNT``."""
        agent, _, rest = text.partition("=")
        namespace, _, account = rest.partition("/")
        if not agent or not _names(namespace, account):
            raise ConfigError(
                f"--service-account {text!r}: expected AGENT=NAMESPACE/SERVICE_ACCOUNT"
            )
        return cls(agent, namespace, account)

    @classmethod
    def node_agent(cls, text: str) -> WorkloadBinding:
        """``NAMESPACE/SERVICE_ACCOUNT`` of the node agents' DaemonSet (no agent: ``""``)."""
        namespace, _, account = text.partition("/")
        if not _names(namespace, account):
            raise ConfigError(
                f"--node-agent-service-account {text!r}: expected NAMESPACE/SERVICE_ACCOUNT"
            )
        return cls("", namespace, account)

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def jwt_role_name(agent: str) -> str:
    return approle_role(agent)


def configure_workload_login(
    client: hvac.Client,
    bindings: Sequence[WorkloadBinding],
    *,
    mount: str = "jwt",
    jwks_url: str | None = None,
    public_keys: Sequence[str] = (),
    issuer: str | None = None,
    audience: str = DEFAULT_AUDIENCE,
    addr: str = "",
) -> list[Step]:
    """Enable and configure the jwt auth method, then one role per binding."""
    if bool(jwks_url) == bool(public_keys):
        raise ConfigError("workload login needs exactly one of --jwks-url or --jwt-public-key")
    b = Bootstrap(client)
    with translate_errors("workload login bootstrap", addr):
        b.auth(mount, "jwt")
        keys = {"jwks_url": jwks_url} if jwks_url else {"jwt_validation_pubkeys": list(public_keys)}
        b.write_if_changed(
            f"auth/{mount}/config",
            {**keys, "bound_issuer": issuer or ""},
            f"jwt auth config at {mount}/ (issuer {issuer or 'any'})",
        )
        for binding in bindings:
            _role(b, mount, binding, audience)
        # The operator's kill switch must reach this mount's roles too.
        b.policy(SECURITY_OPERATOR_POLICY, security_operator_hcl(jwt_mounts(client)))
    return b.steps


def _role(b: Bootstrap, mount: str, binding: WorkloadBinding, audience: str) -> None:
    """An agent's sidecar role, or (no agent) the node agents' role: control/version only,
    without even the default policy, as its AppRole role."""
    policy: dict[str, Any]
    if binding.agent:
        name, policy = (
            jwt_role_name(binding.agent),
            {"token_policies": [sidecar_policy(binding.agent)]},
        )
    else:
        name = NODE_AGENT_ROLE
        policy = {"token_policies": [NODE_AGENT_POLICY], "token_no_default_policy": True}
    b.write_if_changed(
        f"auth/{mount}/role/{name}",
        {
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_subject": binding.subject,
            "bound_audiences": [audience],
            **policy,
            "token_ttl": SIDECAR_TOKEN_TTL,
            "token_max_ttl": SIDECAR_TOKEN_MAX_TTL,
        },
        f"jwt role {name} (bound to {binding.subject}, aud {audience})",
    )


# A claim no projected service-account token carries: while the role requires it, Vault
# refuses every login with the role (the kill switch); removing it is the revive.
KILL_CLAIM = "broker_killed"


def agent_jwt_roles(client: hvac.Client, agent: str, addr: str = "") -> list[str]:
    """The paths of the agent's roles on every jwt mount (``auth/<mount>/role/<role>``)."""
    with translate_errors("jwt role lookup", addr):
        paths = [f"auth/{m}/role/{jwt_role_name(agent)}" for m in jwt_mounts(client)]
        return [path for path in paths if _read_role(client, path) is not None]


def set_jwt_login(client: hvac.Client, path: str, *, stopped: bool, addr: str = "") -> bool:
    """Add (``stopped``) or remove the kill claim on one role; True when Vault then reads
    back the wanted state."""
    with translate_errors("jwt role update", addr):
        role = _read_role(client, path) or {}
        claims = {k: v for k, v in (role.get("bound_claims") or {}).items() if k != KILL_CLAIM}
        if stopped:
            claims[KILL_CLAIM] = "yes"
        client.write_data(path, data={"role_type": "jwt", "bound_claims": claims})
        after = (_read_role(client, path) or {}).get("bound_claims") or {}
    return (KILL_CLAIM in after) == stopped


def _read_role(client: hvac.Client, path: str) -> dict[str, Any] | None:
    try:
        found = client.read(path)
    except hvac.exceptions.InvalidPath:
        return None
    return None if found is None else dict(found["data"])
