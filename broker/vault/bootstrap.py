"""Idempotent bootstrap of everything the broker needs in Vault/OpenBao.

Each step checks what is there before writing, and reports ``created``, ``updated`` or
``present``; running it twice changes nothing the second time."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hvac

from broker.core.errors import BackendUnavailable, ConfigError
from broker.vault._errors import translate_errors
from broker.vault.layout import (
    APPROLE_MOUNT,
    APPROVER_POLICY,
    APPROVER_TOKEN_ROLE,
    APPROVER_TOKEN_TTL,
    CA_COMMON_NAME,
    ISSUER_POLICY,
    KV_MOUNT,
    NODE_AGENT_POLICY,
    NODE_AGENT_ROLE,
    PKI_MOUNT,
    PLATFORM_EDITOR_POLICY,
    SECURITY_OPERATOR_POLICY,
    SIGNING_CERT_TTL,
    STATUS_LIST_KEY,
    TRANSIT_MOUNT,
    VERIFIER_POLICY,
    action_token_role,
    approle_role,
    audit_key,
    pki_role,
    sidecar_policy,
)
from broker.vault.policies import (
    approver_hcl,
    demo_policy_hcl,
    issuer_hcl,
    node_agent_hcl,
    platform_editor_hcl,
    security_operator_hcl,
    sidecar_policy_hcl,
    verifier_hcl,
)

_PATH_UNSAFE = re.compile(r"[/*{}\s]")
SIDECAR_TOKEN_TTL = "1h"  # noqa: S105 - a duration, not a secret
SIDECAR_TOKEN_MAX_TTL = "24h"  # noqa: S105 - a duration, not a secret


@dataclass(frozen=True)
class TokenAction:
    """One ``vault_token`` action of a manifest: what its token role lets Vault grant."""

    action: str
    policies: frozenset[str]
    ttl: int
    uses: int


@dataclass(frozen=True)
class AgentGrant:
    """What bootstrap needs to know of one manifest."""

    agent: str
    token_policies: frozenset[str] = frozenset()
    dynamic_paths: frozenset[str] = frozenset()  # e.g. database/creds/orders-readonly
    token_actions: tuple[TokenAction, ...] = ()
    approvers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Step:
    thing: str
    state: str  # created | updated | present

    def __str__(self) -> str:
        return f"{self.state:>8}  {self.thing}"


@dataclass
class Bootstrap:
    client: hvac.Client
    steps: list[Step] = field(default_factory=list)

    def _note(self, thing: str, state: str) -> None:
        self.steps.append(Step(thing, state))

    def control_version(self) -> None:
        """Sidecars read ``control/version`` on every poll and refuse to mint while it is
        missing: a standby node answers 404 for every KV read, which must never read as
        "nothing revoked". So it exists from the start."""
        from broker.core.controlstate import VERSION_PATH
        from broker.vault.kv import kv_read_versioned, kv_write

        for attempt in range(100):  # a new KV v2 mount upgrades itself for a moment
            try:
                version = kv_read_versioned(self.client, VERSION_PATH)[1]
                break
            except BackendUnavailable:
                if attempt == 99:
                    raise
                time.sleep(0.1)
        if version == 0:
            kv_write(self.client, VERSION_PATH, {"at": 0})
            self._note(f"{KV_MOUNT}/{VERSION_PATH}", "created")
        else:
            self._note(f"{KV_MOUNT}/{VERSION_PATH}", "present")

    def mount(self, path: str, kind: str, options: dict[str, str] | None = None) -> None:
        mounts = self.client.sys.list_mounted_secrets_engines()["data"]
        if f"{path}/" in mounts:
            self._note(f"secrets engine {kind} at {path}/", "present")
            return
        self.client.sys.enable_secrets_engine(
            backend_type=kind, path=path, options=options, max_lease_ttl="87600h"
        )
        self._note(f"secrets engine {kind} at {path}/", "created")

    def auth(self, path: str, kind: str) -> None:
        methods = self.client.sys.list_auth_methods()["data"]
        if f"{path}/" in methods:
            self._note(f"auth method {kind} at {path}/", "present")
            return
        self.client.sys.enable_auth_method(method_type=kind, path=path)
        self._note(f"auth method {kind} at {path}/", "created")

    def login_lockout_off(self, path: str) -> None:
        """No login lockout on the AppRole mount. Secret ids are 128-bit random, so lockout
        stops no guessing; it only lets whoever holds a role id lock the real sidecar out
        (five bad logins), and it kept a revived agent's fresh secret id from logging in."""
        tune = self.client.read(f"sys/auth/{path}/tune") or {}
        if (tune.get("data") or tune).get("user_lockout_disable") is True:
            self._note(f"login lockout off on {path}/", "present")
            return
        self.client.write_data(
            f"sys/auth/{path}/tune", data={"user_lockout_config": {"lockout_disable": True}}
        )
        self._note(f"login lockout off on {path}/", "created")

    def policy(self, name: str, hcl: str) -> None:
        try:
            current = self.client.sys.read_policy(name)["data"]["rules"]
        except hvac.exceptions.InvalidPath:
            current = None
        if current == hcl:
            self._note(f"policy {name}", "present")
            return
        self.client.sys.create_or_update_policy(name=name, policy=hcl)
        self._note(f"policy {name}", "created" if current is None else "updated")

    def write_if_changed(self, path: str, wanted: dict[str, Any], label: str) -> None:
        """Write ``wanted`` at ``path`` unless every wanted field already reads back equal."""
        try:
            current = self.client.read(path)
        except hvac.exceptions.InvalidPath:
            current = None
        data = (current or {}).get("data") or {}
        if current and all(_same(data.get(k), v) for k, v in wanted.items()):
            self._note(label, "present")
            return
        self.client.write_data(path, data=wanted)
        self._note(label, "created" if not current else "updated")

    def pki_root(self) -> None:
        issuers = self.client.list(f"{PKI_MOUNT}/issuers")
        if issuers and issuers.get("data", {}).get("keys"):
            self._note(f"CA in {PKI_MOUNT}/", "present")
            return
        self.client.write_data(
            f"{PKI_MOUNT}/root/generate/internal",
            data={"common_name": CA_COMMON_NAME, "key_type": "ed25519", "ttl": "87600h"},
        )
        self._note(f"CA in {PKI_MOUNT}/ (ed25519)", "created")

    def transit_key(self, name: str, key_type: str = "ed25519") -> None:
        try:
            exists = self.client.read(f"{TRANSIT_MOUNT}/keys/{name}") is not None
        except hvac.exceptions.InvalidPath:
            exists = False
        if exists:
            self._note(f"transit key {name}", "present")
            return
        self.client.write_data(f"{TRANSIT_MOUNT}/keys/{name}", data={"type": key_type})
        self._note(f"transit key {name} ({key_type})", "created")


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, list | tuple | frozenset | set):
        return sorted(map(str, have or [])) == sorted(map(str, want))
    if isinstance(want, bool) or have is None:
        return bool(have) == want if isinstance(want, bool) else have == want
    return str(have) == str(want) or _duration_equal(have, want)


def _duration_equal(have: Any, want: Any) -> bool:
    units = {"s": 1, "m": 60, "h": 3600}
    if isinstance(want, str) and want[:-1].isdigit() and want[-1] in units:
        return str(have) == str(int(want[:-1]) * units[want[-1]])
    return False


def bootstrap(
    client: hvac.Client, grants: Sequence[AgentGrant], *, demo: bool = False, addr: str = ""
) -> list[Step]:
    """Create or confirm the mounts, CA, keys, policies and roles for ``grants``."""
    _check_approvers(grants)
    b = Bootstrap(client)
    with translate_errors("bootstrap", addr):
        b.mount(KV_MOUNT, "kv", {"version": "2"})
        b.mount(PKI_MOUNT, "pki")
        b.mount(TRANSIT_MOUNT, "transit")
        b.auth(APPROLE_MOUNT, "approle")
        b.login_lockout_off(APPROLE_MOUNT)
        b.pki_root()
        b.transit_key("audit-checkpoint")
        b.transit_key(STATUS_LIST_KEY, "ecdsa-p256")  # ES256: every gateway knows it
        b.policy(SECURITY_OPERATOR_POLICY, security_operator_hcl(jwt_mounts(client)))
        b.policy(PLATFORM_EDITOR_POLICY, platform_editor_hcl())
        b.policy(VERIFIER_POLICY, verifier_hcl())
        _approvers(b, {a for g in grants for a in g.approvers})
        b.policy(ISSUER_POLICY, issuer_hcl())
        _node_agent(b)
        for grant in grants:
            _agent(b, grant)
        if demo:
            _demo(b, client, _all_policies(grants))
        b.control_version()
    return b.steps


def jwt_mounts(client: hvac.Client) -> list[str]:
    """The jwt auth mounts (paths without the slash): the kill switch reaches their roles."""
    methods = client.sys.list_auth_methods()["data"]
    return [path.rstrip("/") for path, m in methods.items() if m.get("type") == "jwt"]


def _agent(b: Bootstrap, grant: AgentGrant) -> None:
    policy = sidecar_policy(grant.agent)
    b.transit_key(audit_key(grant.agent))
    roles = [action_token_role(grant.agent, t.action) for t in grant.token_actions]
    b.policy(policy, sidecar_policy_hcl(grant.agent, grant.dynamic_paths, roles))
    for alg, key_type, extra in (("EdDSA", "ed25519", {}), ("ES256", "ec", {"key_bits": 256})):
        role = pki_role(grant.agent, alg)
        b.write_if_changed(
            f"{PKI_MOUNT}/roles/{role}",
            {
                "key_type": key_type,
                **extra,
                "allowed_domains": [grant.agent],
                "allow_bare_domains": True,
                "allow_subdomains": False,
                "allow_localhost": False,
                "allow_ip_sans": False,
                "enforce_hostnames": False,
                # The name comes from the request, which the sidecar policy pins to the
                # agent's exact spelling; the CSR's own subject and SANs are ignored.
                "use_csr_common_name": False,
                "use_csr_sans": False,
                "max_ttl": SIGNING_CERT_TTL,
                "server_flag": False,
                "client_flag": False,
                "no_store": True,
            },
            f"PKI role {role} ({key_type}, CN {grant.agent} only, max {SIGNING_CERT_TTL})",
        )
    b.write_if_changed(
        f"auth/{APPROLE_MOUNT}/role/{approle_role(grant.agent)}",
        {
            "token_policies": [policy],
            "token_ttl": SIDECAR_TOKEN_TTL,
            "token_max_ttl": SIDECAR_TOKEN_MAX_TTL,
            "secret_id_num_uses": 0,
        },
        f"AppRole role {approle_role(grant.agent)}",
    )
    for token_action in grant.token_actions:
        _token_role(b, grant.agent, token_action)


def _node_agent(b: Bootstrap) -> None:
    """The node agent's policy and AppRole role (``broker node-agent``)."""
    b.policy(NODE_AGENT_POLICY, node_agent_hcl())
    b.write_if_changed(
        f"auth/{APPROLE_MOUNT}/role/{NODE_AGENT_ROLE}",
        {
            "token_policies": [NODE_AGENT_POLICY],
            "token_no_default_policy": True,  # not even a cubbyhole or a token lookup
            "token_ttl": SIDECAR_TOKEN_TTL,
            "token_max_ttl": SIDECAR_TOKEN_MAX_TTL,
            "secret_id_num_uses": 0,
        },
        f"AppRole role {NODE_AGENT_ROLE} (reads control/version only)",
    )


def _token_role(b: Bootstrap, agent: str, action: TokenAction) -> None:
    """The manifest's TTL, use count and policies as Vault's own caps: whatever the caller
    asks, Vault grants at most these (a service token, never a batch token, no default)."""
    role = action_token_role(agent, action.action)
    b.write_if_changed(
        f"auth/token/roles/{role}",
        {
            "allowed_policies": sorted(action.policies),
            "orphan": False,
            "renewable": False,
            "token_type": "service",
            "token_no_default_policy": True,
            "token_explicit_max_ttl": action.ttl,
            "token_num_uses": action.uses,
        },
        f"token role {role} ({action.ttl}s, {action.uses} uses, {', '.join(sorted(action.policies))})",
    )


def _check_approvers(grants: Iterable[AgentGrant]) -> None:
    """Before anything is written: each approver's name becomes a segment of a policy path,
    where '/' or '*' would widen what that identity may write."""
    for grant in grants:
        for name in sorted(grant.approvers):
            if _PATH_UNSAFE.search(name):
                raise ConfigError(
                    f"{grant.agent}: approver {name!r} cannot be a Vault identity "
                    "('/', '*', braces and spaces are not allowed in an approver's name)"
                )


def _approvers(b: Bootstrap, approvers: set[str]) -> None:
    """The approver policy and the token role through which an admin gives an approver its
    Vault identity (an entity alias named as in the manifests). The role's alias list only
    grows: bootstrapping one manifest must not take away another manifest's approvers."""
    accessor = b.client.sys.list_auth_methods()["data"]["token/"]["accessor"]
    b.policy(APPROVER_POLICY, approver_hcl(str(accessor)))
    path = f"auth/token/roles/{APPROVER_TOKEN_ROLE}"
    try:
        current = (b.client.read(path) or {}).get("data") or {}
    except hvac.exceptions.InvalidPath:
        current = {}
    names = sorted(approvers | set(current.get("allowed_entity_aliases") or ()))
    b.write_if_changed(
        path,
        {
            "allowed_policies": [APPROVER_POLICY],
            "allowed_entity_aliases": names,
            "orphan": True,
            "renewable": False,
            "token_type": "service",
            "token_explicit_max_ttl": APPROVER_TOKEN_TTL,
        },
        f"token role {APPROVER_TOKEN_ROLE} ({len(names)} approvers)",
    )


def _all_policies(grants: Iterable[AgentGrant]) -> set[str]:
    return {p for g in grants for p in g.token_policies}


def _demo(b: Bootstrap, client: hvac.Client, policies: set[str]) -> None:
    """Development stand-ins for app policies, each able to read one demo secret."""
    for name in sorted(policies):
        b.policy(name, demo_policy_hcl(name))
        client.secrets.kv.v2.create_or_update_secret(
            path=f"demo/{name}",
            secret={"note": f"readable with policy {name}"},
            mount_point="secret",
        )
