"""The ``dynamic`` credential kind: PostgreSQL logins minted by Vault's database secrets engine.

Invariants the statements below keep:

- A login carries ``VALID UNTIL`` the lease's expiry (Vault adds a few seconds), so PostgreSQL
  itself refuses the password once the lease ends, even if Vault's revocation never runs.
- Revocation stops a credential in use, not only future logins: it ends the role's live
  sessions, then drops what the role holds and the role itself. That needs a Vault
  connection user who may signal backends (a superuser, or a member of ``pg_signal_backend``).
- ``configure_database`` is idempotent and never rewrites an unchanged connection: after
  ``rotate_root`` only Vault knows the root password, and writing the old one back would break it.

The caller owns the hvac client and its authentication.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from broker.core.errors import BrokerError, ConfigError, NotFound
from broker.vault._errors import translate_errors
from broker.vault.calls import Call, Steps, drive, expect

if TYPE_CHECKING:
    import hvac

PLUGIN = "postgresql-database-plugin"

Outcome = Literal["created", "present", "updated"]

# Vault runs these in one transaction. Ending the sessions is not transactional and is needed:
# PostgreSQL lets a dropped role's open sessions live on.
_REVOCATION = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    # Revokes every grant the role holds in this database; DROP ROLE fails while any remain.
    'DROP OWNED BY "{{name}}";',
    'DROP ROLE IF EXISTS "{{name}}";',
)


@dataclass(frozen=True)
class DatabaseRole:
    """What a dynamic login may do, as GRANT clauses (``"SELECT ON TABLE public.orders"``)."""

    grants: tuple[str, ...]
    default_ttl: int
    max_ttl: int

    def __post_init__(self) -> None:
        if not 0 < self.default_ttl <= self.max_ttl:
            raise ConfigError(
                f"role TTLs must satisfy 0 < default_ttl <= max_ttl, "
                f"got {self.default_ttl} and {self.max_ttl}"
            )
        for grant in self.grants:
            # Vault splits statements on ";", so one would smuggle in a statement of its own.
            if not grant.strip() or ";" in grant:
                raise ConfigError(f"a grant must be one non-empty clause without ';': {grant!r}")

    def creation_statements(self) -> list[str]:
        create = (
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
            "VALID UNTIL '{{expiration}}';"
        )
        return [create, *(f'GRANT {grant} TO "{{{{name}}}}";' for grant in self.grants)]

    def revocation_statements(self) -> list[str]:
        return list(_REVOCATION)


@dataclass(frozen=True)
class DynamicCredential:
    """A PostgreSQL login and the Vault lease that ends it. The password is never shown."""

    username: str
    password: str = field(repr=False)
    lease_id: str
    lease_duration: int
    renewable: bool


def configure_database(
    client: hvac.Client,
    *,
    mount: str = "database",
    connection_name: str,
    host: str,
    port: int,
    username: str,
    password: str,
    dbname: str = "postgres",
    sslmode: str = "prefer",
    roles: Mapping[str, DatabaseRole],
) -> list[tuple[str, Outcome]]:
    """Enable the engine, write the connection and the roles; report what each step did.

    ``roles`` is the connection's whole set: it becomes ``allowed_roles``. ``password`` is only
    sent when the connection is created or its settings change (so after ``rotate_root``, a
    settings change needs a root password that works again; Vault verifies it before saving).
    """
    done = [(f"secrets engine {mount}/", _ensure_mount(client, mount))]
    url = (
        f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{port}/"
        f"{quote(dbname, safe='')}?sslmode={quote(sslmode, safe='')}"
    )
    connection = {"connection_url": url, "username": username}
    allowed = sorted(roles)
    outcome = _ensure_connection(
        client,
        mount,
        connection_name,
        connection=connection,
        allowed_roles=allowed,
        password=password,
    )
    done.append((f"connection {mount}/config/{connection_name}", outcome))
    for name, role in sorted(roles.items()):
        done.append(
            (f"role {mount}/roles/{name}", _ensure_role(client, mount, connection_name, name, role))
        )
    return done


def issue_credential(
    client: hvac.Client, *, mount: str = "database", role: str, ttl_seconds: int | None = None
) -> DynamicCredential:
    """Mint a login for ``role``.

    The creds endpoint takes no TTL: the role's ``default_ttl`` applies. A shorter ``ttl_seconds``
    is honoured by renewing the fresh lease with that increment, which shortens both the lease
    and the login's VALID UNTIL. A longer one is not: the role's TTL is the ceiling, and the
    returned ``lease_duration`` says what was granted.
    """
    return drive(client, issue_credential_steps(mount, role, ttl_seconds))


def issue_credential_steps(
    mount: str, role: str, ttl_seconds: int | None
) -> Steps[DynamicCredential]:
    operation = f"issue database credential for role {role!r}"
    response = yield from expect(Call("GET", f"{mount}/creds/{role}", operation))
    credential = DynamicCredential(
        username=response["data"]["username"],
        password=response["data"]["password"],
        lease_id=response["lease_id"],
        lease_duration=int(response["lease_duration"]),
        renewable=bool(response["renewable"]),
    )
    if ttl_seconds is None or ttl_seconds >= credential.lease_duration:
        return credential
    return (yield from _shorten(credential, ttl_seconds))


def revoke_lease(client: hvac.Client, lease_id: str) -> None:
    """Revoke one lease now; Vault waits for the revocation statements to finish."""
    drive(client, _revoke_lease(lease_id))


def _revoke_lease(lease_id: str) -> Steps[None]:
    yield from expect(Call("PUT", "sys/leases/revoke", "revoke a lease", {"lease_id": lease_id}))


def revoke_prefix(client: hvac.Client, prefix: str) -> None:
    """Revoke every lease under ``prefix`` (``database/creds/<role>/``). Needs ``sudo``."""
    if not prefix.strip("/"):
        raise ConfigError("refusing to revoke an empty lease prefix (that would be every lease)")
    with _vault(client, f"revoke leases under {prefix}"):
        client.sys.revoke_prefix(prefix=prefix)


def rotate_root(client: hvac.Client, *, mount: str = "database", connection_name: str) -> None:
    """Have Vault replace the connection's root password with one that only Vault knows."""
    with _vault(client, f"rotate the root credential of {mount}/config/{connection_name}"):
        client.secrets.database.rotate_root_credentials(name=connection_name, mount_point=mount)


def _shorten(credential: DynamicCredential, ttl: int) -> Steps[DynamicCredential]:
    body = {"lease_id": credential.lease_id, "increment": ttl}
    try:
        renewed = yield from expect(
            Call("PUT", "sys/leases/renew", "shorten a database lease", body)
        )
    except BrokerError:
        # Fail closed: a login that outlives what was asked for must not leave the broker.
        # Through the path form, the one a sidecar's policy allows (the body form is refused
        # to it, and that refusal used to replace this error and leave the lease live).
        with contextlib.suppress(BrokerError):
            yield from revoke_own_lease_steps(credential.lease_id)
        raise
    return DynamicCredential(
        username=credential.username,
        password=credential.password,
        lease_id=credential.lease_id,
        lease_duration=int(renewed["lease_duration"]),
        renewable=bool(renewed["renewable"]),
    )


def _ensure_mount(client: hvac.Client, mount: str) -> Outcome:
    with _vault(client, "list secrets engines"):
        listed = client.sys.list_mounted_secrets_engines()
    existing = listed.get("data", listed).get(f"{mount}/")
    if existing is not None:
        if existing.get("type") != "database":
            raise ConfigError(f"{mount}/ is a {existing.get('type')} engine, not database")
        return "present"
    with _vault(client, f"enable the database engine at {mount}/"):
        client.sys.enable_secrets_engine(backend_type="database", path=mount)
    return "created"


def _ensure_connection(
    client: hvac.Client,
    mount: str,
    name: str,
    *,
    connection: dict[str, str],
    allowed_roles: list[str],
    password: str,
) -> Outcome:
    current = _read_or_none(
        client,
        f"read {mount}/config/{name}",
        lambda: client.secrets.database.read_connection(name, mount),
    )
    if current is not None:
        details = current.get("connection_details", {})
        same = (
            current.get("plugin_name") == PLUGIN
            and all(details.get(key) == value for key, value in connection.items())
            and sorted(current.get("allowed_roles") or []) == allowed_roles
        )
        if same:
            return "present"
    with _vault(client, f"write {mount}/config/{name}"):
        client.secrets.database.configure(
            name=name,
            plugin_name=PLUGIN,
            allowed_roles=allowed_roles,
            mount_point=mount,
            password=password,
            **connection,
        )
    return "created" if current is None else "updated"


def _ensure_role(
    client: hvac.Client, mount: str, db_name: str, name: str, role: DatabaseRole
) -> Outcome:
    wanted: dict[str, Any] = {
        "db_name": db_name,
        "creation_statements": role.creation_statements(),
        "revocation_statements": role.revocation_statements(),
        "default_ttl": role.default_ttl,
        "max_ttl": role.max_ttl,
    }
    current = _read_or_none(
        client, f"read {mount}/roles/{name}", lambda: client.secrets.database.read_role(name, mount)
    )
    if current is not None and all(current.get(key) == value for key, value in wanted.items()):
        return "present"
    with _vault(client, f"write {mount}/roles/{name}"):
        client.secrets.database.create_role(name=name, mount_point=mount, **wanted)
    return "created" if current is None else "updated"


def _read_or_none(
    client: hvac.Client, operation: str, read: Callable[[], Any]
) -> dict[str, Any] | None:
    try:
        with _vault(client, operation):
            response = read()
    except NotFound:
        return None
    data: dict[str, Any] = response["data"]
    return data


@contextmanager
def _vault(client: hvac.Client, operation: str) -> Iterator[None]:
    with translate_errors(operation, str(client.url)):
        yield


def revoke_own_lease(client: hvac.Client, lease_id: str) -> None:
    """Revoke one lease through the path form, which a sidecar's policy allows only under
    its own dynamic roles (the body form would need the right to revoke any lease)."""
    drive(client, revoke_own_lease_steps(lease_id))


def revoke_own_lease_steps(lease_id: str) -> Steps[None]:
    yield from expect(Call("PUT", f"sys/leases/revoke/{lease_id}", "revoke a lease"))
